"""The bundle contract, written once: input and output names and meanings, and the next-frame rule.

A leaf module: it imports nothing of e3traj's, so the manifest, the session, the checker, training and export all
read the same definitions. The rule works on numpy arrays and torch tensors alike (operators only).
"""

from __future__ import annotations

__all__ = [
    "N_BEADS",
    "POSITIONS",
    "PREVIOUS_DISPLACEMENT",
    "INPUT_MEANINGS",
    "DISPLACEMENT",
    "NEXT_POSITIONS",
    "VELOCITY_CORRECTION",
    "OUTPUT_MEANINGS",
    "OUTPUT_NAME",
    "needs_previous",
    "next_frame",
]

#: Beads per frame; every model and bundle is built for exactly this graph.
N_BEADS = 12

#: Input meanings: the frame's positions, and x_t - x_{t-1} (velocity-aware models).
POSITIONS = "positions"
PREVIOUS_DISPLACEMENT = "previous_displacement"
INPUT_MEANINGS = (POSITIONS, PREVIOUS_DISPLACEMENT)

#: Output meanings, i.e. how the next frame follows from the output (see :func:`next_frame`).
DISPLACEMENT = "displacement"
NEXT_POSITIONS = "next_positions"
VELOCITY_CORRECTION = "velocity_correction"
OUTPUT_MEANINGS = (DISPLACEMENT, NEXT_POSITIONS, VELOCITY_CORRECTION)

#: The output's name in every exported graph.
OUTPUT_NAME = "prediction"


def needs_previous(output_meaning: str, input_meanings=()) -> bool:
    """True when the next frame (or an input) needs the frame before the current one."""
    return output_meaning == VELOCITY_CORRECTION or PREVIOUS_DISPLACEMENT in tuple(input_meanings)


def next_frame(meaning: str, x, prediction, previous=None):
    """The next frame from the model's output.

    ``displacement``: ``x + y``; ``next_positions``: ``y``; ``velocity_correction``: ``x + (x - previous) + y``
    (constant velocity plus the correction; with ``y = 0`` it is constant-velocity extrapolation).

    Shapes: ``x``, ``prediction``, ``previous`` ``(B, 12, 3)`` (numpy or torch) -> ``(B, 12, 3)``.
    """
    if meaning == DISPLACEMENT:
        return x + prediction
    if meaning == NEXT_POSITIONS:
        return prediction
    if meaning == VELOCITY_CORRECTION:
        if previous is None:
            raise ValueError("next_frame: 'velocity_correction' needs the previous frame, got None")
        return x + (x - previous) + prediction
    raise ValueError(f"next_frame: meaning must be one of {OUTPUT_MEANINGS}, got {meaning!r}")
