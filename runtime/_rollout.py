"""Roll a bundle forward from many starting frames at once, stopping cleanly at the first diverging step."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._contract import MIN_BEADS, as_past
from ._errors import InputError, UsageError
from ._io import atomic_output

__all__ = ["RolloutResult", "rollout", "save_rollout", "write_xyz", "MAX_ROLLOUT_BYTES"]

#: Largest trajectory array (float64) a rollout may allocate; ask for fewer steps or starts beyond it.
MAX_ROLLOUT_BYTES = 8 << 30


@dataclass
class RolloutResult:
    """What a rollout produced.

    Shapes: ``traj`` ``(steps_done // every + 1, B, N, 3)`` float64: frames 0, every, 2 every, ... (frame 0 is
    the starting frame); ``failed_starts`` ``(k,)`` indices of batch rows that diverged at ``failed_step``.
    """

    traj: np.ndarray
    steps_requested: int
    steps_done: int
    complete: bool
    failed_step: int | None = None
    failed_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    reason: str = ""
    every: int = 1


def _frames(arr, name: str, n_beads: int | None = None) -> np.ndarray:
    a = np.asarray(arr)
    want = "N" if n_beads is None else str(n_beads)
    if (
        a.ndim != 3
        or a.shape[2] != 3
        or a.shape[0] < 1
        or a.shape[1] != (n_beads or a.shape[1])
        or a.shape[1] < MIN_BEADS
    ):
        raise UsageError(f"{name}: shape {a.shape}; expected (B, {want}, 3) with B >= 1 (the model's beads per frame)")
    if a.dtype.kind not in "fiu":
        raise UsageError(f"{name}: dtype {a.dtype} is not numeric")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        bad = int(np.argwhere(~np.isfinite(a))[0][0])
        raise InputError(f"{name}: non-finite value (NaN or Inf) in row {bad}; start from finite frames")
    return a


def _history(bundle) -> int:
    """Frames before the current one that ``bundle`` needs (``history``; else 1 if ``needs_previous``)."""
    h = getattr(bundle, "history", None)
    if h is None:
        h = 1 if getattr(bundle, "needs_previous", False) else 0
    return int(h)


def _past(previous, h: int, shape: tuple[int, ...]) -> np.ndarray:
    """``previous`` as ``(h, B, 12, 3)`` chronological rows: ``(B, N, 3)`` when h = 1, or ``(B, H >= h, 12, 3)``."""
    p = np.asarray(previous)
    if p.dtype.kind not in "fiu":
        raise UsageError(f"previous: dtype {p.dtype} is not numeric")
    try:
        p = as_past(p, h, shape)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    p = np.swapaxes(p, 0, 1).astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise InputError("previous: non-finite value (NaN or Inf); start from finite frames")
    return p


def rollout(
    bundle,
    init: np.ndarray,
    steps: int,
    *,
    previous: np.ndarray | None = None,
    max_distance: float | None = None,
    stop: Callable[[np.ndarray], np.ndarray] | None = None,
    stop_reason: str = "left the allowed band",
    noise: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: Callable[[int], None] | None = None,
    max_bytes: int = MAX_ROLLOUT_BYTES,
    every: int = 1,
    _centroid: np.ndarray | None = None,
) -> RolloutResult:
    """Extrapolate ``steps`` frames from each starting frame, all starts in one batch.

    Positions accumulate in float64 (each step's model input is cast to the bundle dtype). With a
    :class:`~e3traj.runtime.Bundle`, each step writes straight into the trajectory array through buffers allocated
    once (same arithmetic as ``Bundle.step``); other objects are stepped with ``step``. The rollout stops
    at the first step where any frame is non-finite or (with ``max_distance``) any bead lies farther than
    ``max_distance`` from its starting frame's centroid; the frames before that step are kept.

    Args:
        bundle: a :class:`~e3traj.runtime.Bundle` or any predictor (``history`` and ``step(x, previous)``).
        init: starting frames. Shapes: ``(B, N, 3)``.
        steps: number of steps (>= 1).
        previous: the ``history`` frames before each start, oldest first, needed by velocity-aware and history
            bundles. Shapes: ``(B, H, N, 3)``, or ``(B, N, 3)`` when one frame is needed.
        max_distance: optional bound on the distance of any bead from its start's centroid.
        stop: optional ``stop(frames (B, N, 3)) -> (B,) bool``: the rows to stop at (e.g. outside the physical
            band of :func:`~e3traj.runtime._fidelity.unstable_rows`); the frames before that step are kept and
            ``reason`` is ``stop_reason``. It sees every row, non-finite ones included.
        noise: optional ``noise(frames (B, N, 3)) -> (B, N, 3)`` added to every predicted frame (a sampled
            rollout, e.g. :class:`~e3traj.runtime._noise.RolloutNoise`).
        progress: called with 1 after every step (e.g. a progress bar's ``update``).
        max_bytes: refuse to allocate a trajectory larger than this.
        every: keep every ``every``-th frame (as MD codes dump): the trajectory's memory is ``steps / every``
            frames, the stepping holds only the window it needs; the kept frames are bit-identical to those of
            ``every=1``.

    Returns:
        :class:`RolloutResult` with ``traj`` ``(steps_done // every + 1, B, N, 3)``.
    """
    if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 1:
        raise UsageError(f"every: got {every!r}; pass a positive number of steps between kept frames")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise UsageError(f"steps: got {steps!r}; pass a positive number of steps")
    if max_distance is not None and not (np.isfinite(max_distance) and max_distance > 0):
        raise UsageError(f"max_distance: got {max_distance!r}; pass a positive distance")
    if every > 1:
        return _rollout_every(
            bundle, init, steps, int(every), previous=previous, max_distance=max_distance, stop=stop,
            stop_reason=stop_reason, noise=noise, progress=progress, max_bytes=max_bytes,
        )  # fmt: skip
    steps = int(steps)
    x0 = _frames(init, "init", getattr(bundle, "n_beads", None))
    batch = x0.shape[0]
    h = _history(bundle)
    nbytes = (steps + 1 + h) * batch * x0.shape[1] * 3 * 8
    if nbytes > max_bytes:
        raise UsageError(
            f"{steps} steps x {batch} starts need {nbytes / 2**30:.1f} GiB for the trajectory (limit "
            f"{max_bytes / 2**30:.1f} GiB); roll out fewer steps or starts per call"
        )
    # one buffer: the h frames before the start, then the trajectory; the past of step k is a view into it
    buf = np.empty((h + steps + 1,) + x0.shape, dtype=np.float64)
    if h:
        if previous is None:
            raise UsageError(f"previous: this bundle needs the {h} frame(s) before each start (it uses the history)")
        buf[:h] = _past(previous, h, x0.shape)
    buf[h] = x0
    traj = buf[h:]
    centroid = x0.mean(axis=1, keepdims=True) if _centroid is None else _centroid  # (_rollout_every: the first)
    step_into = bundle._stepper(batch) if callable(getattr(bundle, "_stepper", None)) else None
    with np.errstate(all="ignore"):  # entered once: non-finite steps are detected below, not warned about
        for k in range(1, steps + 1):
            x = traj[k - 1]
            past = buf[k - 1 : h + k - 1]  # (h, B, 12, 3), chronological
            if step_into is not None:
                nxt = traj[k]
                step_into(x, past, nxt)
            else:
                nxt = bundle.step(x, np.swapaxes(past, 0, 1)) if h else bundle.step(x)
            if noise is not None:  # a sampled rollout: in place in the trajectory row, or on the new array
                if step_into is not None:
                    nxt += noise(nxt)
                else:
                    nxt = nxt + noise(nxt)
            finite = bool(np.isfinite(nxt).all())
            bad = None if finite else ~np.isfinite(nxt).all(axis=(1, 2))
            reason = "became non-finite (NaN or Inf)"
            if max_distance is not None:
                far = np.linalg.norm(nxt - centroid, axis=-1).max(axis=1) > max_distance
                if far.any() and finite:
                    reason = f"moved farther than {max_distance:g} from the starting centroid"
                bad = far if bad is None else bad | far
            if stop is not None:  # every row, whatever the others do: a row's failure is its own (shards merge)
                broken = np.asarray(stop(nxt), dtype=bool)
                if broken.any():
                    reason = stop_reason if finite else reason
                    bad = broken if bad is None else bad | broken
            if bad is not None and bad.any():
                return RolloutResult(
                    traj=traj[:k],
                    steps_requested=steps,
                    steps_done=k - 1,
                    complete=False,
                    failed_step=k,
                    failed_starts=np.flatnonzero(bad).astype(np.int64),
                    reason=reason,
                )
            if step_into is None:
                traj[k] = nxt
            if progress is not None:
                progress(1)
    return RolloutResult(traj=traj, steps_requested=steps, steps_done=steps, complete=True)


def _rollout_every(bundle, init, steps, every, *, previous, max_bytes, **checks) -> RolloutResult:
    """:func:`rollout` keeping every ``every``-th frame: steps ``every`` at a time through :func:`rollout` itself,
    from the window of frames each block needs, so its arithmetic is the same step by step."""
    x0 = _frames(init, "init", getattr(bundle, "n_beads", None))
    h = _history(bundle)
    kept = steps // every + 1
    nbytes = (kept + every + h) * x0.size * 8
    if nbytes > max_bytes:
        raise UsageError(
            f"{steps} steps x {len(x0)} starts keep {kept} frames, {nbytes / 2**30:.1f} GiB (limit "
            f"{max_bytes / 2**30:.1f} GiB); keep fewer frames (a larger --every) or roll out fewer starts per call"
        )
    out = np.empty((kept,) + x0.shape, dtype=np.float64)
    out[0] = x0
    x, past = x0, previous
    progress = checks.pop("progress", None)
    checks["_centroid"] = x0.mean(axis=1, keepdims=True)  # max_distance counts from the first start, not a block's
    for block in range(1, kept + (1 if steps % every else 0)):
        n = min(every, steps - (block - 1) * every)
        res = rollout(bundle, x, n, previous=past, progress=progress, max_bytes=max_bytes, **checks)
        if not res.complete:
            done = (block - 1) * every + res.steps_done
            return RolloutResult(
                traj=out[: done // every + 1], steps_requested=steps, steps_done=done, complete=False,
                failed_step=(block - 1) * every + res.failed_step, failed_starts=res.failed_starts,
                reason=res.reason, every=every,
            )  # fmt: skip
        if n == every:
            out[block] = res.traj[-1]
        window = np.concatenate([_past(past, h, x.shape), res.traj]) if h and past is not None else res.traj
        x, past = res.traj[-1], (np.swapaxes(window[-h - 1 : -1], 0, 1) if h else None)
    return RolloutResult(traj=out, steps_requested=steps, steps_done=steps, complete=True, every=every)


def save_rollout(
    path: str | os.PathLike,
    result: RolloutResult,
    *,
    starts: Sequence[int] | np.ndarray,
    bundle_sha256: str,
    source: str,
    replace: bool = True,
) -> Path:
    """Write a rollout as ``.npz`` atomically (``replace=False``: refuse a file that exists at the rename).

    Arrays: ``traj`` ``(steps_done + 1, B, N, 3)``, ``starts`` ``(B,)`` (frame indices in the source),
    ``steps_done``, ``steps_requested``, ``complete`` (bool), ``bundle_sha256``, ``failed_step`` (-1 if none),
    ``failed_starts`` (batch rows that diverged), ``source``. Loadable with ``allow_pickle=False``.
    """
    out = Path(path)
    with atomic_output(out, suffix=".tmp", replace=replace) as tmp:
        write_rollout_file(tmp, result, starts=starts, bundle_sha256=bundle_sha256, source=source)
    return out


def write_rollout_file(
    path: Path,
    result: RolloutResult,
    *,
    starts: Sequence[int] | np.ndarray,
    bundle_sha256: str,
    source: str,
    noise_scale: float = 0.0,
    noise_seed: int = -1,
    init_sha256: str = "",
    extra: Mapping[str, np.ndarray] | None = None,
    stop: str = "",
) -> None:
    """The body of :func:`save_rollout`: write straight to ``path`` (a temporary file of the caller's).

    ``init_sha256``: the sha256 of the file the starts came from; ``stop``: the stopping options in words ("" for
    none); ``extra``: more arrays (a shard's, see :mod:`e3traj.runtime._shards`), written after the rest.
    """
    starts_arr = np.asarray(starts, dtype=np.int64)
    if starts_arr.shape != (result.traj.shape[1],):
        raise UsageError(f"starts: {starts_arr.shape[0]} entries for {result.traj.shape[1]} trajectories")
    with open(path, "wb") as fh:
        np.savez(
            fh,
            traj=result.traj,
            starts=starts_arr,
            steps_done=np.int64(result.steps_done),
            steps_requested=np.int64(result.steps_requested),
            complete=np.bool_(result.complete),
            bundle_sha256=np.str_(bundle_sha256),
            failed_step=np.int64(-1 if result.failed_step is None else result.failed_step),
            failed_starts=np.asarray(result.failed_starts, dtype=np.int64),
            source=np.str_(source),
            noise_scale=np.float64(noise_scale),  # 0: a deterministic rollout
            noise_seed=np.int64(noise_seed),  # -1: no noise
            init_sha256=np.str_(init_sha256),
            every=np.int64(result.every),  # traj[i] is step i x every
            stop=np.str_(stop),
            **dict(extra or {}),
        )


def write_xyz(
    path: str | os.PathLike,
    traj: np.ndarray,
    starts: Sequence[int] | np.ndarray,
    species: str = "C",
    *,
    replace: bool = True,
) -> Path:
    """Write trajectories as extended XYZ (readable by ASE), atomically.

    One block per start and frame (all frames of the first start, then the next start...), each with the
    header ``Properties=species:S:1:pos:R:3 frame=F start=S`` and no lattice.

    Shapes: ``traj`` ``(T, B, N, 3)``; ``starts`` ``(B,)``.
    """
    out = Path(path)
    with atomic_output(out, suffix=".tmp", replace=replace) as tmp:
        write_xyz_file(tmp, traj, starts, species)
    return out


def write_xyz_file(
    path: Path, traj: np.ndarray, starts: Sequence[int] | np.ndarray, species: str = "C", every: int = 1
) -> None:
    """The body of :func:`write_xyz`: write straight to ``path`` (a temporary file of the caller's)."""
    traj = np.asarray(traj, dtype=np.float64)
    if traj.ndim != 4 or traj.shape[3] != 3 or traj.shape[2] < MIN_BEADS:
        raise UsageError(f"traj: shape {traj.shape}; expected (T, B, N, 3), N >= {MIN_BEADS}")
    n = traj.shape[2]
    starts_arr = np.asarray(starts, dtype=np.int64)
    if starts_arr.shape != (traj.shape[1],):
        raise UsageError(f"starts: {starts_arr.shape} entries for {traj.shape[1]} trajectories")
    atom = f"{species} %.10f %.10f %.10f\n"
    body = atom * n
    with open(path, "w", encoding="ascii", newline="\n") as fh:
        for b, start in enumerate(starts_arr):
            rows = traj[:, b].reshape(traj.shape[0], n * 3)
            for t in range(traj.shape[0]):
                fh.write(f'{n}\nProperties=species:S:1:pos:R:3 frame={t * every} start={int(start)} pbc="F F F"\n')
                fh.write(body % tuple(rows[t]))
