"""Bundles: write the manifest (export side), verify every byte before parsing a model, and run it (host side).

Only numpy and onnxruntime are used here; the ONNX file is inspected by walking its protobuf wire format,
never with the ``onnx`` package.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import stat
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._contract import (
    DISPLACEMENT,
    INPUT_MEANINGS,
    N_BEADS,
    NEXT_POSITIONS,
    OUTPUT_MEANINGS,
    POSITIONS,
    PREVIOUS_DISPLACEMENT,
    VELOCITY_CORRECTION,
    needs_previous,
    next_frame,
)
from ._errors import CheckFailed, InputError, UsageError
from ._io import atomic_output, sha256_file
from ._tar import MAX_ARCHIVE_BYTES, read_archive
from ._version import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION

__all__ = [
    "Bundle",
    "verify_bundle",
    "write_manifest",
    "manifest_sha256",
    "INPUT_MEANINGS",
    "OUTPUT_MEANINGS",
    "MANIFEST_NAME",
]

MANIFEST_NAME = "manifest.json"


_MAX_MANIFEST_BYTES = 16 << 20
#: Largest bundle file a host reads (model.onnx, example.npz; a bundle's files are a few MB).
MAX_FILE_BYTES = MAX_ARCHIVE_BYTES
#: example.npz: at most this many arrays, each and all together at most this many bytes once loaded.
MAX_EXAMPLE_ARRAYS = 8
MAX_EXAMPLE_ARRAY_BYTES = 16 << 20
MAX_EXAMPLE_BYTES = 64 << 20
_DTYPES = {"float32": np.float32, "float64": np.float64}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64"}
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

#: Frames per onnxruntime call. Larger batches are split into sub-batches of this size: the e3nn graph's
#: intermediates (a few hundred floats per edge and frame) then stay in the CPU caches. Measured on a 2-core AMD EPYC
#: with the committed sim-e3nn bundle (sparse tensor product), 1 thread, 1024 frames, medians of 9 interleaved
#: rounds: whole batch 3,021 frames/s, chunks of 256 3,613, 64 5,323, 32 5,940, 16 5,579, 8 5,602 (noisy
#: machine: the ranges overlap from 64 down; 32 is best or within noise of it).
CHUNK = 32


# --------------------------------------------------------------------------------------------- manifest writing


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"manifest value {obj!r} of type {type(obj).__name__} is not JSON-serialisable")


def write_manifest(bundle_dir: str | os.PathLike, manifest: dict) -> dict:
    """Fill ``manifest["files"]`` from the folder and write ``manifest.json`` (sorted keys, indent 2), atomically.

    Every regular file of ``bundle_dir`` except ``manifest.json`` is listed with its sha256 and size;
    ``format``/``format_version`` are added when missing. The dict is updated in place and returned.

    Raises:
        InputError: the folder is missing or holds a subfolder, a symlink or a special file (a bundle may not).
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; write the bundle files into a folder first")
    files: dict[str, dict[str, Any]] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name == MANIFEST_NAME:
            continue
        where = root / entry.name
        if entry.is_symlink():
            raise InputError(f"{where}: is a symlink; a bundle holds only regular files, copy the file instead")
        if entry.is_dir(follow_symlinks=False):
            raise InputError(f"{where}: is a folder; a bundle holds no subfolders, remove it")
        if not entry.is_file(follow_symlinks=False):
            raise InputError(f"{where}: is not a regular file; remove it from the bundle folder")
        files[entry.name] = {"sha256": sha256_file(where), "size": entry.stat(follow_symlinks=False).st_size}
    manifest.setdefault("format", BUNDLE_FORMAT)
    manifest.setdefault("format_version", BUNDLE_FORMAT_VERSION)
    manifest["files"] = files
    text = json.dumps(manifest, sort_keys=True, indent=2, default=_json_default) + "\n"
    with atomic_output(root / MANIFEST_NAME, suffix=".tmp") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return manifest


def manifest_sha256(bundle_dir: str | os.PathLike) -> str:
    """sha256 of ``manifest.json``; it pins every file of the bundle, so it identifies the bundle."""
    return sha256_file(Path(bundle_dir) / MANIFEST_NAME)


# --------------------------------------------------------------------------------------------- ONNX wire format


class _ProtoError(Exception):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _ProtoError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """Yield ``(field, wire_type, value)``; value is an int for varints, ``(start, end)`` for length-delimited."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _ProtoError("field number 0")
        if wire == 0:
            val, pos = _varint(buf, pos, end)
            yield field, wire, val
        elif wire == 1:
            pos += 8
            if pos > end:
                raise _ProtoError("truncated fixed64")
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _ProtoError("length runs past the end")
            yield field, wire, (pos, pos + n)
            pos += n
        elif wire == 5:
            pos += 4
            if pos > end:
                raise _ProtoError("truncated fixed32")
        else:
            raise _ProtoError(f"unsupported wire type {wire}")


class _OnnxScan:
    """Walk ModelProto -> graphs -> initializers / node attributes / functions and look for external tensors."""

    _MAX_DEPTH = 64

    def __init__(self, data: bytes):
        self.buf = memoryview(data)
        self.ir_version: int | None = None
        self.opsets: dict[str, int] = {}
        self.external: str | None = None  # name of the first externally stored tensor
        self.has_graph = False

    def _sub(self, wire: int, val, what: str):
        if wire != 2:
            raise _ProtoError(f"{what} has the wrong wire type")
        return val

    def model(self) -> None:
        buf = self.buf
        for field, wire, val in _fields(buf, 0, len(buf)):
            if field == 1 and wire == 0:
                self.ir_version = val
            elif field == 7:
                self.has_graph = True
                self.graph(*self._sub(wire, val, "graph"), 1)
            elif field == 8:
                domain, version = "", None
                for f2, w2, v2 in _fields(buf, *self._sub(wire, val, "opset_import")):
                    if f2 == 1 and w2 == 2:
                        domain = bytes(buf[v2[0] : v2[1]]).decode("utf-8", "replace")
                    elif f2 == 2 and w2 == 0:
                        version = v2
                if version is not None:
                    self.opsets[domain] = version
            elif field == 20:  # training_info: initialization (1), algorithm (2) graphs
                for f2, w2, v2 in _fields(buf, *self._sub(wire, val, "training_info")):
                    if f2 in (1, 2):
                        self.graph(*self._sub(w2, v2, "training graph"), 1)
            elif field == 25:  # functions: node (7)
                for f2, w2, v2 in _fields(buf, *self._sub(wire, val, "function")):
                    if f2 == 7:
                        self.node(*self._sub(w2, v2, "function node"), 1)

    def graph(self, start: int, end: int, depth: int) -> None:
        if depth > self._MAX_DEPTH:
            raise _ProtoError("graphs nested too deeply")
        for field, wire, val in _fields(self.buf, start, end):
            if field == 1:
                self.node(*self._sub(wire, val, "node"), depth)
            elif field == 5:
                self.tensor(*self._sub(wire, val, "initializer"))
            elif field == 15:
                self.sparse(*self._sub(wire, val, "sparse_initializer"))

    def node(self, start: int, end: int, depth: int) -> None:
        for field, wire, val in _fields(self.buf, start, end):
            if field == 5:
                self.attribute(*self._sub(wire, val, "attribute"), depth)

    def attribute(self, start: int, end: int, depth: int) -> None:
        for field, wire, val in _fields(self.buf, start, end):
            if field in (5, 10):
                self.tensor(*self._sub(wire, val, "attribute tensor"))
            elif field in (6, 11):
                self.graph(*self._sub(wire, val, "attribute graph"), depth + 1)
            elif field in (22, 23):
                self.sparse(*self._sub(wire, val, "attribute sparse tensor"))

    def sparse(self, start: int, end: int) -> None:
        for field, wire, val in _fields(self.buf, start, end):
            if field in (1, 2):
                self.tensor(*self._sub(wire, val, "sparse values"))

    def tensor(self, start: int, end: int) -> None:
        name = ""
        external = False
        for field, wire, val in _fields(self.buf, start, end):
            if field == 8 and wire == 2:
                name = bytes(self.buf[val[0] : val[1]]).decode("utf-8", "replace")
            elif field == 13:
                external = True
            elif field == 14 and wire == 0 and val == 1:
                external = True
        if external and self.external is None:
            self.external = name or "<unnamed>"


def scan_onnx(data: bytes) -> _OnnxScan:
    """Parse the parts of an ONNX ModelProto the host needs. Raises ``_ProtoError`` on malformed bytes."""
    scan = _OnnxScan(data)
    scan.model()
    return scan


# --------------------------------------------------------------------------------------------- verification


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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _plain_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MANIFEST_NAME)
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
    )


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


def _parse_manifest(raw: bytes, where: str) -> tuple[dict, str]:
    """Parse the very bytes that were read (and are hashed here): the manifest and its sha256."""
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise InputError(f"{where}: {len(raw)} bytes, over the {_MAX_MANIFEST_BYTES}-byte limit; re-export the bundle")
    try:
        manifest = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{where}: not valid JSON ({str(exc).splitlines()[0]}); re-export the bundle") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply to read; re-export the bundle") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{where}: holds a JSON {type(manifest).__name__}, not an object; re-export the bundle")
    return manifest, hashlib.sha256(raw).hexdigest()


def _read_manifest(root: Path, label: str) -> tuple[dict, str]:
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
    return _parse_manifest(_read_regular(mpath, where, _MAX_MANIFEST_BYTES, what="manifest"), where)


def _check_manifest(manifest: dict, where: str) -> None:
    fmt = manifest.get("format")
    if fmt != BUNDLE_FORMAT:
        raise InputError(f"{where}: format is {fmt!r}, not {BUNDLE_FORMAT!r}; this is not an e3traj bundle")
    ver = manifest.get("format_version")
    if not _is_int(ver) or ver < 1:
        raise InputError(f"{where}: format_version is {ver!r}, not a positive integer; re-export the bundle")
    if ver > BUNDLE_FORMAT_VERSION:
        raise InputError(
            f"{where}: bundle format version {ver} is newer than the {BUNDLE_FORMAT_VERSION} this e3traj reads; "
            "upgrade e3traj (pip install -U e3traj)"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise InputError(f"{where}: field 'files' is missing or not an object; re-export the bundle")
    for name, entry in files.items():
        if not _plain_name(name):
            raise InputError(f"{where}: files lists {name!r}, which is not a plain file name; re-export the bundle")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not _SHA_RE.match(entry["sha256"])
            or not _is_int(entry.get("size"))
            or entry["size"] < 0
        ):
            raise InputError(
                f"{where}: files[{name!r}] needs a hex 'sha256' and an integer 'size'; re-export the bundle"
            )
    for key in ("inputs", "outputs"):
        items = manifest.get(key)
        if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
            raise InputError(f"{where}: field '{key}' is missing or not a list of objects; re-export the bundle")
        names = [i.get("name") for i in items]
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise InputError(f"{where}: {key} need unique non-empty 'name's (got {names}); re-export the bundle")
        for i in items:
            dtype = i.get("dtype", "float32")
            if not isinstance(dtype, str) or dtype not in _DTYPES:
                raise InputError(f"{where}: {key} '{i['name']}' has dtype {dtype!r}; expected float32 or float64")
    meanings = [i.get("meaning") for i in manifest["inputs"]]
    for m in meanings:
        if not isinstance(m, str) or m not in INPUT_MEANINGS:
            raise InputError(f"{where}: input meaning {m!r} is not one of {list(INPUT_MEANINGS)}; upgrade e3traj")
    if meanings.count("positions") != 1 or meanings.count("previous_displacement") > 1:
        raise InputError(f"{where}: inputs {meanings} need exactly one 'positions' input; re-export the bundle")
    out_meaning = manifest["outputs"][0].get("meaning")
    if not isinstance(out_meaning, str) or out_meaning not in OUTPUT_MEANINGS:
        raise InputError(
            f"{where}: outputs[0].meaning {out_meaning!r} is not one of {list(OUTPUT_MEANINGS)}; upgrade e3traj"
        )
    for section in ("onnx", "example"):
        sec = manifest.get(section)
        if not isinstance(sec, dict) or not isinstance(sec.get("file"), str):
            raise InputError(f"{where}: field '{section}.file' is missing; re-export the bundle")
        if sec["file"] not in files or sec["file"] == MANIFEST_NAME:
            raise InputError(f"{where}: {section}.file {sec['file']!r} is not listed in 'files'; re-export the bundle")
    ts = manifest.get("torchscript")
    if isinstance(ts, dict) and isinstance(ts.get("file"), str) and ts["file"] not in files:
        raise InputError(f"{where}: torchscript.file {ts['file']!r} is not listed in 'files'; re-export the bundle")
    atol = manifest["example"].get("atol", 1e-5)
    if not isinstance(atol, int | float) or isinstance(atol, bool) or not math.isfinite(atol) or atol < 0:
        raise InputError(f"{where}: example.atol is {atol!r}; expected a non-negative number")
    onnx = manifest["onnx"]
    for key in ("opset", "ir_version"):
        if key in onnx and (not _is_int(onnx[key]) or onnx[key] < 1):
            raise InputError(f"{where}: onnx.{key} is {onnx[key]!r}; expected a positive integer")
    model = manifest.get("model", {})
    if not isinstance(model, dict):
        raise InputError(f"{where}: field 'model' is not an object; re-export the bundle")
    for key in ("kind",):
        if key in model and not isinstance(model[key], str):
            raise InputError(f"{where}: model.{key} is {model[key]!r}, not a string; re-export the bundle")
    if "equivariant" in model and not isinstance(model["equivariant"], bool):
        raise InputError(f"{where}: model.equivariant is {model['equivariant']!r}, not true/false; re-export")
    need = onnx.get("min_onnxruntime")
    if need is not None and not isinstance(need, str):
        raise InputError(f"{where}: onnx.min_onnxruntime is {need!r}, not a version string; re-export the bundle")


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


def _check_onnx_bytes(data: bytes, manifest: dict, where: str) -> _OnnxScan:
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
    onnx = manifest["onnx"]
    if "ir_version" in onnx and onnx["ir_version"] != scan.ir_version:
        raise InputError(
            f"{where}: IR version {scan.ir_version} but the manifest says onnx.ir_version {onnx['ir_version']}; "
            "re-export the bundle"
        )
    opset = scan.opsets.get("", scan.opsets.get("ai.onnx"))
    if "opset" in onnx and opset is not None and onnx["opset"] != opset:
        raise InputError(
            f"{where}: opset {opset} but the manifest says onnx.opset {onnx['opset']}; re-export the bundle"
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


def _parsed_files(manifest: dict) -> tuple[str, ...]:
    return (manifest["onnx"]["file"], manifest["example"]["file"])


def _finish(manifest: dict, digest: str, label: str, files: dict[str, Any], root: Path | None) -> _Verified:
    onnx_file = manifest["onnx"]["file"]
    _check_onnx_bytes(files[onnx_file], manifest, f"{label}/{onnx_file}")
    _check_runtime(manifest, f"{label}/{MANIFEST_NAME}")
    return _Verified(manifest, digest, label, files, root)


def _verify_dir(root: Path, label: str) -> _Verified:
    """Verify a bundle folder, reading every file once: what is hashed is what is parsed."""
    if not root.is_dir():
        raise InputError(f"{label}: not a folder; pass a bundle folder or a .tar.gz made by 'e3traj pack'")
    manifest, digest = _read_manifest(root, label)
    _check_manifest(manifest, f"{label}/{MANIFEST_NAME}")
    _check_listing(root, manifest, label)
    keep = _parsed_files(manifest)
    files: dict[str, Any] = {}
    for name, entry in sorted(manifest["files"].items()):
        where = f"{label}/{name}"
        data = _read_regular(root / name, where, MAX_FILE_BYTES)
        _check_bytes(data, entry, where)
        if name in keep:
            files[name] = data
    return _finish(manifest, digest, label, files, root)


def _verify_archive(path: Path) -> _Verified:
    """Verify a ``.tar.gz`` bundle in memory: members against the manifest's names, sizes and hashes."""
    archive = read_archive(path)
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


# --------------------------------------------------------------------------------------------- safe example.npz


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
                if info.flag_bits & 0x41:  # bit 0: encrypted, bit 6: strong encryption
                    raise InputError(f"{at}: is encrypted; re-export the bundle")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise InputError(f"{at}: compression method {info.compress_type} is not supported; re-export")
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                    if dtype.hasobject or dtype.kind not in "fiu":
                        raise InputError(f"{at}: dtype {dtype} is not numeric; re-export the bundle")
                    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize  # Python ints: no overflow
                    total += nbytes
                    if nbytes > MAX_EXAMPLE_ARRAY_BYTES or total > MAX_EXAMPLE_BYTES:
                        raise InputError(
                            f"{at}: declares {nbytes} bytes, over the limit of {MAX_EXAMPLE_ARRAY_BYTES} per array "
                            f"and {MAX_EXAMPLE_BYTES} in all; re-export the bundle"
                        )
                    raw = fh.read(nbytes + 1)
                if len(raw) != nbytes:
                    raise InputError(f"{at}: holds {len(raw)} bytes, its header says {nbytes}; re-export the bundle")
                arr = np.frombuffer(raw, dtype=dtype)
                arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
                arrays[key] = np.array(arr)
    except InputError:
        raise
    except Exception as exc:  # zipfile and numpy raise many kinds (BadZipFile, NotImplementedError, ...)
        text = str(exc).strip().splitlines()
        msg = text[0] if text else type(exc).__name__
        raise InputError(f"{where}: cannot read the example arrays ({msg}); re-export the bundle") from None
    return arrays


# --------------------------------------------------------------------------------------------- the runtime model


_ORT_QUIET = False


def _quiet_onnxruntime(ort) -> None:
    """onnxruntime's own logger prints errors and warnings to stderr; ours say it in one line instead."""
    global _ORT_QUIET
    if not _ORT_QUIET:
        ort.set_default_logger_severity(4)
        _ORT_QUIET = True


def _run_failed(where: str, exc: BaseException) -> InputError:
    return InputError(
        f"{where}: onnxruntime failed while running the model: {_clean_ort_error(exc)}; re-export the bundle"
    )


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _clean_ort_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    if len(text) > 160:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
        for s in reversed(sentences):
            if 10 < len(s) <= 200:
                return s
        return text[-160:]
    return text


class Bundle:
    """A verified bundle with an onnxruntime session. Open with :meth:`Bundle.open`; use as a context manager.

    Shapes: every input and output is ``(B, 12, 3)``; ``predict`` and ``step`` return float64.
    """

    def __init__(self, *, path: Path, verified: _Verified, session, threads=None):
        self._path = path
        self._root = verified.root
        self._label = verified.label
        self._files = verified.files
        self._manifest = verified.manifest
        self._sha256 = verified.sha256
        self._session = session
        self._threads = _default_threads() if threads is None else int(threads)
        self._pool = None
        self._pool_lock = threading.Lock()
        self._example: tuple[dict[str, np.ndarray], np.ndarray] | None = None
        manifest = verified.manifest
        inputs = manifest["inputs"]
        self._input_meanings = {i["name"]: i["meaning"] for i in inputs}
        self._input_dtypes = {i["name"]: _DTYPES[i.get("dtype", "float32")] for i in inputs}
        self._output_name = manifest["outputs"][0]["name"]

    # ---- construction

    @classmethod
    def open(cls, path: str | os.PathLike, threads: int | None = None) -> Bundle:
        """Verify a bundle folder or ``.tar.gz`` and create a CPU onnxruntime session for it.

        Args:
            path: bundle folder, or an archive from :func:`~e3traj.runtime.pack_bundle` (read and verified in
                memory; nothing is extracted to disk).
            threads: CPU threads for large batches (``None``: the CPUs this process may use). A batch is split
                into sub-batches of :data:`CHUNK` frames that run concurrently on ``threads`` threads, each
                onnxruntime call on one thread: this graph's ops are too small for onnxruntime's intra-op
                parallelism (measured ~1.0x at 2 threads, vs ~1.8x for concurrent sub-batches). One sub-batch
                (e.g. B = 1) always runs on the calling thread.

        Raises:
            InputError: the bundle fails verification or onnxruntime cannot load the model.
            UsageError: ``threads`` < 1.
        """
        if threads is not None and (not _is_int(threads) or threads < 1):
            raise UsageError(f"--threads: got {threads!r}; pass a positive integer")
        verified = _read_bundle(path)
        session = cls._make_session(verified)
        return cls(path=Path(path), verified=verified, session=session, threads=threads)

    @staticmethod
    def _make_session(verified: _Verified):
        import onnxruntime as ort

        _quiet_onnxruntime(ort)
        manifest = verified.manifest
        onnx_file = manifest["onnx"]["file"]
        where = f"{verified.label}/{onnx_file}"
        data = bytes(verified.files[onnx_file])  # the verified bytes themselves
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 4  # fatal only: errors reach the user as one line of ours
        # one thread per call (no intra-op pool: no spin-waiting, faster session creation); see open(threads=)
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            onnx = manifest["onnx"]
            raise InputError(
                f"{where}: onnxruntime {ort.__version__} cannot load it (opset {onnx.get('opset', '?')}, IR "
                f"{onnx.get('ir_version', '?')}): {_clean_ort_error(exc)}; upgrade onnxruntime or re-export"
            ) from None
        sess_inputs = {i.name: i for i in session.get_inputs()}
        sess_outputs = [o.name for o in session.get_outputs()]
        names = [i["name"] for i in manifest["inputs"]]
        if set(sess_inputs) != set(names):
            raise InputError(
                f"{where}: model inputs {sorted(sess_inputs)} differ from the manifest's {sorted(names)}; re-export"
            )
        out_name = manifest["outputs"][0]["name"]
        if out_name not in sess_outputs:
            raise InputError(f"{where}: model outputs {sess_outputs} lack the manifest's {out_name!r}; re-export")
        for spec in manifest["inputs"]:
            info = sess_inputs[spec["name"]]
            shape = list(info.shape)
            want = spec.get("dtype", "float32")
            if _ORT_TYPES.get(info.type) != want:
                raise InputError(f"{where}: input {info.name!r} has type {info.type}, the manifest says {want}")
            if len(shape) != 3 or shape[1] != N_BEADS or shape[2] != 3:
                raise InputError(f"{where}: input {info.name!r} has shape {shape}; expected (batch, 12, 3)")
            if _is_int(shape[0]):
                raise InputError(
                    f"{where}: input {info.name!r} has a fixed batch size {shape[0]}; re-export with a dynamic batch"
                )
        return session

    def close(self) -> None:
        """Release the session and its worker threads."""
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.shutdown(wait=True)
        self._session = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - exercised by garbage collection
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Bundle({str(self._path)!r}, kind={self.kind!r}, sha256={self._sha256[:12]}...)"

    # ---- properties

    @property
    def manifest(self) -> dict:
        """The parsed ``manifest.json``."""
        return self._manifest

    @property
    def path(self) -> Path:
        """The path the bundle was opened from (a folder or an archive)."""
        return self._path

    @property
    def root(self) -> Path | None:
        """The bundle folder, or ``None`` for an archive (read in memory; nothing of it is on disk)."""
        return self._root

    def file_bytes(self, name: str) -> bytes:
        """The verified bytes of ``model.onnx`` or ``example.npz`` (as hashed when the bundle was opened)."""
        if name not in self._files:
            raise KeyError(f"{name!r}: not a file the host reads (has {sorted(self._files)})")
        return bytes(self._files[name])

    @property
    def sha256(self) -> str:
        """sha256 of ``manifest.json`` (which pins every file of the bundle)."""
        return self._sha256

    @property
    def kind(self) -> str:
        """``model.kind`` from the manifest (``e3nn``, ``baseline``, ``e3nn-velocity``...)."""
        return str(self._manifest.get("model", {}).get("kind", "unknown"))

    @property
    def equivariant(self) -> bool:
        """``model.equivariant`` from the manifest (False: its equivariance check is expected to fail)."""
        return bool(self._manifest.get("model", {}).get("equivariant", False))

    @property
    def inputs(self) -> list[dict]:
        """The manifest's input specifications (name, dtype, shape, meaning)."""
        return list(self._manifest["inputs"])

    @property
    def input_meanings(self) -> dict[str, str]:
        """Input name -> ``positions`` | ``previous_displacement``."""
        return dict(self._input_meanings)

    @property
    def output_meaning(self) -> str:
        """``displacement`` | ``next_positions`` | ``velocity_correction``."""
        return self._manifest["outputs"][0]["meaning"]

    @property
    def needs_previous(self) -> bool:
        """True when :meth:`step` needs the previous frame (velocity-aware bundles)."""
        return needs_previous(self.output_meaning, self._input_meanings.values())

    @property
    def threads(self) -> int:
        """Threads that run the sub-batches of a large batch concurrently (see :meth:`open`)."""
        return self._threads

    @property
    def example_atol(self) -> float:
        """The tolerance of the example re-check (``example.atol``)."""
        return float(self._manifest["example"].get("atol", 1e-5))

    # ---- running

    def predict(self, inputs: Mapping[str, np.ndarray], chunk: int | None = None) -> np.ndarray:
        """Run the model on a batch.

        Shapes: each input ``(B, 12, 3)`` -> output ``(B, 12, 3)`` float64. Inputs are cast to the bundle dtype;
        the batch runs in ``ceil(B / chunk)`` near-equal sub-batches (``chunk`` default :data:`CHUNK`), concurrently
        on :attr:`threads` threads. On the project machines the sub-batching does not change any output bit as long
        as every sub-batch holds at least 8 frames (true for ``B >= 8`` and ``chunk >= 16``); onnxruntime may
        round batches of fewer frames, or on other CPUs other shapes, differently in float32 (~1e-9 on the
        reference bundles).

        Raises:
            UsageError: an input is missing/unknown, the shapes disagree, or ``chunk`` < 1.
            InputError: an input holds NaN or Inf.
        """
        if self._session is None:
            raise UsageError(f"{self._path}: bundle is closed; open it again")
        if chunk is not None and (not _is_int(chunk) or chunk < 1):
            raise UsageError(f"chunk: got {chunk!r}; pass a positive integer")
        names = list(self._input_meanings)
        missing = [n for n in names if n not in inputs]
        extra = [n for n in inputs if n not in self._input_meanings]
        if missing or extra:
            raise UsageError(f"{self._path}: inputs {sorted(inputs)} do not match the model's {names}")
        arrays = {}
        batch = None
        for n in names:
            a = np.asarray(inputs[n])
            if a.ndim != 3 or a.shape[1:] != (N_BEADS, 3):
                raise UsageError(f"input {n!r}: shape {a.shape}; expected (B, {N_BEADS}, 3)")
            if batch is None:
                batch = a.shape[0]
            elif a.shape[0] != batch:
                raise UsageError(f"input {n!r}: batch {a.shape[0]} differs from the other inputs' {batch}")
            if a.dtype.kind not in "fiu":
                raise UsageError(f"input {n!r}: dtype {a.dtype} is not numeric")
            if not np.all(np.isfinite(a)):
                raise InputError(f"input {n!r}: holds NaN or Inf; pass finite positions")
            arrays[n] = a
        out = np.empty((batch, N_BEADS, 3), dtype=np.float64)
        with np.errstate(over="ignore"):
            feed = {n: np.ascontiguousarray(a, dtype=self._input_dtypes[n]) for n, a in arrays.items()}
        self._run_chunks(feed, out, CHUNK if chunk is None else chunk)
        return out

    def _run_chunks(self, feed: dict[str, np.ndarray], out: np.ndarray, chunk: int) -> None:
        """Run contiguous model inputs in sub-batches of ``chunk`` rows into ``out`` (float64), on the threads."""
        session, out_name = self._session, [self._output_name]
        batch = out.shape[0]
        # ceil(batch / chunk) near-equal sub-batches: none is tiny (onnxruntime rounds batches of < 8 frames
        # differently in float32), and the threads get equal shares
        n_sub = max(1, -(-batch // chunk))
        bounds = [(batch * i // n_sub, batch * (i + 1) // n_sub) for i in range(n_sub)]

        def work(part: list[tuple[int, int]]) -> None:
            for lo, hi in part:
                try:
                    y = session.run(out_name, {n: a[lo:hi] for n, a in feed.items()})[0]
                except Exception as exc:  # onnxruntime's Fail/RuntimeException/...: one line of ours
                    raise _run_failed(f"{self._label}/{self._manifest['onnx']['file']}", exc) from None
                if not isinstance(y, np.ndarray) or y.shape != (hi - lo, N_BEADS, 3):
                    shape = getattr(y, "shape", type(y).__name__)
                    raise InputError(f"{self._path}: model returned shape {shape}; expected ({hi - lo}, 12, 3)")
                out[lo:hi] = y

        n_work = min(self._threads, len(bounds))
        if n_work <= 1:
            work(bounds)
            return
        parts = [bounds[len(bounds) * i // n_work : len(bounds) * (i + 1) // n_work] for i in range(n_work)]
        futures = [self._executor().submit(work, part) for part in parts[1:]]
        try:
            work(parts[0])
        finally:
            errors = [f.exception() for f in futures]
        for err in errors:
            if err is not None:
                raise err

    def _executor(self):
        with self._pool_lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=self._threads - 1, thread_name_prefix="e3traj-bundle")
            return self._pool

    def _stepper(self, batch: int):
        """A step function for rollouts: ``fn(x, previous, out)`` writes :meth:`step`'s result into ``out``.

        Same arithmetic as :meth:`step` (float32 model inputs, float64 accumulation) with the model-input and
        output buffers allocated once. ``x`` and ``previous`` must be finite. Shapes: all ``(batch, 12, 3)``.
        """
        if self._session is None:
            raise UsageError(f"{self._path}: bundle is closed; open it again")
        shape = (batch, N_BEADS, 3)
        bufs = {n: np.empty(shape, dtype=self._input_dtypes[n]) for n in self._input_meanings}
        pos_names = [n for n, m in self._input_meanings.items() if m == POSITIONS]
        disp_names = [n for n, m in self._input_meanings.items() if m == PREVIOUS_DISPLACEMENT]
        meaning = self.output_meaning
        velocity = np.empty(shape, dtype=np.float64) if disp_names or meaning == VELOCITY_CORRECTION else None
        # one sub-batch: onnxruntime writes into a bound buffer, read directly below (float32 -> float64 in the
        # additions is exact, as in the copy into ``y`` of the sub-batched path)
        run = self._bound_run(bufs, shape) if batch <= CHUNK else None
        y = np.empty(shape, dtype=np.float64) if run is None else None

        def step_into(x: np.ndarray, previous: np.ndarray | None, out: np.ndarray) -> None:
            # (rollout calls this inside np.errstate(all="ignore"); no errstate here: it slows the next
            # onnxruntime call by a few microseconds)
            if velocity is not None:
                np.subtract(x, previous, out=velocity)
                if disp_names and not np.isfinite(velocity).all():
                    raise InputError(f"input {disp_names[0]!r}: holds NaN or Inf; pass finite positions")
            for n in pos_names:
                np.copyto(bufs[n], x, casting="unsafe")
            for n in disp_names:
                np.copyto(bufs[n], velocity, casting="unsafe")
            if run is None:
                self._run_chunks(bufs, y, CHUNK)
                pred = y
            else:
                pred = run()
            # contract.next_frame in place (no allocation per step); the same operations in the same order,
            # so the same bits (tests/runtime/test_rollout.py compares the two)
            if meaning == DISPLACEMENT:
                np.add(x, pred, out=out)
            elif meaning == NEXT_POSITIONS:
                out[...] = pred
            else:
                np.add(x, velocity, out=out)
                np.add(out, pred, out=out)

        return step_into

    def _bound_run(self, bufs: dict[str, np.ndarray], shape: tuple[int, ...]):
        """``run() -> output`` for one sub-batch through an onnxruntime IOBinding of ``bufs`` and one output buffer.

        The inputs are bound once (their memory is read at every run) and the output is written into a buffer
        allocated once: a rollout step then skips the feed dict and the output allocation of ``session.run``
        (measured ~5% of a B=1 step). Shapes: ``bufs`` values and the output ``shape`` = ``(batch, 12, 3)``.
        """
        session = self._session
        out_type = next(o.type for o in session.get_outputs() if o.name == self._output_name)
        y = np.empty(shape, dtype=_DTYPES[_ORT_TYPES.get(out_type, "float32")])
        binding = session.io_binding()
        for name, buf in bufs.items():
            binding.bind_cpu_input(name, buf)
        binding.bind_output(self._output_name, "cpu", 0, y.dtype, list(shape), y.ctypes.data)

        def run() -> np.ndarray:
            try:
                session.run_with_iobinding(binding)
            except Exception as exc:  # e.g. a wrong output shape, which onnxruntime cannot write into y
                raise InputError(
                    f"{self._path}: the model did not return ({shape[0]}, 12, 3): {_clean_ort_error(exc)}"
                ) from None
            return y

        return run

    def model_inputs(self, positions: np.ndarray, previous: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Build the model's inputs for frames ``positions`` (and the frames before them, if needed).

        Shapes: ``positions``, ``previous`` ``(B, 12, 3)``.
        """
        x = np.asarray(positions, dtype=np.float64)
        if self.needs_previous and previous is None:
            raise UsageError(
                f"{self._path}: this {self.kind} bundle needs the previous frame too "
                "(its output is a velocity correction); pass previous="
            )
        feed = {}
        for name, meaning in self._input_meanings.items():
            if meaning == "positions":
                feed[name] = x
            else:
                p = np.asarray(previous, dtype=np.float64)
                if p.shape != x.shape:
                    raise UsageError(f"previous: shape {p.shape} differs from the positions' {x.shape}")
                feed[name] = x - p
        return feed

    def step(self, positions: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        """Next frames according to ``outputs[0].meaning``, in float64.

        ``displacement``: x + y; ``next_positions``: y; ``velocity_correction``: x + (x - previous) + y.

        Shapes: ``positions``, ``previous`` ``(B, 12, 3)`` -> ``(B, 12, 3)`` float64.
        """
        x = np.asarray(positions, dtype=np.float64)
        y = self.predict(self.model_inputs(x, previous))
        prev = None if previous is None else np.asarray(previous, dtype=np.float64)
        with np.errstate(all="ignore"):
            return next_frame(self.output_meaning, x, y, prev)

    # ---- the stored example

    def load_example(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The example inputs (float64, by input name) and the reference output stored at export.

        Shapes: each input ``(B, 12, 3)``; reference ``(B, 12, 3)``.
        """
        if self._example is None:
            ex_file = self._manifest["example"]["file"]
            where = f"{self._label}/{ex_file}"
            arrays = _load_example(self._files[ex_file], where)
            names = list(self._input_meanings) + [self._output_name]
            missing = [n for n in names if n not in arrays]
            if missing:
                raise InputError(f"{where}: arrays {missing} missing (has {sorted(arrays)}); re-export the bundle")
            shapes = {arrays[n].shape for n in names}
            if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[1:] != (N_BEADS, 3):
                raise InputError(f"{where}: example arrays have shapes {sorted(shapes)}; expected (B, 12, 3)")
            inputs = {n: arrays[n].astype(np.float64) for n in self._input_meanings}
            for n, a in inputs.items():
                if not np.all(np.isfinite(a)):
                    raise InputError(f"{where}[{n}]: holds NaN or Inf; re-export the bundle")
            self._example = (inputs, arrays[self._output_name].astype(np.float64))
        inputs, ref = self._example
        return {k: v.copy() for k, v in inputs.items()}, ref.copy()

    def example_error(self) -> tuple[float, float]:
        """Max abs and max relative error of the model on the example vs the stored reference outputs."""
        inputs, ref = self.load_example()
        got = self.predict(inputs)
        err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        return err, err / max(scale, 1e-12)

    def recheck_example(self, atol: float | None = None) -> float:
        """Re-run the stored example and return the max abs error vs the reference outputs.

        Raises:
            CheckFailed: the error exceeds ``atol`` (default: the manifest's ``example.atol``).
        """
        tol = self.example_atol if atol is None else float(atol)
        err, _ = self.example_error()
        if not err <= tol:
            raise CheckFailed(
                f"{self._path}: example outputs differ from the export's reference by {err:.3g} (> atol {tol:g}); "
                "this onnxruntime does not reproduce the exported model"
            )
        return err
