"""The rollout's fast step: model inputs and outputs in buffers allocated once, one sub-batch bound to onnxruntime.

``make_stepper(bundle, batch)`` gives the same bits as :meth:`Bundle.step` (the next-frame rule of
:mod:`e3traj.runtime._contract` in place); it reads the bundle's session and run paths.
"""

from __future__ import annotations

import numpy as np

from ._contract import (
    AR_CORRECTION,
    DISPLACEMENT,
    NEXT_POSITIONS,
    POSITIONS,
    PREVIOUS_DISPLACEMENT,
    PREVIOUS_DISPLACEMENTS,
    VELOCITY_CORRECTION,
)
from ._errors import InputError, UsageError
from ._manifest import _DTYPES
from ._session import _ORT_TYPES, CHUNK, _clean_ort_error

__all__ = ["make_stepper"]


def make_stepper(bundle, batch: int, single: bool = False):
    """A step function for rollouts: ``fn(x, past, out)`` writes :meth:`step`'s result into ``out``.

    Same arithmetic as :meth:`step` (float32 model inputs, float64 accumulation) with the model-input and
    output buffers allocated once. ``x`` and ``past`` must be finite. ``single``: run the bundle's single-frame
    graph (``batch`` must be 1): the same function, rounded differently in float32 (within the export's parity).
    Shapes: ``x``, ``out`` ``(batch, 12, 3)``; ``past`` ``(history, batch, 12, 3)``, chronological.
    """
    if bundle._session is None:
        raise UsageError(f"{bundle._path}: bundle is closed; open it again")
    n_beads = bundle.n_beads
    shape = (batch, n_beads, 3)
    h = bundle.history
    meanings = bundle._input_meanings
    bufs = {
        n: np.empty((batch, h, n_beads, 3) if m == PREVIOUS_DISPLACEMENTS else shape, dtype=bundle._input_dtypes[n])
        for n, m in meanings.items()
    }
    pos_names = [n for n, m in meanings.items() if m == POSITIONS]
    disp_names = [n for n, m in meanings.items() if m == PREVIOUS_DISPLACEMENT]
    hist_names = [n for n, m in meanings.items() if m == PREVIOUS_DISPLACEMENTS]
    meaning = bundle.output_meaning
    coefficients = bundle.ar_coefficients
    velocity = np.empty(shape, dtype=np.float64) if disp_names or meaning == VELOCITY_CORRECTION else None
    # d_j = x_{t-j+1} - x_{t-j}, j = 1..h (float64), for history inputs and the AR rule
    disps = np.empty((h, *shape), dtype=np.float64) if hist_names or meaning == AR_CORRECTION else None
    term = np.empty(shape, dtype=np.float64) if meaning == AR_CORRECTION else None
    # one sub-batch: onnxruntime writes into a bound buffer, read directly below (float32 -> float64 in the
    # additions is exact, as in the copy into ``y`` of the sub-batched path)
    if single and batch != 1:
        raise UsageError(f"the single-frame graph takes one frame, not a batch of {batch}")
    session = bundle.single_frame_session() if single else bundle._session
    run = _bound_run(bundle, session, bufs, shape) if batch <= CHUNK else None
    y = np.empty(shape, dtype=np.float64) if run is None else None

    def step_into(x: np.ndarray, past: np.ndarray | None, out: np.ndarray) -> None:
        # (rollout calls this inside np.errstate(all="ignore"); no errstate here: it slows the next
        # onnxruntime call by a few microseconds)
        if velocity is not None:
            np.subtract(x, past[h - 1], out=velocity)
            if disp_names and not np.isfinite(velocity).all():
                raise InputError(f"input {disp_names[0]!r}: holds NaN or Inf; pass finite positions")
        if disps is not None:
            np.subtract(x, past[h - 1], out=disps[0])
            for j in range(1, h):
                np.subtract(past[h - j], past[h - j - 1], out=disps[j])
            if hist_names and not np.isfinite(disps).all():
                raise InputError(f"input {hist_names[0]!r}: holds NaN or Inf; pass finite positions")
        for n in pos_names:
            np.copyto(bufs[n], x, casting="unsafe")
        for n in disp_names:
            np.copyto(bufs[n], velocity, casting="unsafe")
        for n in hist_names:
            np.copyto(bufs[n], np.swapaxes(disps, 0, 1), casting="unsafe")
        if run is None:
            bundle._run_chunks(bufs, y, CHUNK)
            pred = y
        else:
            pred = run()
        # contract.next_frame in place (no allocation per step); the same operations in the same order,
        # so the same bits (tests/runtime/test_rollout.py compares the two)
        if meaning == DISPLACEMENT:
            np.add(x, pred, out=out)
        elif meaning == NEXT_POSITIONS:
            out[...] = pred
        elif meaning == AR_CORRECTION:
            out[...] = x
            for j, b in enumerate(coefficients):  # ar_extrapolate's order: out = out + b_j d_j
                np.multiply(b, disps[j], out=term)
                np.add(out, term, out=out)
            np.add(out, pred, out=out)
        else:
            np.add(x, velocity, out=out)
            np.add(out, pred, out=out)

    return step_into


def _bound_run(bundle, session, bufs: dict[str, np.ndarray], shape: tuple[int, ...]):
    """``run() -> output`` for one sub-batch through an onnxruntime IOBinding of ``bufs`` and one output buffer.

    The inputs are bound once (their memory is read at every run) and the output is written into a buffer
    allocated once: a rollout step then skips the feed dict and the output allocation of ``session.run``
    (measured ~5% of a B=1 step). Shapes: ``bufs`` values and the output ``shape`` = ``(batch, 12, 3)``.
    """
    out_type = next(o.type for o in session.get_outputs() if o.name == bundle._output_name)
    y = np.empty(shape, dtype=_DTYPES[_ORT_TYPES.get(out_type, "float32")])
    binding = session.io_binding()
    for name, buf in bufs.items():
        binding.bind_cpu_input(name, buf)
    binding.bind_output(bundle._output_name, "cpu", 0, y.dtype, list(shape), y.ctypes.data)

    def run() -> np.ndarray:
        try:
            session.run_with_iobinding(binding)
        except Exception as exc:  # e.g. a wrong output shape, which onnxruntime cannot write into y
            raise InputError(f"{bundle._path}: the model did not return {shape}: {_clean_ort_error(exc)}") from None
        return y

    return run
