"""The bundle contract, written once: input and output names and meanings, and the next-frame rule.

A leaf module: it imports nothing of e3traj's, so the manifest, the session, the checker, training and export all
read the same definitions. The rule works on numpy arrays and torch tensors alike (operators only).
"""

from __future__ import annotations

__all__ = [
    "N_BEADS",
    "DEFAULT_N_BEADS",
    "MIN_BEADS",
    "MAX_BEADS",
    "POSITIONS",
    "PREVIOUS_DISPLACEMENT",
    "PREVIOUS_DISPLACEMENTS",
    "INPUT_MEANINGS",
    "DISPLACEMENT",
    "NEXT_POSITIONS",
    "VELOCITY_CORRECTION",
    "AR_CORRECTION",
    "OUTPUT_MEANINGS",
    "PERMUTATIONS",
    "NOISE_RULES",
    "OUTPUT_NAME",
    "needs_previous",
    "history_length",
    "as_past",
    "past_displacements",
    "ar_extrapolate",
    "next_frame",
]

#: Beads per frame N: fixed per bundle at training time (the graph is the complete graph of N nodes), any N from
#: ``MIN_BEADS`` (a bond angle needs 3) to ``MAX_BEADS`` (a cap on what an untrusted manifest may ask for: the
#: graph's work grows as N(N - 1)); the chapter's chain and the default is 12. ``N_BEADS`` is the default's old
#: name.
DEFAULT_N_BEADS = 12
N_BEADS = DEFAULT_N_BEADS
MIN_BEADS = 3
MAX_BEADS = 1024

#: Input meanings: the frame's positions; x_t - x_{t-1} (velocity-aware models), shape ``(B, N, 3)``; and the
#: H previous displacements (history models), shape ``(B, H, N, 3)`` with ``[:, j - 1] = x_{t-j+1} - x_{t-j}``
#: (the most recent first).
POSITIONS = "positions"
PREVIOUS_DISPLACEMENT = "previous_displacement"
PREVIOUS_DISPLACEMENTS = "previous_displacements"
INPUT_MEANINGS = (POSITIONS, PREVIOUS_DISPLACEMENT, PREVIOUS_DISPLACEMENTS)

#: Output meanings, i.e. how the next frame follows from the output (see :func:`next_frame`).
DISPLACEMENT = "displacement"
NEXT_POSITIONS = "next_positions"
VELOCITY_CORRECTION = "velocity_correction"
AR_CORRECTION = "ar_correction"
OUTPUT_MEANINGS = (DISPLACEMENT, NEXT_POSITIONS, VELOCITY_CORRECTION, AR_CORRECTION)

#: What relabellings of the beads a model promises to commute with: ``any`` (a complete graph that ignores the
#: chain), ``chain_reversal`` (a model that knows the bonds: only bead i -> N - 1 - i carries the chain along).
PERMUTATIONS = ("any", "chain_reversal")

#: How a bundle's ``model.noise_scale`` was fitted: ``residual`` (the RMS one-step training residual) or
#: ``thermostat`` (the noise whose steady state under the model's damping has the training frames' motion,
#: :func:`e3traj.runtime.thermostat_scale`).
NOISE_RULES = ("residual", "thermostat")

#: The output's name in every exported graph.
OUTPUT_NAME = "prediction"


def needs_previous(output_meaning: str, input_meanings=(), coefficients=()) -> bool:
    """True when the next frame (or an input) needs a frame before the current one."""
    return history_length(output_meaning, input_meanings, coefficients) > 0


def history_length(output_meaning: str, input_meanings=(), coefficients=(), displacements: int = 0) -> int:
    """How many frames before the current one a step needs.

    ``coefficients``: the AR coefficients of an ``ar_correction`` output (one per previous displacement);
    ``displacements``: H of a ``previous_displacements`` input.
    """
    h = 0
    if output_meaning == VELOCITY_CORRECTION or PREVIOUS_DISPLACEMENT in tuple(input_meanings):
        h = 1
    if output_meaning == AR_CORRECTION:
        h = max(h, len(tuple(coefficients)))
    if PREVIOUS_DISPLACEMENTS in tuple(input_meanings):
        h = max(h, int(displacements))
    return h


def as_past(previous, history: int, batch_shape):
    """The frames before the current one as ``(B, history, N, 3)``, chronological (the last is x_{t-1}).

    ``previous`` may be ``(B, N, 3)`` when ``history == 1`` (the frame before), or ``(B, H, N, 3)`` with
    ``H >= history`` (the last ``history`` are used). Works on numpy arrays and torch tensors.
    Raises ValueError naming the shapes.
    """
    if history == 0:
        return None
    if previous is None:
        raise ValueError(f"this model needs the {history} frame(s) before the current one; got none")
    shape = tuple(previous.shape)
    if history == 1 and shape == tuple(batch_shape):
        return previous[:, None]
    if len(shape) != 4 or shape[0] != batch_shape[0] or shape[2:] != tuple(batch_shape[1:]) or shape[1] < history:
        rest = ", ".join(str(d) for d in batch_shape[1:])
        raise ValueError(
            f"previous: shape {shape}; expected ({batch_shape[0]}, {history}, {rest}), the {history} frame(s) "
            f"before, oldest first (or ({batch_shape[0]}, H >= {history}, {rest}): the last {history} are used)"
            + (f", or ({batch_shape[0]}, {rest})" if history == 1 else "")
        )
    return previous[:, shape[1] - history :]


def past_displacements(x, past, h: int):
    """``d_j = x_{t-j+1} - x_{t-j}`` for j = 1..h, the most recent first.

    Shapes: ``x`` ``(B, N, 3)``, ``past`` ``(B, >= h, N, 3)`` chronological -> list of h ``(B, N, 3)``.
    """
    frames = [x] + [past[:, past.shape[1] - j] for j in range(1, h + 1)]  # x_t, x_{t-1}, ..., x_{t-h}
    return [frames[j - 1] - frames[j] for j in range(1, h + 1)]


def ar_extrapolate(x, past, coefficients):
    """The linear extrapolation ``x_t + sum_j b_j d_j`` (= ``sum_i c_i x_{t-i}`` with ``sum c_i = 1``).

    One coefficient per previous displacement, shared by all beads and coordinates: exactly E(3)- and
    permutation-equivariant. Shapes: ``x`` ``(B, N, 3)``, ``past`` ``(B, >= len(b), N, 3)`` -> ``(B, N, 3)``.
    """
    out = x
    for b, d in zip(coefficients, past_displacements(x, past, len(coefficients))):
        out = out + float(b) * d
    return out


def next_frame(meaning: str, x, prediction, previous=None, coefficients=()):
    """The next frame from the model's output.

    ``displacement``: ``x + y``; ``next_positions``: ``y``; ``velocity_correction``: ``x + (x - previous) + y``
    (constant velocity plus the correction; with ``y = 0`` it is constant-velocity extrapolation);
    ``ar_correction``: :func:`ar_extrapolate` ``+ y`` (``previous``: the past frames, chronological).

    Shapes: ``x``, ``prediction`` ``(B, N, 3)`` (numpy or torch) -> ``(B, N, 3)``; ``previous`` ``(B, N, 3)``
    (the frame before) or ``(B, H, N, 3)`` (the past frames, oldest first; ``ar_correction`` needs these).
    """
    if meaning == AR_CORRECTION:
        if previous is None or len(tuple(coefficients)) == 0:
            raise ValueError("next_frame: 'ar_correction' needs the past frames and the AR coefficients")
        return ar_extrapolate(x, previous, coefficients) + prediction
    if meaning == DISPLACEMENT:
        return x + prediction
    if meaning == NEXT_POSITIONS:
        return prediction
    if meaning == VELOCITY_CORRECTION:
        if previous is None:
            raise ValueError("next_frame: 'velocity_correction' needs the previous frame, got None")
        if previous.ndim == 4:  # the past frames (B, H, N, 3): the last is the frame before
            previous = previous[:, -1]
        return x + (x - previous) + prediction
    raise ValueError(f"next_frame: meaning must be one of {OUTPUT_MEANINGS}, got {meaning!r}")
