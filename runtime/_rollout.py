"""Roll a bundle forward from many starting frames at once, stopping cleanly at the first diverging step."""

from __future__ import annotations

import mmap
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
#: The working window of a rollout that does not keep every frame in memory (rewound when full).
_WINDOW_BYTES = 8 << 20


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
    #: stopped by an interrupt, a SIGTERM or a kill (see :mod:`e3traj.runtime._spool`), not by a failing step
    interrupted: bool = False


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
    sink=None,
    run_starts: int | None = None,
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
            frames, the stepping holds only a window of a few MiB; the kept frames are bit-identical to those of
            ``every=1``.
        sink: where the kept frames go instead of an array in memory: any object with ``append(frame)`` (called
            with frame 0, then each kept frame once its step has passed the checks) and ``frames()`` (what
            becomes ``traj``), e.g. :class:`~e3traj.runtime._spool.Spool`, which writes them to disk as they come.
            An exception (an interrupt) leaves in it the frames kept before.
        run_starts: the whole run's number of starts when this call rolls out a share of it (a shard); default
            ``B``. A run of one start steps through the bundle's single-frame graph where it has one (the same
            function in fewer operations); every row of a larger run, in every shard, through the batched graph.

    Returns:
        :class:`RolloutResult` with ``traj`` ``(steps_done // every + 1, B, N, 3)``.
    """
    if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 1:
        raise UsageError(f"every: got {every!r}; pass a positive number of steps between kept frames")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise UsageError(f"steps: got {steps!r}; pass a positive number of steps")
    if max_distance is not None and not (np.isfinite(max_distance) and max_distance > 0):
        raise UsageError(f"max_distance: got {max_distance!r}; pass a positive distance")
    steps, every = int(steps), int(every)
    x0 = _frames(init, "init", getattr(bundle, "n_beads", None))
    batch = x0.shape[0]
    h = _history(bundle)
    kept = steps // every + 1
    # the working window: the h frames before the current one, the current one and the next ones; a rollout kept in
    # memory frame by frame steps straight in its trajectory, the others in a window rewound when full
    direct = sink is None and every == 1
    length = h + steps + 1 if direct else h + 1 + max(h + 1, 2, min(steps, _WINDOW_BYTES // (x0.size * 8)))
    nbytes = (length + (kept if sink is None and not direct else 0)) * x0.size * 8
    if nbytes > max_bytes:
        what = f"keep {kept} frames, " if every > 1 else "need "
        raise UsageError(
            f"{steps} steps x {batch} starts {what}{nbytes / 2**30:.1f} GiB in memory (limit "
            f"{max_bytes / 2**30:.1f} GiB); keep fewer frames (a larger every), roll out fewer starts per call or "
            "write the frames to disk as they come (the rollout command does)"
        )
    buf = np.empty((length,) + x0.shape, dtype=np.float64)
    if h:
        if previous is None:
            raise UsageError(f"previous: this bundle needs the {h} frame(s) before each start (it uses the history)")
        buf[:h] = _past(previous, h, x0.shape)
    buf[h] = x0
    if sink is None:
        sink = _Frames(buf[h:] if direct else np.empty((kept,) + x0.shape, dtype=np.float64), filled=direct)
    sink.append(x0)
    centroid = x0.mean(axis=1, keepdims=True)
    if run_starts is not None and (not isinstance(run_starts, int | np.integer) or run_starts < batch):
        raise UsageError(f"run_starts: got {run_starts!r}; pass the whole run's number of starts (>= {batch})")
    step_into = bundle._stepper(batch, run_starts) if callable(getattr(bundle, "_stepper", None)) else None
    at = h  # the current frame's row in buf
    failed = None
    with np.errstate(all="ignore"):  # entered once: non-finite steps are detected below, not warned about
        for k in range(1, steps + 1):
            if at + 1 == length:  # the window is full: its last h + 1 frames move to the front
                buf[: h + 1] = buf[at - h : at + 1]
                at = h
            x = buf[at]
            past = buf[at - h : at]  # (h, B, N, 3), chronological
            nxt = buf[at + 1]
            if step_into is not None:
                step_into(x, past, nxt)
            else:
                nxt[...] = bundle.step(x, np.swapaxes(past, 0, 1)) if h else bundle.step(x)
            if noise is not None:  # a sampled rollout: in place in the window
                nxt += noise(nxt)
            failed = _failure(nxt, centroid, max_distance, stop, stop_reason)
            if failed is not None:
                break
            at += 1
            if k % every == 0:
                sink.append(nxt)
            if progress is not None:
                progress(1)
    done = steps if failed is None else k - 1
    frames = sink.frames()
    if failed is None:
        return RolloutResult(traj=frames, steps_requested=steps, steps_done=steps, complete=True, every=every)
    bad, reason = failed
    return RolloutResult(
        traj=frames, steps_requested=steps, steps_done=done, complete=False, failed_step=done + 1,
        failed_starts=np.flatnonzero(bad).astype(np.int64), reason=reason, every=every,
    )  # fmt: skip


def _failure(nxt, centroid, max_distance, stop, stop_reason) -> tuple[np.ndarray, str] | None:
    """The rows of ``nxt`` (B, N, 3) that end the rollout and why, or None when every row may go on."""
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
    return (bad, reason) if bad is not None and bad.any() else None


class _Frames:
    """The kept frames in memory (the default sink of :func:`rollout`). Shapes: ``traj`` ``(kept, B, N, 3)``."""

    def __init__(self, traj: np.ndarray, filled: bool = False):
        self.traj, self.filled, self.count = traj, filled, 0

    def append(self, frame: np.ndarray) -> None:
        if not self.filled:  # (filled: the rollout steps in traj itself)
            self.traj[self.count] = frame
        self.count += 1

    def frames(self) -> np.ndarray:
        return self.traj[: self.count]


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
    fields = dict(
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
        interrupted=np.bool_(result.interrupted),  # complete=False by an interrupt or a kill, not a failing step
        **dict(extra or {}),
    )
    with open(path, "wb") as fh:
        _savez(fh, fields)


def _savez(fh, arrays: Mapping[str, np.ndarray]) -> None:
    """``numpy.savez`` (the same file), copying a :class:`numpy.memmap` from its file in chunks: a spooled
    trajectory reaches the file without ever being in memory whole."""
    import zipfile

    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, val in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as fid:
                if hasattr(val, "write_npy"):  # frames written chunk by chunk (a merge's)
                    val.write_npy(fid)
                elif isinstance(val, np.memmap) and isinstance(val.base, mmap.mmap):  # a whole map, not a slice
                    _copy_memmap(fid, val)
                else:
                    np.lib.format.write_array(fid, np.asanyarray(val), allow_pickle=False)


def _copy_memmap(fid, arr: np.memmap, chunk: int = 16 << 20) -> None:
    np.lib.format.write_array_header_1_0(fid, np.lib.format.header_data_from_array_1_0(arr))
    left, offset = arr.nbytes, int(arr.offset)
    buf = bytearray(min(chunk, max(left, 1)))
    with open(arr.filename, "rb") as src:
        src.seek(offset)
        while left:
            n = src.readinto(memoryview(buf)[: min(len(buf), left)])
            if not n:
                raise InputError(f"{arr.filename}: ended {left} bytes early while copying the frames; disk error?")
            fid.write(memoryview(buf)[:n])
            left -= n


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
