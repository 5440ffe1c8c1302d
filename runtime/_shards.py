"""Sharded ensembles: ``rollout --shard I/N`` rolls out a deterministic share of the starts, ``merge`` puts the
shards back into the file one run would have written (numpy only).

The starts (``--frames``) are cut into N contiguous blocks as ``numpy.array_split`` does; shard I (0-based) takes
block I. Every shard file records, beside what a rollout file holds, ``shard_index``, ``shard_count``,
``shard_row`` (its first row among all starts), ``all_starts`` (the whole list) and the data's sha256 (every
rollout file has ``init_sha256``). The rows of a rollout are independent (each start has its own noise stream,
and onnxruntime computes each batch row alike whatever the batch: checked by the tests), so the merge is the
single run's file bit for bit, a stopped rollout included: one run stops every start at the first failing
step, so the merge keeps the shortest shard's frames and that shard's failure.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ._errors import InputError, UsageError, first_line

__all__ = ["parse_shard", "shard_rows", "shard_fields", "merge_rollouts", "SHARD_KEYS"]

#: The arrays a shard adds to a rollout file (dropped by the merge).
SHARD_KEYS = ("shard_index", "shard_count", "shard_row", "all_starts")
#: Keys every shard must agree on.
_SAME = (
    "bundle_sha256",
    "init_sha256",
    "source",
    "steps_requested",
    "noise_scale",
    "noise_seed",
    "every",
    "stop",
    "shard_count",
)


def parse_shard(spec: str, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``"I/N"`` (0 <= I < N) or ``"slurm"`` (``SLURM_ARRAY_TASK_ID`` minus ``SLURM_ARRAY_TASK_MIN``, of
    ``SLURM_ARRAY_TASK_COUNT``) -> ``(I, N)``; UsageError naming the bad value otherwise."""
    env = os.environ if environ is None else environ
    if spec == "slurm":
        try:
            task = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            count = int(env["SLURM_ARRAY_TASK_COUNT"])
        except (KeyError, ValueError):
            raise UsageError(
                "--shard slurm: SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set (or not integers); "
                "run it in a job array (sbatch --array=0-N) or pass --shard I/N"
            ) from None
        if not 0 <= task < count:
            raise UsageError(f"--shard slurm: task {task} of {count}; the array's ids must run over {count} values")
        return task, count
    m = re.fullmatch(r"(\d+)/(\d+)", str(spec).strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise UsageError(f"--shard: {spec!r}; pass I/N with 0 <= I < N (e.g. 0/4) or 'slurm'")
    return int(m.group(1)), int(m.group(2))


def shard_rows(n_starts: int, index: int, count: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of shard ``index`` of ``count`` among ``n_starts`` starts (``numpy.array_split``)."""
    if count > n_starts:
        raise UsageError(f"--shard: {count} shards for {n_starts} starting frame(s); use at most {n_starts}")
    base, extra = divmod(n_starts, count)
    lo = index * base + min(index, extra)
    return lo, lo + base + (1 if index < extra else 0)


def shard_fields(index: int, count: int, row: int, all_starts: Sequence[int]) -> dict[str, np.ndarray]:
    """The arrays a shard file adds (:data:`SHARD_KEYS`)."""
    return {
        "shard_index": np.int64(index),
        "shard_count": np.int64(count),
        "shard_row": np.int64(row),
        "all_starts": np.asarray(all_starts, dtype=np.int64),
    }


#: Bytes of merged frames copied at a time.
_CHUNK_BYTES = 16 << 20


class _OnDisk:
    """A shard's ``traj.npy`` read as a stream from its ``.npz`` (zipfile checks its CRC at the end): a shard's
    frames are copied into the merge in chunks, never held whole. Shapes: ``shape`` ``(T, B, N, 3)``."""

    def __init__(self, path: Path, name: str = "traj.npy"):
        self.path, self.name = path, name
        with self.open() as fid:
            self.shape = self._header(fid)
        self.ndim = len(self.shape)

    def open(self):
        """The member as a stream (close it)."""
        import zipfile

        zf = zipfile.ZipFile(self.path)
        try:
            return contextlib.closing(_Closing(zf.open(self.name), zf))
        except BaseException:
            zf.close()
            raise

    def _header(self, fid) -> tuple[int, ...]:
        version = np.lib.format.read_magic(fid)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{self.name}: .npy format {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(fid)
        if fortran or dtype != np.dtype("<f8") or any(n < 0 for n in shape):
            raise ValueError(f"{self.name}: not C-ordered float64 frames")
        self.header_bytes = fid.tell()
        self.frame_bytes = math.prod(shape[1:]) * 8 if shape else 8
        if fid.raw_size() != self.header_bytes + math.prod(shape) * 8:
            raise ValueError(f"{self.name}: {fid.raw_size() - self.header_bytes} bytes of frames, its header says "
                             f"{math.prod(shape) * 8}")  # fmt: skip
        return tuple(shape)


class _Closing:
    """A zip member's stream and its archive, closed together; ``raw_size`` is the member's stored size."""

    def __init__(self, fid, zf):
        self.fid, self.zf = fid, zf

    def read(self, n: int = -1) -> bytes:
        return self.fid.read(n)

    def readinto(self, buf) -> int:
        return self.fid.readinto(buf)

    def tell(self) -> int:
        return self.fid.tell()

    def raw_size(self) -> int:
        return self.zf.getinfo(self.fid.name).file_size

    def close(self) -> None:
        self.fid.close()
        self.zf.close()


class _Joined:
    """The merged trajectory: the first ``frames`` frames of every shard side by side, written by
    :func:`~e3traj.runtime._rollout._savez` chunk by chunk; each shard is then read to its end, so that zipfile
    checks its CRC (a changed byte fails the merge, and the temporary output is removed).

    Shapes: ``shape`` ``(frames, B, N, 3)``.
    """

    def __init__(self, parts: Sequence[_OnDisk], frames: int):
        self.parts, self.frames = list(parts), int(frames)
        self.shape = (self.frames, sum(p.shape[1] for p in parts), *parts[0].shape[2:])

    def write_npy(self, fid) -> None:
        import zipfile

        d = {"descr": "<f8", "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(fid, d)
        step = max(1, _CHUNK_BYTES // (math.prod(self.shape[1:]) * 8))
        with contextlib.ExitStack() as stack:
            streams = [stack.enter_context(p.open()) for p in self.parts]
            part = self.parts[0]
            try:
                for part, f in zip(self.parts, streams):
                    f.read(part.header_bytes)
                for t0 in range(0, self.frames, step):
                    n = min(self.frames, t0 + step) - t0
                    chunks = []
                    for part, f in zip(self.parts, streams):
                        chunks.append(_read_frames(f, part, n))
                    fid.write(np.concatenate(chunks, axis=1).data)
                for part, f in zip(self.parts, streams):  # noqa: B007 - part names the shard in the except
                    while f.read(_CHUNK_BYTES):  # to the end: zipfile checks the CRC there
                        pass
            except zipfile.BadZipFile as exc:
                raise InputError(f"{part.path}: {first_line(exc)} in its frames; the file was changed") from None


def _read_frames(f, part: _OnDisk, n: int) -> np.ndarray:
    out = np.empty((n, *part.shape[1:]), dtype="<f8")
    view = memoryview(out).cast("B")
    got = 0
    while got < len(view):
        k = f.readinto(view[got:])
        if not k:
            raise InputError(f"{part.path}: its frames end early; was it changed?")
        got += k
    return out


def _load(path: Path) -> dict[str, np.ndarray]:
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files if k != "traj"}
            if "traj" in z.files:
                out["traj"] = _OnDisk(path, "traj.npy")
    except FileNotFoundError:
        raise InputError(f"{where}: file not found; pass the shard files of one 'rollout --shard' run") from None
    except Exception as exc:  # zipfile/numpy raise many kinds
        raise InputError(
            f"{where}: could not read it as a rollout ({first_line(exc)}); pass shard .npz files"
        ) from None
    out.setdefault("every", np.int64(1))  # shards written before --every existed
    out.setdefault("interrupted", np.bool_(False))
    out.setdefault("stop", np.str_(""))
    missing = [
        k
        for k in ("traj", "starts", "steps_done", "complete", "failed_step", "failed_starts", *SHARD_KEYS, *_SAME)
        if k not in out
    ]
    if missing:
        raise InputError(f"{where}: arrays {missing} missing; pass files written by 'e3traj rollout --shard'")
    try:  # the shapes and kinds every step of the merge relies on, checked before it does
        scalars = ("steps_done", "steps_requested", "failed_step", "every", "shard_index", "shard_count", "shard_row")
        ok = all(out[k].shape == () and out[k].dtype.kind in "iu" for k in scalars)
        ok = ok and out["complete"].shape == () and out["complete"].dtype == bool and int(out["every"]) >= 1
        ok = ok and out["interrupted"].shape == () and out["interrupted"].dtype == bool
        ok = ok and out["traj"].ndim == 4 and out["traj"].shape[3] == 3
        done, every = int(out["steps_done"]), int(out["every"])
        ok = ok and out["traj"].ndim == 4 and out["traj"].shape[:2] == (done // every + 1, len(out["starts"]))
        ok = ok and bool(out["complete"]) == (done == int(out["steps_requested"]))
    except (TypeError, ValueError, IndexError):
        ok = False
    if not ok:
        raise InputError(f"{where}: its arrays do not describe a rollout shard (shapes or kinds); was it changed?")
    return out


def merge_rollouts(paths: Sequence[str | os.PathLike]):
    """``(RolloutResult, fields)``: what one run over every shard's starts produced, and the other arguments of
    :func:`~e3traj.runtime._rollout.write_rollout_file` (``starts``, ``bundle_sha256``, ``source``,
    ``noise_scale``, ``noise_seed``, ``init_sha256``), so the merged file is written as that run wrote its own.

    Refused in one line (InputError): files of another run (bundle, data, steps, noise or shard count differ),
    a missing or repeated shard, or shards whose starts do not add up to the recorded list.
    """
    shards = [(Path(p), _load(Path(p))) for p in paths]
    if not shards:
        raise UsageError("merge: pass the shard files")
    first_path, first = shards[0]
    for path, s in shards[1:]:
        for key in _SAME:
            if not np.array_equal(s[key], first[key]):
                raise InputError(f"{path}: {key} {s[key]!s} differs from {first_path}'s {first[key]!s}; not one run")
        if not np.array_equal(s["all_starts"], first["all_starts"]):
            raise InputError(f"{path}: its run's starting frames differ from {first_path}'s; not one run")
        if s["traj"].shape[2:] != first["traj"].shape[2:]:
            raise InputError(
                f"{path}: frames of {s['traj'].shape[2]} beads, {first_path}'s of {first['traj'].shape[2]}; not one run"
            )
    count = int(first["shard_count"])
    seen = sorted(int(s["shard_index"]) for _, s in shards)
    if seen != list(range(count)):
        gaps = sorted(set(range(count)) - set(seen))
        dup = sorted({i for i in seen if seen.count(i) > 1})
        raise InputError(f"merge: shards {seen} of {count}: missing {gaps}, repeated {dup}; pass each shard once")
    shards.sort(key=lambda ps: int(ps[1]["shard_index"]))
    all_starts = first["all_starts"]
    for path, s in shards:
        lo, hi = shard_rows(len(all_starts), int(s["shard_index"]), count)
        if int(s["shard_row"]) != lo or not np.array_equal(s["starts"], all_starts[lo:hi]):
            raise InputError(f"{path}: its starts are not rows {lo}..{hi - 1} of the run's; the file was changed")
    # one run stops every start at the first failing step: keep the shortest shard's frames and its failure
    done = min(int(s["steps_done"]) for _, s in shards)
    every = int(first["every"])
    traj = _Joined([s["traj"] for _, s in shards], done // every + 1)
    failed = [(p, s) for p, s in shards if not bool(s["complete"]) and int(s["steps_done"]) == done]
    # a shard interrupted there (an interrupt or a kill, see _spool) makes the run interrupted: its later steps were
    # never tried, so no failure is known for them
    interrupted = any(bool(s.get("interrupted", False)) for _, s in failed)
    failed = [(p, s) for p, s in failed if not interrupted or bool(s.get("interrupted", False))]
    failed_starts = (
        np.concatenate([np.asarray(s["failed_starts"], dtype=np.int64) + int(s["shard_row"]) for _, s in failed])
        if failed
        else np.zeros(0, dtype=np.int64)
    )
    from ._rollout import RolloutResult

    result = RolloutResult(
        traj=traj,
        steps_requested=int(first["steps_requested"]),
        steps_done=done,
        complete=not failed,
        failed_step=int(failed[0][1]["failed_step"]) if failed and not interrupted else None,
        failed_starts=np.zeros(0, dtype=np.int64) if interrupted else failed_starts,
        every=every,
        interrupted=interrupted,
    )
    fields = {
        "starts": np.asarray(all_starts, dtype=np.int64),
        "bundle_sha256": str(first["bundle_sha256"]),
        "source": str(first["source"]),
        "noise_scale": float(first["noise_scale"]),
        "noise_seed": int(first["noise_seed"]),
        "init_sha256": str(first["init_sha256"]),
        "stop": str(first["stop"]),
    }
    return result, fields
