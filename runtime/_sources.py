"""Data sources for ``--data``: ``sim`` (the embedded simulator), ``dmol`` (the chapter's data, checked against its
sha256) or a trajectory file."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._contract import DEFAULT_N_BEADS
from ._data import frames_sha256, read_trajectory, validate_frames
from ._errors import InputError, UsageError, first_line
from ._io import atomic_output, sha256_file
from ._simulate import simulate

__all__ = ["DMOL_URL", "DMOL_SHA256", "dmol_path", "DataSource", "resolve_data"]

#: The dmol-book chapter's trajectory (2048 frames, (2048, 12, 2) float64, key ``arr``).
DMOL_URL = "https://github.com/whitead/dmol-book/raw/main/data/paths.npz"


DMOL_SHA256 = "502d6085c40c3e5a0edaad076a54f418d12cf13a4eb00387fdba30de9b7aec3e"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "e3traj"


def _candidates() -> list[Path]:
    out = []
    env = os.environ.get("E3TRAJ_DATA")
    if env:
        e = Path(env)
        out.append(e / "paths.npz" if e.is_dir() else e)
    out.append(_cache_dir() / "paths.npz")
    # a source checkout keeps the team's shared copy beside the project root
    root = Path(__file__).resolve().parents[1]
    out.append(root.parent / "shared" / "data" / "paths.npz")
    out.append(Path.cwd().parent / "shared" / "data" / "paths.npz")
    return out


def dmol_path(*, download: bool = True, timeout: float = 30.0) -> Path:
    """Return a verified local copy of the chapter's ``paths.npz``, downloading it to the cache if needed.

    Looks in ``$E3TRAJ_DATA`` (a file or a folder), the user cache (``~/.cache/e3traj``), and the shared data
    folder beside a source checkout; every copy is checked against :data:`DMOL_SHA256`.

    Raises:
        InputError: a copy with the wrong checksum, or no copy and no network (says where to put the file).
    """
    for cand in _candidates():
        if cand.is_file():
            digest = sha256_file(cand)
            if digest != DMOL_SHA256:
                raise InputError(
                    f"{cand}: sha256 {digest[:12]}... is not the chapter's {DMOL_SHA256[:12]}...; "
                    "delete it or fix E3TRAJ_DATA"
                )
            return cand
    target = _cache_dir() / "paths.npz"
    if not download:
        raise InputError(f"{target}: the chapter's data is not here; download {DMOL_URL} there or set E3TRAJ_DATA")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(DMOL_URL, timeout=timeout) as resp, atomic_output(target, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                while block := resp.read(1 << 16):
                    fh.write(block)
            digest = sha256_file(tmp)
            if digest != DMOL_SHA256:
                raise InputError(
                    f"{DMOL_URL}: downloaded file has sha256 {digest[:12]}..., expected {DMOL_SHA256[:12]}..."
                )
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise InputError(
            f"{target}: cannot download the chapter's data (offline? {first_line(exc)}); "
            f"put paths.npz (sha256 {DMOL_SHA256[:12]}...) there, or set E3TRAJ_DATA=/path/to/paths.npz"
        ) from None
    return target


@dataclass(frozen=True)
class DataSource:
    """A loaded trajectory and where it came from.

    ``sha256`` is the digest of the canonical array (float64, C order, shape ``(T, 12, 3)``), so the same
    frames give the same digest whichever file format carried them; ``file_sha256`` is the file's own.
    """

    frames: np.ndarray
    source: str
    sha256: str
    path: str | None = None
    file_sha256: str | None = None
    #: several trajectories end to end in ``frames``: ``(start, stop)`` of each, those held out for validation
    #: (their indices), and each one's provenance (``source``, ``path``, ``sha256``, ``file_sha256``, ``frames``)
    segments: tuple[tuple[int, int], ...] | None = None
    held_out: tuple[int, ...] = ()
    parts: tuple[dict, ...] = ()

    def split(self, train_fraction: float = 0.8):
        """The (frame, next frame) pairs split for training (see :func:`~e3traj.runtime.split_pairs`): 80:20 of
        each trajectory, or the held-out trajectories validating whole. Pairs never cross a trajectory's end."""
        from ._data import split_pairs

        return split_pairs(self.frames, train_fraction, segments=self.segments, held_out=self.held_out)


def resolve_many(
    specs: Sequence[str], *, val_specs: Sequence[str] = (), n_beads: int | None = None, min_frames: int = 3
) -> DataSource:
    """Several ``--data`` (and ``--val-data``) trajectories as one source whose pairs never cross a file boundary.

    One spec and no ``val_specs`` is :func:`resolve_data` itself (the same source string and digests). Every
    trajectory must hold the same beads per frame (the first one's, or ``n_beads``); ``sha256`` covers the
    frames and the boundaries, ``parts`` records each file's digests. Shapes: frames ``(sum T_i, N, 3)``.
    """
    specs, val_specs = list(specs), list(val_specs)
    if not specs:
        raise UsageError("--data: pass at least one trajectory")
    if len(specs) == 1 and not val_specs:
        return resolve_data(specs[0], n_beads=n_beads, min_frames=min_frames)
    import hashlib

    loaded, seen = [], {}
    digest = hashlib.sha256()  # the frames, the files' boundaries and which ones validate
    for i, spec in enumerate(specs + val_specs):
        d = resolve_data(spec, n_beads=n_beads, min_frames=min_frames)
        if d.sha256 in seen:
            raise InputError(f"{d.path or d.source}: the same frames as {seen[d.sha256]}; pass each trajectory once")
        seen[d.sha256] = d.path or d.source
        n_beads = d.frames.shape[1] if n_beads is None else n_beads
        digest.update(f"{'val' if i >= len(specs) else 'train'}:{len(d.frames)}:{d.sha256};".encode())
        loaded.append(d)
    bounds = np.cumsum([0] + [len(d.frames) for d in loaded])
    segments = tuple((int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]))
    frames = np.concatenate([d.frames for d in loaded])
    parts = tuple(
        {"source": d.source, "path": d.path, "sha256": d.sha256, "file_sha256": d.file_sha256, "frames": len(d.frames)}
        for d in loaded
    )
    names = "+".join(d.path or d.source for d in loaded[: len(specs)])
    held = tuple(range(len(specs), len(loaded)))
    source = names + (f" (validation: {'+'.join(d.path or d.source for d in loaded[len(specs) :])})" if held else "")
    return DataSource(frames, source, digest.hexdigest(), segments=segments, held_out=held, parts=parts)


def resolve_data(
    spec: str, *, sim_frames: int = 2048, sim_seed: int = 0, min_frames: int = 3, n_beads: int | None = None
) -> DataSource:
    """Turn ``--data`` into frames: ``sim`` (the embedded simulator), ``dmol`` (the chapter's data) or a path.

    ``n_beads``: the N the caller's model expects: ``sim`` simulates that many beads (default 12), a file or
    ``dmol`` (12 beads) with another N is refused in one line.
    Shapes: returns frames ``(T, N, 3)`` float64.
    """
    if spec == "sim":
        n = DEFAULT_N_BEADS if n_beads is None else int(n_beads)
        xy = simulate(frames=sim_frames, seed=sim_seed, n_beads=n)
        frames = validate_frames(xy, "sim", min_frames=min_frames)
        tag = "" if n == DEFAULT_N_BEADS else f",beads={n}"  # the 12-bead source string is unchanged
        return DataSource(frames, f"sim(frames={sim_frames},seed={sim_seed}{tag})", frames_sha256(frames))
    if spec == "dmol":
        path = dmol_path()
        frames, digest = read_trajectory(path, min_frames=min_frames, n_beads=n_beads)  # parsed from the bytes hashed
        if digest != DMOL_SHA256:
            raise InputError(
                f"{path}: sha256 {digest[:12]}... is not the chapter's {DMOL_SHA256[:12]}...; re-download it"
            )
        return DataSource(frames, "dmol", frames_sha256(frames), str(path), DMOL_SHA256)
    frames, file_sha256 = read_trajectory(spec, min_frames=min_frames, n_beads=n_beads)  # hashed, parsed: same bytes
    return DataSource(frames, "file", frames_sha256(frames), str(spec), file_sha256)
