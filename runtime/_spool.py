"""A rollout's kept frames written to disk as they come (numpy only): memory no longer grows with its length, and
the frames already written survive an interrupt, or a kill, marked incomplete.

``e3traj rollout -o OUT.npz`` spools into the folder ``OUT.npz.partial/``: ``meta.npz`` (everything the rollout
file records except the frames, written and synced before the first step) and ``frames.f64`` (the kept frames,
float64 ``(B, N, 3)`` each, appended in order and handed to the operating system at least every
:data:`FLUSH_SECONDS`; a running rollout holds a lock on it). When the rollout ends (complete, stopped,
interrupted) :meth:`Spool.finish` records its outcome in ``outcome.npz``, writes ``OUT.npz`` (and the XYZ file)
atomically, copying the frames in chunks, and removes the folder. After a kill (SIGKILL, the out-of-memory
killer, a time limit's SIGKILL) the folder stays; :func:`recover` (``e3traj recover OUT.npz.partial``) writes the
whole frames it holds, as the rollout's outcome when one was recorded, else as an interrupted rollout. The frames
survive the process, not the machine: nothing is synced to the disk while the rollout runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import InputError, UsageError, first_line

try:  # POSIX: a running rollout locks its frames; recover refuses a locked spool
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["Spool", "recover", "cut_short", "partial_folder", "FLUSH_SECONDS"]

#: The longest the frames of a running rollout stay in the process before they reach the operating system.
FLUSH_SECONDS = 1.0
_META, _FRAMES, _OUTCOME = "meta.npz", "frames.f64", "outcome.npz"
_SUFFIX = ".partial"
_BUFFER = 1 << 20
#: meta.npz: key -> numpy kinds it may have (0-d unless noted below)
_META_KINDS = {
    "bundle_sha256": "U",
    "source": "U",
    "noise_scale": "f",
    "noise_seed": "iu",
    "init_sha256": "U",
    "stop": "U",
    "steps_requested": "iu",
    "every": "iu",
    "xyz": "U",
    "host": "U",
    "pid": "iu",
}
_META_ARRAYS = {"starts": 1, "shape": 1}  # key -> ndim (int arrays)
_OUTCOME_KINDS = {"steps_done": "iu", "complete": "b", "failed_step": "iu", "reason": "U", "interrupted": "b"}


def partial_folder(output: str | os.PathLike) -> Path:
    """The spool folder of the rollout file ``output``: ``OUT.npz`` -> ``OUT.npz.partial``."""
    out = Path(output)
    return out.with_name(out.name + _SUFFIX)


class Spool:
    """A :func:`~e3traj.runtime.rollout` sink that appends the kept frames to ``OUT.partial/frames.f64``.

    Args:
        output: the rollout file to write at the end; its spool folder must not exist (an unfinished run's frames
            are never overwritten: recover or remove them).
        shape: one frame's shape ``(B, N, 3)``.
        fields: the keyword arguments of :func:`~e3traj.runtime._rollout.write_rollout_file` but ``result``
            (``starts``, ``bundle_sha256``, ``source``, ``noise_scale``, ``noise_seed``, ``init_sha256``,
            ``stop``, ``extra``), and ``steps_requested``, ``every``.
        xyz: also write this extended XYZ file at the end.
        replace: whether the outputs may replace existing files (``--force``).
    """

    def __init__(self, output, shape, fields: dict[str, Any], *, xyz=None, replace: bool = False):
        self.output = Path(os.path.abspath(output))
        self.xyz = None if xyz is None else Path(os.path.abspath(xyz))
        self.replace = bool(replace)
        self.shape = tuple(int(n) for n in shape)
        self.folder = partial_folder(self.output)
        self.label = partial_folder(output)  # as the user named the output, for messages
        if os.path.lexists(self.folder):
            raise UsageError(
                f"{partial_folder(output)}: holds the frames of an earlier rollout to {self.output.name} that did "
                f"not finish; write them out with 'e3traj recover {partial_folder(output)}' or remove the folder"
            )
        meta = {k: np.asarray(v) for k, v in fields.items() if k != "extra"}
        meta.update({f"extra.{k}": np.asarray(v) for k, v in dict(fields.get("extra") or {}).items()})
        meta.update(
            shape=np.asarray(self.shape, dtype=np.int64),
            xyz=np.str_("" if self.xyz is None else str(self.xyz)),
            host=np.str_(os.uname().nodename if hasattr(os, "uname") else ""),
            pid=np.int64(os.getpid()),
        )
        os.mkdir(self.folder)
        try:
            with open(self.folder / (_META + ".tmp"), "wb") as fh:
                np.savez(fh, **meta)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(self.folder / (_META + ".tmp"), self.folder / _META)
            _sync_folder(self.folder)
            self._fh = open(self.folder / _FRAMES, "wb", buffering=_BUFFER)  # noqa: SIM115 - closed by finish()
            if fcntl is not None:
                with contextlib.suppress(OSError):  # a file system without locks: recover cannot tell
                    fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            _remove(self.folder)
            raise
        self.count = 0
        self._flushed = time.monotonic()

    def append(self, frame: np.ndarray) -> None:
        """Write one kept frame. Shapes: ``frame`` ``(B, N, 3)`` float64."""
        self._fh.write(np.ascontiguousarray(frame, dtype=np.float64).data)
        self.count += 1
        now = time.monotonic()
        if now - self._flushed >= FLUSH_SECONDS:
            self._fh.flush()
            self._flushed = now

    def frames(self) -> np.ndarray:
        """The frames written so far, read-only from disk. Shapes: ``(count, B, N, 3)``."""
        self._fh.flush()
        return np.memmap(self.folder / _FRAMES, dtype=np.float64, mode="r", shape=(self.count, *self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes of the frames written so far."""
        return self.count * math.prod(self.shape) * 8

    def close(self) -> None:
        """Hand the frames to the operating system and release the lock (the folder stays, for recover)."""
        with contextlib.suppress(OSError, ValueError):
            self._fh.close()

    def record(self, result) -> None:
        """Close the frames and record how the rollout ended (``outcome.npz``), so that :func:`recover` writes
        the same file as :meth:`finish` if the process dies while finishing."""
        self.close()
        with open(self.folder / (_OUTCOME + ".tmp"), "wb") as fh:
            np.savez(
                fh,
                steps_done=np.int64(result.steps_done),
                complete=np.bool_(result.complete),
                failed_step=np.int64(-1 if result.failed_step is None else result.failed_step),
                failed_starts=np.asarray(result.failed_starts, dtype=np.int64),
                reason=np.str_(result.reason),
                interrupted=np.bool_(result.interrupted),
            )
        os.replace(self.folder / (_OUTCOME + ".tmp"), self.folder / _OUTCOME)

    def finish(self, result) -> list[Path]:
        """Record ``result``'s outcome (its ``traj`` is ignored: the spooled frames are written), write the rollout
        file (and XYZ) atomically, then remove the spool folder. Returns the files written."""
        self.record(result)
        return _write(self.folder, self.output, self.xyz, result, self.count, replace=self.replace)

    def discard(self) -> None:
        """Remove the spool folder and its frames."""
        self.close()
        _remove(self.folder)


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):  # not on every system (Windows)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(folder: Path) -> None:
    """Remove a spool folder: its own files only, then the folder (which fails, and is kept, if it holds more)."""
    for name in (_META, _META + ".tmp", _FRAMES, _OUTCOME, _OUTCOME + ".tmp"):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _load_checked(path: Path, kinds: dict[str, str], arrays: dict[str, int]) -> dict[str, np.ndarray]:
    """The arrays of ``path``, each checked for its kind and shape; one line otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise InputError(f"{path}: missing; pass the OUT.partial folder an 'e3traj rollout' left") from None
    except Exception as exc:  # zipfile/numpy raise many kinds
        raise InputError(f"{path}: could not read it ({first_line(exc)}); the folder was changed") from None
    from ._shards import SHARD_KEYS

    known = set(kinds) | set(arrays) | {f"extra.{k}" for k in SHARD_KEYS}
    missing = sorted(known - set(out) - {f"extra.{k}" for k in SHARD_KEYS})
    unknown = sorted(set(out) - known)
    bad = [k for k, kind in kinds.items() if k in out and (out[k].shape != () or out[k].dtype.kind not in kind)]
    bad += [k for k, nd in arrays.items() if k in out and (out[k].ndim != nd or out[k].dtype.kind not in "iu")]
    if missing or unknown or bad:
        raise InputError(
            f"{path}: does not describe a rollout (missing {missing}, unknown {unknown}, malformed {bad}); the "
            "folder was changed"
        )
    return out


def _write(folder: Path, output: Path, xyz: Path | None, result, count: int, *, replace: bool) -> list[Path]:
    from ._io import atomic_outputs
    from ._rollout import write_rollout_file, write_xyz_file

    meta = _load_checked(folder / _META, _META_KINDS, _META_ARRAYS)
    shape = tuple(int(n) for n in meta["shape"])
    outputs = [output] + ([xyz] if xyz is not None else [])
    traj = np.memmap(folder / _FRAMES, dtype=np.float64, mode="r", shape=(count, *shape))
    fields = {k: v.item() if v.shape == () else v for k, v in meta.items() if k in _META_KINDS or k == "starts"}
    for k in ("steps_requested", "every", "xyz", "host", "pid"):
        fields.pop(k)
    extra = {k.split(".", 1)[1]: v for k, v in meta.items() if k.startswith("extra.")}
    with atomic_outputs(outputs, suffix=".tmp", replace=replace) as tmps:  # both files or neither
        write_rollout_file(tmps[0], dataclasses.replace(result, traj=traj), **fields, extra=extra or None)
        if xyz is not None:
            write_xyz_file(tmps[1], traj, meta["starts"], every=int(meta["every"]))
    del traj  # the map closes before its folder goes
    _remove(folder)
    return outputs


def cut_short(count: int, steps: int, every: int, shape, reason: str):
    """The :class:`~e3traj.runtime.RolloutResult` of a rollout ended from outside (an interrupt, a kill) after
    ``count`` kept frames: done up to the last kept one (the steps after it are not known to have run), complete
    only if that was the last step. Its ``traj`` is empty (the spool holds the frames)."""
    from ._rollout import RolloutResult

    done = (count - 1) * every
    return RolloutResult(
        traj=np.zeros((0, *shape)), steps_requested=steps, steps_done=done, complete=done == steps, every=every,
        interrupted=done != steps, reason="" if done == steps else reason,
    )  # fmt: skip


def recover(folder: str | os.PathLike, *, replace: bool = False) -> tuple[list[Path], Any]:
    """Write the rollout file of a spool folder a killed rollout left and remove the folder: ``OUT.partial`` gives
    ``OUT`` beside it (and the XYZ file the rollout was asked for). The whole frames it holds are written with
    the outcome the rollout recorded, or else as interrupted (``complete=False``, ``interrupted=True``).

    Returns ``(files written, RolloutResult)``. Raises InputError in one line for anything but such a folder
    (a folder that is not ``*.partial``, a changed ``meta.npz``, a spool a running rollout still holds).
    """
    from ._rollout import RolloutResult

    given = Path(folder)
    where = Path(os.path.abspath(given))
    if not where.name.endswith(_SUFFIX) or len(where.name) == len(_SUFFIX):
        raise InputError(f"{given}: not an OUT{_SUFFIX} folder; pass the folder an 'e3traj rollout -o OUT' left")
    if not where.is_dir() or where.is_symlink():
        raise InputError(f"{given}: not a folder; pass the OUT{_SUFFIX} folder an 'e3traj rollout' left")
    output = where.with_name(where.name[: -len(_SUFFIX)])
    meta = _load_checked(where / _META, _META_KINDS, _META_ARRAYS)
    shape = tuple(int(n) for n in meta["shape"])
    every, steps = int(meta["every"]), int(meta["steps_requested"])
    if len(shape) != 3 or min(shape) < 1 or shape[2] != 3 or every < 1 or steps < 1 or len(meta["starts"]) != shape[0]:
        raise InputError(f"{where / _META}: shape {shape}, every {every}, steps {steps} are not a rollout's")
    xyz = Path(str(meta["xyz"])) if str(meta["xyz"]) else None
    if xyz is not None and (not xyz.is_absolute() or xyz == output or where in xyz.parents or xyz == where):
        raise InputError(f"{where / _META}: xyz {str(xyz)!r} is not a file outside the spool; the folder was changed")
    frames = where / _FRAMES
    if not frames.is_file():
        raise InputError(f"{given}: holds no {_FRAMES}; nothing to recover (remove the folder)")
    with open(frames, "rb") as fh:
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(
                    f"{given}: a rollout is still writing it (process {int(meta['pid'])} on {meta['host']}); wait "
                    "for it to end, or stop it (it then writes its file itself)"
                ) from None
            except OSError:
                pass  # no locks on this file system
        size = os.fstat(fh.fileno()).st_size
    count = min(size // (math.prod(shape) * 8), steps // every + 1)
    if count < 1:
        raise InputError(f"{given}: holds no whole frame; nothing to recover (remove the folder)")
    outcome = None
    if (where / _OUTCOME).is_file():
        outcome = _load_checked(where / _OUTCOME, _OUTCOME_KINDS, {"failed_starts": 1})
        if int(outcome["steps_done"]) // every + 1 != count:
            outcome = None  # (it cannot disagree with the frames; if it does, the frames win)
    if outcome is not None:
        failed = int(outcome["failed_step"])
        result = RolloutResult(
            traj=np.zeros((0, *shape)), steps_requested=steps, steps_done=int(outcome["steps_done"]),
            complete=bool(outcome["complete"]), failed_step=None if failed < 0 else failed,
            failed_starts=outcome["failed_starts"].astype(np.int64), reason=str(outcome["reason"]), every=every,
            interrupted=bool(outcome["interrupted"]),
        )  # fmt: skip
    else:
        result = cut_short(count, steps, every, shape, "was killed")
    return _write(where, output, xyz, result, count, replace=replace), result
