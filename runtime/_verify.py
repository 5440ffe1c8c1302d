"""Read a bundle once and verify it before any model is parsed: the bytes hashed are the bytes used.

A folder's files are read once each, an archive is read in memory (:mod:`e3traj.runtime._tar`); the manifest is
checked (:mod:`e3traj.runtime._manifest`), then every file's size and sha256, the ONNX bytes' external data and
versions, and the installed onnxruntime. ``example.npz`` is parsed from its verified bytes with caps.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._data import _check_member, _read_array
from ._errors import InputError, first_line
from ._manifest import _MAX_MANIFEST_BYTES, MANIFEST_NAME, _check_manifest, _parse_manifest
from ._onnx_wire import _OnnxScan, _ProtoError, scan_onnx
from ._tar import MAX_ARCHIVE_BYTES, read_archive

__all__ = ["verify_bundle", "MAX_FILE_BYTES", "MAX_EXAMPLE_ARRAYS", "MAX_EXAMPLE_ARRAY_BYTES", "MAX_EXAMPLE_BYTES"]

#: Largest bundle file a host reads (model.onnx, example.npz; a bundle's files are a few MB).
MAX_FILE_BYTES = MAX_ARCHIVE_BYTES
#: example.npz: at most this many arrays, each and all together at most this many bytes once loaded.
MAX_EXAMPLE_ARRAYS = 8
MAX_EXAMPLE_ARRAY_BYTES = 16 << 20
MAX_EXAMPLE_BYTES = 64 << 20


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _read_regular(path: Path, where: str, max_bytes: int, *, what: str = "file") -> bytes:
    """Read a regular file once (no symlink, no FIFO or device, at most ``max_bytes``) and return its bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise InputError(f"{where}: listed in {MANIFEST_NAME} but missing; re-export or re-copy the bundle") from None
    except OSError as exc:
        if os.path.islink(path):
            raise InputError(
                f"{where}: is a symlink; a bundle holds only regular files, re-export the bundle"
            ) from None
        raise InputError(f"{where}: cannot read it ({exc.strerror}); check its permissions") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{where}: is not a regular file; re-export the bundle")
        if st.st_size > max_bytes:
            raise InputError(f"{where}: {st.st_size} bytes, over the {max_bytes}-byte limit for a bundle {what}")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"{where}: over the {max_bytes}-byte limit for a bundle {what}; re-export the bundle")
    return data


def _read_manifest(root: Path, label: str) -> tuple[dict, str, bytes]:
    mpath = root / MANIFEST_NAME
    where = f"{label}/{MANIFEST_NAME}"
    try:
        st = mpath.lstat()
    except FileNotFoundError:
        raise InputError(
            f"{where}: not found; pass a bundle folder made by 'e3traj export' (or a .tar.gz from 'e3traj pack')"
        ) from None
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{where}: is a symlink; a bundle holds only regular files, re-export the bundle")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{where}: is not a regular file; re-export the bundle")
    raw = _read_regular(mpath, where, _MAX_MANIFEST_BYTES, what="manifest")
    return (*_parse_manifest(raw, where), raw)


def _check_listing(root: Path, manifest: dict, label: str) -> None:
    """The folder holds exactly the listed files: no extra file, symlink, subfolder or special file."""
    files = manifest["files"]
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"{label}: cannot list the bundle folder ({exc.strerror}); check its permissions") from None
    for entry in entries:
        where = f"{label}/{entry.name}"
        if entry.is_symlink():
            raise InputError(
                f"{where}: is a symlink; a bundle holds only regular files, re-export or re-pack the bundle"
            )
        if entry.is_dir(follow_symlinks=False):
            raise InputError(f"{where}: is a subfolder; a bundle holds none, remove it or re-export the bundle")
        if not entry.is_file(follow_symlinks=False):
            raise InputError(f"{where}: is not a regular file; remove it from the bundle folder")
        if entry.name != MANIFEST_NAME and entry.name not in files:
            raise InputError(
                f"{where}: file not listed in {MANIFEST_NAME}; remove it (a bundle holds only listed files)"
            )


def _check_bytes(data, entry: dict, where: str) -> None:
    """Size and sha256 of the bytes that will be used, against the manifest's entry."""
    if len(data) != entry["size"]:
        raise InputError(
            f"{where}: size {len(data)} bytes, the manifest says {entry['size']}; the file is truncated or "
            "modified, re-copy the bundle"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise InputError(
            f"{where}: sha256 {digest[:12]}... does not match the manifest's {entry['sha256'][:12]}...; "
            "the file is corrupt or modified, re-copy the bundle"
        )


def _check_onnx_bytes(data: bytes, onnx: dict, where: str, field: str = "onnx") -> _OnnxScan:
    """Parse ``data`` as ONNX (no external data) and compare its IR version and opset with the manifest's entry
    ``onnx`` (the ``field`` named in messages: ``onnx`` or ``onnx.single_frame``)."""
    try:
        scan = scan_onnx(data)
    except _ProtoError as exc:
        raise InputError(f"{where}: not a valid ONNX model ({exc}); re-export the bundle") from None
    if not scan.has_graph or scan.ir_version is None:
        raise InputError(f"{where}: not a valid ONNX model (no graph or IR version); re-export the bundle")
    if scan.external is not None:
        raise InputError(
            f"{where}: tensor {scan.external!r} is stored as external data, which bundles forbid; "
            "re-export with the weights inside model.onnx"
        )
    if "ir_version" in onnx and onnx["ir_version"] != scan.ir_version:
        raise InputError(
            f"{where}: IR version {scan.ir_version} but the manifest says {field}.ir_version {onnx['ir_version']}; "
            "re-export the bundle"
        )
    opset = scan.opsets.get("", scan.opsets.get("ai.onnx"))
    if "opset" in onnx and opset is not None and onnx["opset"] != opset:
        raise InputError(
            f"{where}: opset {opset} but the manifest says {field}.opset {onnx['opset']}; re-export the bundle"
        )
    return scan


def _check_runtime(manifest: dict, where: str) -> None:
    need = manifest["onnx"].get("min_onnxruntime")
    if need is None:
        return
    have = _ort_version()
    if _version_tuple(have) < _version_tuple(str(need)):
        raise InputError(
            f"{where}: needs onnxruntime >= {need}, this host has {have}; upgrade it (pip install -U onnxruntime)"
        )


@dataclass(frozen=True)
class _Verified:
    """A bundle read once and verified: the manifest, its sha256, and the verified bytes of the files a host parses.

    ``root`` is the folder for a folder bundle and ``None`` for an archive (nothing of it is written to disk).
    """

    manifest: dict
    sha256: str
    label: str
    files: dict[str, Any]
    root: Path | None


def _onnx_entries(manifest: dict) -> list[tuple[str, dict]]:
    """The ONNX graphs a host runs, as (manifest field, entry): the batched graph, and the single-frame graph
    where the bundle has one (each entry names its file and may record its IR version and opset)."""
    single = manifest["onnx"].get("single_frame")
    return [("onnx", manifest["onnx"])] + ([("onnx.single_frame", single)] if single else [])


def _parsed_files(manifest: dict) -> tuple[str, ...]:
    return (*(entry["file"] for _, entry in _onnx_entries(manifest)), manifest["example"]["file"])


def _finish(manifest: dict, digest: str, label: str, files: dict[str, Any], root: Path | None) -> _Verified:
    for field, entry in _onnx_entries(manifest):
        _check_onnx_bytes(files[entry["file"]], entry, f"{label}/{entry['file']}", field)
    _check_runtime(manifest, f"{label}/{MANIFEST_NAME}")
    return _Verified(manifest, digest, label, files, root)


def _verify_dir(root: Path, label: str, *, keep_all: bool = False) -> _Verified:
    """Verify a bundle folder, reading every file once: what is hashed is what is parsed.

    ``keep_all``: keep the bytes of every file, the manifest's included (``pack`` writes the archive from them).
    """
    if not root.is_dir():
        raise InputError(f"{label}: not a folder; pass a bundle folder or a .tar.gz made by 'e3traj pack'")
    manifest, digest, raw = _read_manifest(root, label)
    _check_manifest(manifest, f"{label}/{MANIFEST_NAME}")
    _check_listing(root, manifest, label)
    keep = set(manifest["files"]) if keep_all else set(_parsed_files(manifest))
    files: dict[str, Any] = {MANIFEST_NAME: raw} if keep_all else {}
    for name, entry in sorted(manifest["files"].items()):
        where = f"{label}/{name}"
        data = _read_regular(root / name, where, MAX_FILE_BYTES)
        _check_bytes(data, entry, where)
        if name in keep:
            files[name] = data
    return _finish(manifest, digest, label, files, root)


def _verify_archive(path: Path, archive=None) -> _Verified:
    """Verify a ``.tar.gz`` bundle in memory: members against the manifest's names, sizes and hashes.

    ``archive``: the :class:`~e3traj.runtime._tar.Archive` already read from ``path`` (read it here if None).
    """
    archive = read_archive(path) if archive is None else archive
    label = f"{path}:{archive.top}"
    where = f"{label}/{MANIFEST_NAME}"
    if MANIFEST_NAME not in archive.files:
        raise InputError(f"{where}: not found in the archive; pack a bundle folder with 'e3traj pack'")
    manifest, digest = _parse_manifest(archive.files[MANIFEST_NAME], where)
    _check_manifest(manifest, where)
    listed = set(manifest["files"])
    for name in sorted(set(archive.files) - listed - {MANIFEST_NAME}):
        raise InputError(f"{label}/{name}: file not listed in {MANIFEST_NAME}; re-pack the bundle with 'e3traj pack'")
    for name, entry in sorted(manifest["files"].items()):
        if name not in archive.files:
            raise InputError(f"{label}/{name}: listed in {MANIFEST_NAME} but missing; re-pack the bundle")
        _check_bytes(archive.files[name], entry, f"{label}/{name}")
    keep = _parsed_files(manifest)
    files = {name: archive.files[name] for name in keep}
    return _finish(manifest, digest, label, files, None)


def _is_archive(p: Path) -> bool:
    if not p.is_file():
        return False
    with open(p, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _missing_or_wrong(p: Path) -> None:
    if not p.exists() and not p.is_symlink():
        raise InputError(f"{p}: not found; pass a bundle folder (with manifest.json) or a .tar.gz from 'e3traj pack'")
    if p.exists() and not p.is_dir() and not p.is_file():
        raise InputError(f"{p}: is not a folder or a regular file; pass a bundle folder or a .tar.gz")
    if p.is_file() and not _is_archive(p):
        raise InputError(
            f"{p}: is neither a bundle folder nor a .tar.gz archive; pass the folder that holds manifest.json"
        )


def _read_bundle(path: str | os.PathLike) -> _Verified:
    p = Path(path)
    _missing_or_wrong(p)
    return _verify_dir(p, str(p)) if p.is_dir() else _verify_archive(p)


def verify_bundle(path: str | os.PathLike) -> dict:
    """Check a bundle before any model is parsed and return its manifest.

    Checks the manifest (format, version, required keys), that the folder holds exactly the listed files (no
    extra file, symlink or subfolder) with the listed sizes and sha256, that ``model.onnx`` keeps no tensor in
    external data, and that the installed onnxruntime is at least ``onnx.min_onnxruntime``. Every file is read
    once and the bytes that were hashed are the bytes that are checked. ``path`` may be a folder or a
    ``.tar.gz`` made by :func:`~e3traj.runtime.pack_bundle` (read in memory; nothing is extracted).

    Raises:
        InputError: one line naming the file, what is wrong and what to do.
    """
    return _read_bundle(path).manifest


_EXAMPLE_FIX = "re-export the bundle"


def _load_example(data, where: str) -> dict[str, np.ndarray]:
    """Parse ``example.npz`` from its verified bytes: numeric ``.npy`` members only, counts and sizes capped."""
    arrays: dict[str, np.ndarray] = {}
    total = 0
    try:
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_EXAMPLE_ARRAYS:
                raise InputError(f"{where}: {len(infos)} members, over the limit of {MAX_EXAMPLE_ARRAYS}; re-export")
            for info in infos:
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                at = f"{where}[{key}]"
                if not info.filename.endswith(".npy") or info.is_dir():
                    raise InputError(f"{at}: is not a .npy array; re-export the bundle")
                _check_member(info, at, _EXAMPLE_FIX)
                # the cap of each array: its own, and what the arrays before it left of the total
                cap = min(MAX_EXAMPLE_ARRAY_BYTES, MAX_EXAMPLE_BYTES - total)
                with zf.open(info) as fh:
                    arrays[key] = _read_array(fh, at, cap, _EXAMPLE_FIX)
                total += arrays[key].nbytes
    except InputError:
        raise
    except Exception as exc:  # zipfile and numpy raise many kinds (BadZipFile, NotImplementedError, ...)
        raise InputError(f"{where}: cannot read the example arrays ({first_line(exc)}); re-export the bundle") from None
    return arrays
