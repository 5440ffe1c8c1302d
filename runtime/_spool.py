"""A rollout's kept frames written to disk as they come (numpy only): memory no longer grows with its length, and
the frames already written survive an interrupt, or a kill, marked incomplete.

``e3traj rollout -o OUT.npz`` spools into the folder ``OUT.npz.partial/``: ``meta.npz`` (everything the rollout
file records except the frames, written before the first step) and ``frames.f64`` (the kept frames, float64
``(B, N, 3)`` each, appended in order and handed to the operating system at least every
:data:`FLUSH_SECONDS`). When the rollout ends (complete, stopped, interrupted or terminated) :meth:`Spool.finish`
writes ``OUT.npz`` (and the XYZ file) atomically, copying the frames in chunks, and removes the folder. After a
kill (SIGKILL, an out-of-memory kill, a node failure) the folder stays; :func:`recover` writes the whole frames it
holds as an interrupted rollout (``e3traj recover OUT.npz.partial``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import InputError, UsageError, first_line

__all__ = ["Spool", "recover", "partial_folder", "FLUSH_SECONDS"]

#: The longest the frames of a running rollout stay in the process before they reach the operating system.
FLUSH_SECONDS = 1.0
_META = "meta.npz"
_FRAMES = "frames.f64"
_BUFFER = 1 << 20


def partial_folder(output: str | os.PathLike) -> Path:
    """The spool folder of the rollout file ``output``: ``OUT.npz`` -> ``OUT.npz.partial``."""
    out = Path(output)
    return out.with_name(out.name + ".partial")


class Spool:
    """A :func:`~e3traj.runtime.rollout` sink that appends the kept frames to ``OUT.partial/frames.f64``.

    Args:
        output: the rollout file to write at the end; its spool folder must not exist (an unfinished run's frames
            are never overwritten: recover or remove them).
        shape: one frame's shape ``(B, N, 3)``.
        fields: the keyword arguments of :func:`~e3traj.runtime._rollout.write_rollout_file` but ``result``
            (``starts``, ``bundle_sha256``, ``source``, ...; ``extra`` arrays included), and ``steps_requested``,
            ``every``.
        xyz: also write this extended XYZ file at the end.
        replace: whether the outputs may replace existing files (``--force``).
    """

    def __init__(self, output, shape, fields: dict[str, Any], *, xyz=None, replace: bool = False):
        self.output, self.xyz, self.replace = Path(output), None if xyz is None else Path(xyz), bool(replace)
        self.shape = tuple(int(n) for n in shape)
        self.frame_bytes = int(np.prod(self.shape)) * 8
        self.folder = partial_folder(self.output)
        if os.path.lexists(self.folder):
            raise UsageError(
                f"{self.folder}: holds the frames of an earlier rollout to {self.output.name} that did not finish; "
                f"write them out with 'e3traj recover {self.folder}' or remove the folder"
            )
        os.mkdir(self.folder)
        meta = _flatten(fields)
        meta.update(
            shape=np.asarray(self.shape, dtype=np.int64),
            output=np.str_(self.output.name),
            xyz=np.str_("" if self.xyz is None else os.path.relpath(self.xyz, self.output.parent)),
            replace=np.bool_(self.replace),
        )
        with open(self.folder / (_META + ".tmp"), "wb") as fh:
            np.savez(fh, **meta)
        os.replace(self.folder / (_META + ".tmp"), self.folder / _META)
        self._fh = open(self.folder / _FRAMES, "wb", buffering=_BUFFER)  # noqa: SIM115 - closed by finish()
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

    def finish(self, result) -> list[Path]:
        """Write the rollout file (and XYZ) from ``result`` (its ``traj`` is ignored: the spooled frames are
        written) atomically, then remove the spool folder. Returns the files written."""
        self._fh.close()
        return _write(self.folder, result, self.count)

    def discard(self) -> None:
        """Remove the spool folder and its frames (the command failed for another reason than an interrupt)."""
        self._fh.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _flatten(fields: dict[str, Any]) -> dict[str, np.ndarray]:
    """``fields`` as arrays for ``meta.npz``; ``extra`` arrays under ``extra.NAME``."""
    out = {k: np.asarray(v) for k, v in fields.items() if k != "extra"}
    for k, v in dict(fields.get("extra") or {}).items():
        out[f"extra.{k}"] = np.asarray(v)
    return out


def _read_meta(folder: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(folder / _META, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise InputError(f"{folder}: no {_META}; pass the OUT.partial folder an 'e3traj rollout' left") from None
    except Exception as exc:  # zipfile/numpy raise many kinds
        raise InputError(f"{folder}/{_META}: could not read it ({first_line(exc)}); the folder was changed") from None


def _write(folder: Path, result, count: int) -> list[Path]:
    from ._io import atomic_outputs
    from ._rollout import write_rollout_file, write_xyz_file

    meta = _read_meta(folder)
    shape = tuple(int(n) for n in meta["shape"])
    output = folder.parent / str(meta["output"])
    outputs = [output] + ([folder.parent / str(meta["xyz"])] if str(meta["xyz"]) else [])
    traj = np.memmap(folder / _FRAMES, dtype=np.float64, mode="r", shape=(count, *shape))
    fields = {k: meta[k] for k in meta if k not in ("shape", "output", "xyz", "replace", "steps_requested", "every")}
    extra = {k.split(".", 1)[1]: fields.pop(k) for k in list(fields) if k.startswith("extra.")}
    with atomic_outputs(outputs, suffix=".tmp", replace=bool(meta["replace"])) as tmps:  # both files or neither
        write_rollout_file(
            tmps[0],
            dataclasses.replace(result, traj=traj),
            starts=fields.pop("starts"),
            **{k: v.item() if v.shape == () else v for k, v in fields.items()},
            extra=extra or None,
        )
        if len(outputs) > 1:
            write_xyz_file(tmps[1], traj, meta["starts"], every=int(meta["every"]))
    del traj  # the map closes before its folder goes
    shutil.rmtree(folder)
    return outputs


def recover(folder: str | os.PathLike) -> tuple[list[Path], Any]:
    """Write the rollout file of a spool folder a killed rollout left (its whole frames, ``complete=False``,
    ``interrupted=True``) and remove the folder. Returns ``(files written, RolloutResult)``."""
    from ._rollout import RolloutResult

    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        raise InputError(f"{folder}: not a folder; pass the OUT.partial folder an 'e3traj rollout' left")
    meta = _read_meta(folder)
    try:
        shape = tuple(int(n) for n in meta["shape"])
        every, steps = int(meta["every"]), int(meta["steps_requested"])
        ok = len(shape) == 3 and min(shape) >= 1 and every >= 1 and steps >= 1
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{folder}/{_META}: does not describe a rollout (shape, every, steps); the folder was changed")
    size = (folder / _FRAMES).stat().st_size if (folder / _FRAMES).is_file() else 0
    count = min(size // (int(np.prod(shape)) * 8), steps // every + 1)
    if count < 1:
        raise InputError(f"{folder}: holds no whole frame; nothing to recover (remove the folder)")
    done = (count - 1) * every
    result = RolloutResult(
        traj=np.zeros((0, *shape)), steps_requested=steps, steps_done=done, complete=done == steps, every=every,
        interrupted=done != steps, reason="" if done == steps else "was killed",
    )  # fmt: skip
    return _write(folder, result, count), result
