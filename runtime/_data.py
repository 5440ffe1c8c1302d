"""Trajectory files: loading (read once, hashed and parsed from the same bytes), validation, saving, the split."""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._contract import MAX_BEADS, MIN_BEADS, N_BEADS
from ._errors import InputError, first_line
from ._io import atomic_output

__all__ = [
    "N_BEADS",
    "check_beads",
    "MAX_TRAJECTORY_BYTES",
    "load_trajectory",
    "read_trajectory",
    "save_trajectory",
    "validate_frames",
    "lift_to_3d",
    "frames_before",
    "Split",
    "split_pairs",
    "frames_sha256",
]


#: Largest array a trajectory file may declare (checked from the header, before anything is read).
MAX_TRAJECTORY_BYTES = 1 << 30


#: What to do about a bad trajectory file (the default ``fix`` of the shared .npy and zip-member checks).
_TRAJ_FIX = "save frames with numpy.save or numpy.savez"


def _read_npy_header(fh, name: str, fix: str = _TRAJ_FIX) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except Exception as exc:  # ValueError, EOFError, and the tokenizer's own errors for a malformed header
        raise InputError(f"{name}: not a valid .npy array ({first_line(exc)}); {fix}") from None
    return shape, fortran, dtype


def _check_header(name: str, shape: tuple[int, ...], dtype: np.dtype, max_bytes: int, fix: str = _TRAJ_FIX) -> int:
    if dtype.hasobject:
        raise InputError(f"{name}: holds Python objects (dtype {dtype}, not numeric), which are never unpickled; {fix}")
    if dtype.kind not in "fiu":
        raise InputError(f"{name}: dtype {dtype} is not numeric; {fix}")
    if any(int(d) < 0 for d in shape):
        raise InputError(f"{name}: header declares the negative shape {tuple(shape)}; {fix}")
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize  # Python ints: no overflow for absurd shapes
    if nbytes > max_bytes:
        raise InputError(
            f"{name}: header declares shape {tuple(shape)} ({nbytes} bytes), over the {max_bytes}-byte limit; {fix}"
        )
    return nbytes


def _read_array(fh, name: str, max_bytes: int, fix: str = _TRAJ_FIX) -> np.ndarray:
    """One ``.npy`` stream (trajectories and ``example.npz`` alike): the header is checked (numeric, no negative
    dimension, at most ``max_bytes``) before its data is read, and the data is read exactly."""
    shape, fortran, dtype = _read_npy_header(fh, name, fix)
    nbytes = _check_header(name, shape, dtype, max_bytes, fix)
    raw = fh.read(nbytes + 1)
    if len(raw) != nbytes:
        raise InputError(f"{name}: holds {len(raw)} data bytes, its header says {nbytes}; the file is truncated")
    arr = np.frombuffer(raw, dtype=dtype)
    return np.array(arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape))


def load_trajectory(
    path: str | os.PathLike,
    *,
    min_frames: int = 1,
    max_bytes: int = MAX_TRAJECTORY_BYTES,
    n_beads: int | None = None,
) -> np.ndarray:
    """Load and validate a trajectory file.

    Accepts the dmol-book format (``.npz`` with key ``arr``), an ``.npz`` with a single array, an ``.npy``, or
    extended XYZ (what ``rollout --xyz`` writes, ASE, OVITO and VMD read: one species, no periodic cell; see
    :mod:`e3traj.runtime._xyz`), or, with the ``ase`` extra, any format ASE reads (:mod:`e3traj.runtime._ase_io`).
    2D coordinates are lifted to 3D with z = 0 as in the chapter. Nothing is unpickled. ``n_beads``: the N
    the caller's model expects (None: any N from ``MIN_BEADS`` to ``MAX_BEADS``).

    Shapes: file ``(T, N, 2|3)`` or one frame ``(N, 2|3)`` -> returned ``(T, N, 3)`` float64.

    Raises:
        InputError: one line naming the file, what was found and what is expected.
    """
    return read_trajectory(path, min_frames=min_frames, max_bytes=max_bytes, n_beads=n_beads)[0]


def read_trajectory(
    path: str | os.PathLike,
    *,
    min_frames: int = 1,
    max_bytes: int = MAX_TRAJECTORY_BYTES,
    n_beads: int | None = None,
) -> tuple[np.ndarray, str]:
    """:func:`load_trajectory` and the sha256 of the file: read once, hashed and parsed from the same bytes.

    Shapes: returned frames ``(T, N, 3)`` float64.
    """
    import hashlib

    from ._xyz import looks_like_xyz, parse_xyz

    name = str(path)
    data = _read_file(Path(path), name, max_bytes)
    if data.startswith(b"PK"):
        arr = _load_npz(data, name, max_bytes)
    elif data.startswith(b"\x93NUMPY"):
        arr = _read_array(io.BytesIO(data), name, max_bytes)
    elif looks_like_xyz(data):
        arr = parse_xyz(data, name)
    else:  # any other format ASE reads, with the ase extra (a one-line refusal naming it without)
        from ._ase_io import parse_with_ase

        arr = parse_with_ase(data, name)
    return validate_frames(arr, name, min_frames=min_frames, n_beads=n_beads), hashlib.sha256(data).hexdigest()


def _read_file(p: Path, name: str, max_bytes: int) -> bytes:
    if not p.exists():
        raise InputError(f"{name}: file not found; pass a trajectory .npz/.npy (or --data sim / --data dmol)")
    if p.is_dir():
        raise InputError(f"{name}: is a folder; pass a trajectory .npz/.npy file")
    if not p.is_file():
        raise InputError(f"{name}: is not a regular file; pass a trajectory .npz/.npy file")
    try:
        with open(p, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            limit = max_bytes + (1 << 20)  # the array plus room for headers
            if size > limit:
                raise InputError(f"{name}: {size} bytes, over the {limit}-byte limit; split the trajectory")
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"{name}: cannot read it ({exc.strerror}); check the path and its permissions") from None
    if not data:
        raise InputError(f"{name}: file is empty; expected an .npz with key 'arr' of shape (T, N, 2|3)")
    return data


#: Most members an .npz trajectory may hold.
_MAX_NPZ_MEMBERS = 64


def _check_member(info: zipfile.ZipInfo, name: str, fix: str = _TRAJ_FIX) -> None:
    """Refuse a zip member numpy's reader cannot or should not read: encrypted, or compressed other than deflate."""
    if info.flag_bits & 0x41:  # bit 0: encrypted, bit 6: strong encryption
        raise InputError(f"{name}: is encrypted; {fix}")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise InputError(f"{name}: compression method {info.compress_type} is not supported; {fix}")


def _load_npz(data: bytes, name: str, max_bytes: int) -> np.ndarray:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > _MAX_NPZ_MEMBERS:
                raise InputError(f"{name}: {len(infos)} members in the .npz; save the trajectory alone under 'arr'")
            members = {i.filename[: -len(".npy")]: i for i in infos if i.filename.endswith(".npy")}
            if not members:
                raise InputError(f"{name}: the .npz holds no arrays; expected key 'arr' of shape (T, N, 2|3)")
            if "arr" in members:
                key = "arr"
            elif len(members) == 1:
                key = next(iter(members))
            else:
                raise InputError(f"{name}: no key 'arr' among {sorted(members)}; save the trajectory under key 'arr'")
            info = members[key]
            _check_member(info, f"{name}[{key}]")
            with zf.open(info) as fh:
                return _read_array(fh, f"{name}[{key}]", max_bytes)
    except InputError:
        raise
    except Exception as exc:  # zipfile raises BadZipFile, NotImplementedError, RuntimeError, zlib.error, ...
        raise InputError(
            f"{name}: could not read the .npz ({first_line(exc)}); the file may be truncated or corrupt"
        ) from None


def frames_before(frames: np.ndarray, idx, h: int) -> np.ndarray | None:
    """The ``h`` frames before each index, oldest first (what a step with history ``h`` needs); None when h = 0.

    Shapes: ``frames`` ``(T, N, 3)``, ``idx`` ``(n,)`` with every index >= h -> ``(n, h, N, 3)``.
    """
    if not h:
        return None
    return np.asarray(frames)[np.asarray(idx, dtype=np.int64)[:, None] + np.arange(-int(h), 0)[None, :]]


def lift_to_3d(frames: np.ndarray) -> np.ndarray:
    """Planar frames get z = 0 (as in the chapter); 3D frames are returned as they are.

    Shapes: ``(..., N, 2|3)`` -> ``(..., N, 3)``.
    """
    if frames.shape[-1] == 2:
        return np.concatenate([frames, np.zeros(frames.shape[:-1] + (1,), dtype=frames.dtype)], axis=-1)
    return frames


def validate_frames(arr, name: str = "frames", *, min_frames: int = 1, n_beads: int | None = None) -> np.ndarray:
    """Validate positions and return them as ``(T, N, 3)`` float64 (2D lifted with z = 0).

    ``n_beads``: the N a bundle or checkpoint expects (None: any N from ``MIN_BEADS`` to ``MAX_BEADS``).
    Shapes: ``(T, N, 2|3)`` or ``(N, 2|3)`` -> ``(T, N, 3)``.
    """
    arr = np.asarray(arr)
    if arr.dtype.hasobject or arr.dtype.kind not in "fiu":
        raise InputError(f"{name}: dtype {arr.dtype} is not numeric; expected float positions of shape (T, N, 2|3)")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(
            f"{name}: array has rank {arr.ndim} (shape {arr.shape}); expected (T, N, 2|3) or one frame (N, 2|3)"
        )
    check_beads(arr.shape[1], name, n_beads)
    if arr.shape[2] not in (2, 3):
        raise InputError(
            f"{name}: {arr.shape[2]} coordinates per bead (shape {arr.shape}); expected 2 (lifted to z = 0) or 3"
        )
    if arr.shape[0] < min_frames:
        raise InputError(f"{name}: {arr.shape[0]} frame(s); at least {min_frames} are needed here")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise InputError(
            f"{name}: non-finite value (NaN or Inf) at frame {bad[0]}, bead {bad[1]}; clean or cut the trajectory"
        )
    arr = lift_to_3d(arr)
    return np.ascontiguousarray(arr)


def check_beads(n: int, name: str, expected: int | None = None) -> int:
    """Refuse a bead count outside ``MIN_BEADS..MAX_BEADS`` or other than ``expected`` (the bundle's N), in one line."""
    if expected is not None and n != expected:
        raise InputError(f"{name}: {n} beads per frame; the model expects {expected}; pass a trajectory of {expected}")
    if not MIN_BEADS <= n <= MAX_BEADS:
        raise InputError(f"{name}: {n} beads per frame; a chain needs {MIN_BEADS} to {MAX_BEADS} beads")
    return int(n)


def save_trajectory(path: str | os.PathLike, frames: np.ndarray, *, replace: bool = True, **extra: np.ndarray) -> Path:
    """Write frames in the dmol-book format (``.npz``, key ``arr``) atomically; extra arrays go beside it.

    The file's bytes depend on the arrays alone (members stored with a fixed 1980-01-01 timestamp, as numpy 2.4's
    ``savez`` does too; written here so it does not depend on the numpy version), so the same frames give the same
    file. ``replace=False``
    refuses a file that exists at the final rename (see :mod:`e3traj.runtime._io`).
    """
    out = Path(path)
    arrays = {"arr": np.asarray(frames), **{k: np.asarray(v) for k, v in extra.items()}}
    with atomic_output(out, suffix=".npz", replace=replace) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for key, arr in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)
    return out


@dataclass(frozen=True)
class Split:
    """(frame, next frame) pairs split into training and validation, without shuffling: the chapter's 80:20 of
    one trajectory, or of each of several trajectories held end to end in ``frames``.

    ``segments``: ``(start, first validation pair, stop)`` per trajectory (``frames[start:stop]``); empty for
    one trajectory, whose first ``n_train`` pairs train. Pairs and history windows never cross a trajectory's
    boundary: :meth:`train_index` and :meth:`val_index` give the pairs ``t -> t + 1`` whose ``h`` frames before
    lie in the same trajectory. ``n_train`` is the number of training pairs in every case.

    Shapes: ``train_x``, ``train_y`` ``(n_train, N, 3)``; ``val_x``, ``val_y`` ``(n_val, N, 3)``;
    ``val_prev`` the frame before each validation input whose trajectory has one (for constant velocity).
    """

    frames: np.ndarray
    n_train: int
    segments: tuple[tuple[int, int, int], ...] = ()

    @property
    def parts(self) -> tuple[tuple[int, int, int], ...]:
        """``(start, first validation pair, stop)`` per trajectory (one for a single trajectory)."""
        return self.segments or ((0, self.n_train, len(self.frames)),)

    def train_index(self, h: int = 0) -> np.ndarray:
        """Training pairs t (t -> t + 1) with ``h`` frames of their own trajectory before them."""
        return np.concatenate([np.arange(a + h, v, dtype=np.int64) for a, v, _ in self.parts])

    def val_index(self, h: int = 0) -> np.ndarray:
        """Validation pairs t with ``h`` frames of their own trajectory before them."""
        return np.concatenate([np.arange(max(v, a + h), b - 1, dtype=np.int64) for a, v, b in self.parts])

    @property
    def history_room(self) -> int:
        """The longest history window validation can use: for one trajectory, or one split 80:20, the frames
        before its first validation pair (every pair keeps it); a held-out trajectory loses its first h pairs and
        must keep one."""
        if not self.segments:
            return self.parts[0][1]
        return min((v - a) if v > a else (b - a - 2) for a, v, b in self.parts if b - 1 > v)

    @property
    def train_x(self) -> np.ndarray:
        return self.frames[self.train_index()]

    @property
    def train_y(self) -> np.ndarray:
        return self.frames[self.train_index() + 1]

    @property
    def val_x(self) -> np.ndarray:
        return self.frames[self.val_index()]

    @property
    def val_y(self) -> np.ndarray:
        return self.frames[self.val_index() + 1]

    @property
    def val_prev(self) -> np.ndarray:
        return self.frames[self.val_index(1) - 1]

    @property
    def val_start(self) -> int:
        """Index (in ``frames``) of the first validation input frame of a single trajectory."""
        return self.parts[0][1]


def split_pairs(
    frames: np.ndarray,
    train_fraction: float = 0.8,
    *,
    segments: Sequence[tuple[int, int]] | None = None,
    held_out: Sequence[int] = (),
) -> Split:
    """Split frames as the chapter does: features = frames[:-1], labels = frames[1:], first 80% of pairs train.

    For 2048 frames: 2047 pairs, 1637 for training, 410 for validation. With ``segments`` (``(start, stop)`` of
    each trajectory in ``frames``) every trajectory is split the same way, the last 20% of each validating; with
    ``held_out`` (indices of segments) those trajectories validate whole and the others train whole.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction!r}")
    frames = np.asarray(frames)
    if segments is None:
        n_pairs = len(frames) - 1
        n_train = int(train_fraction * n_pairs)
        if n_train < 1 or n_pairs - n_train < 1:
            raise InputError(
                f"trajectory: {len(frames)} frames give {n_pairs} pairs, too few to split {train_fraction:.0%}:rest"
            )
        return Split(frames=frames, n_train=n_train)
    held = set(int(i) for i in held_out)
    if held and held >= set(range(len(segments))):
        raise InputError("every trajectory is held out for validation; pass at least one to train on")
    parts = []
    for i, (a, b) in enumerate(segments):
        n_pairs = b - a - 1
        n_train = 0 if i in held else n_pairs if held else int(train_fraction * n_pairs)
        if n_pairs < 1 or (not held and (n_train < 1 or n_pairs - n_train < 1)):
            raise InputError(
                f"trajectory {i + 1}: {b - a} frames give {n_pairs} pairs, too few to split {train_fraction:.0%}:rest"
            )
        parts.append((int(a), int(a) + n_train, int(b)))
    return Split(frames=frames, n_train=sum(v - a for a, v, _ in parts), segments=tuple(parts))


def frames_sha256(frames: np.ndarray) -> str:
    """sha256 of the canonical float64 C-order bytes of a ``(T, N, 3)`` array."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(frames, dtype=np.float64).tobytes()).hexdigest()
