"""The bundle format's one definition: ``manifest.json`` written (export side) and parsed and checked (host side).

The manifest lists every other file with its sha256 and size, the model's inputs and outputs with their meanings
(:mod:`e3traj.runtime._contract`), the ONNX file's opset and IR version and the example's tolerance; see
artifacts/README.md.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ._contract import (
    AR_CORRECTION,
    DEFAULT_N_BEADS,
    INPUT_MEANINGS,
    MAX_BEADS,
    MIN_BEADS,
    NOISE_RULES,
    OUTPUT_MEANINGS,
    OUTPUT_NAME,
    PERMUTATIONS,
    PREVIOUS_DISPLACEMENTS,
    history_length,
)
from ._errors import InputError
from ._io import atomic_output, sha256_file
from ._version import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, __version__

__all__ = ["MANIFEST_NAME", "build_manifest", "write_manifest", "manifest_n_beads"]

MANIFEST_NAME = "manifest.json"

_MAX_MANIFEST_BYTES = 16 << 20
_DTYPES = {"float32": np.float32, "float64": np.float64}
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
#: The most previous displacements (and AR coefficients) a bundle may take.
MAX_HISTORY = 32


def _io_spec(name: str, meaning: str, history: int = 0, n_beads: int = DEFAULT_N_BEADS) -> dict[str, Any]:
    shape = ["batch", history, n_beads, 3] if meaning == PREVIOUS_DISPLACEMENTS else ["batch", n_beads, 3]
    return {"name": name, "dtype": "float32", "shape": shape, "meaning": meaning}


def manifest_n_beads(manifest: dict) -> int:
    """The bundle's beads per frame N: ``model.num_nodes`` (checked against every input's and the output's shape
    by :func:`verify_bundle`), or 12 for a manifest that records none."""
    n = manifest.get("model", {}).get("num_nodes", DEFAULT_N_BEADS)
    return int(n) if _is_int(n) else DEFAULT_N_BEADS


def build_manifest(
    *,
    kind: str,
    equivariant: bool,
    inputs: tuple[str, ...] | list[str],
    output: str,
    model: dict[str, Any],
    onnx: dict[str, Any],
    example: dict[str, Any],
    training: dict[str, Any],
    versions: dict[str, str],
    verification: dict[str, Any],
    created_utc: str | None = None,
    history: int = 0,
    n_beads: int = DEFAULT_N_BEADS,
) -> dict[str, Any]:
    """A bundle manifest without its ``files`` (:func:`write_manifest` adds them): the format's one definition.

    ``inputs`` are input meanings (the graph's input names are the meanings), ``output`` the output meaning
    (:mod:`e3traj.runtime._contract`); every input and the output are float32 ``(batch, N, 3)``, N = ``n_beads``
    (recorded as ``model.num_nodes``). ``model`` holds the kind's other fields (hyperparameters, scales...),
    ``onnx`` at least ``file``, ``example`` at least ``file`` and ``atol``. ``history``: H of a
    ``previous_displacements`` input (``(batch, H, N, 3)``); an ``ar_correction`` output needs
    ``model["ar_coefficients"]`` (H numbers).
    """
    for m in inputs:
        if m not in INPUT_MEANINGS:
            raise ValueError(f"build_manifest: input meaning {m!r} is not one of {INPUT_MEANINGS}")
    if output not in OUTPUT_MEANINGS:
        raise ValueError(f"build_manifest: output meaning {output!r} is not one of {OUTPUT_MEANINGS}")
    stamp = created_utc or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "e3traj_version": __version__,
        "created_utc": stamp,
        "model": {"kind": kind, "equivariant": bool(equivariant), "num_nodes": n_beads, "dtype": "float32", **model},
        "inputs": [_io_spec(m, m, history, n_beads) for m in inputs],
        "outputs": [_io_spec(OUTPUT_NAME, output, 0, n_beads)],
        "onnx": dict(onnx),
        "example": dict(example),
        "training": dict(training),
        "versions": dict(versions),
        "verification": dict(verification),
    }


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


def _finite_number(v: Any) -> bool:
    """A JSON number (not a bool) that is finite as a float (a 400-digit integer is not: float() overflows)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


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


def _parse_manifest(raw: bytes, where: str) -> tuple[dict, str]:
    """Parse the very bytes that were read (and are hashed here): the manifest and its sha256."""
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise InputError(f"{where}: {len(raw)} bytes, over the {_MAX_MANIFEST_BYTES}-byte limit; re-export the bundle")
    try:
        manifest = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and ints past Python's digit limit
        raise InputError(f"{where}: not valid JSON ({str(exc).splitlines()[0]}); re-export the bundle") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply to read; re-export the bundle") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{where}: holds a JSON {type(manifest).__name__}, not an object; re-export the bundle")
    return manifest, hashlib.sha256(raw).hexdigest()


def _check_graph_versions(entry: dict, field: str, where: str) -> None:
    """A graph's manifest entry (``onnx`` or ``onnx.single_frame``): its opset and IR version, where given, are
    positive integers."""
    for key in ("opset", "ir_version"):
        if key in entry and (not _is_int(entry[key]) or entry[key] < 1):
            raise InputError(f"{where}: {field}.{key} is {entry[key]!r}; expected a positive integer")


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
    if meanings.count("positions") != 1 or any(meanings.count(m) > 1 for m in INPUT_MEANINGS):
        raise InputError(
            f"{where}: inputs {meanings} need exactly one 'positions' input and each meaning once; re-export the bundle"
        )
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
    if not _finite_number(atol) or atol < 0:
        raise InputError(f"{where}: example.atol is {atol!r}; expected a non-negative number")
    onnx = manifest["onnx"]
    single = onnx.get("single_frame")
    if single is not None:
        if (
            not isinstance(single, dict)
            or not isinstance(single.get("file"), str)
            or not _is_int(single.get("batch"))
            or single["batch"] != 1
        ):
            raise InputError(
                f"{where}: onnx.single_frame is {single!r}; expected {{'file': ..., 'batch': 1}}; re-export the bundle"
            )
        others = (
            MANIFEST_NAME,
            onnx["file"],
            manifest["example"]["file"],
            ts.get("file") if isinstance(ts, dict) else None,
        )
        if single["file"] not in files or single["file"] in others:
            raise InputError(
                f"{where}: onnx.single_frame.file {single['file']!r} is not a listed file of its own; re-export"
            )
        _check_graph_versions(single, "onnx.single_frame", where)
    _check_graph_versions(onnx, "onnx", where)
    model = manifest.get("model", {})
    if not isinstance(model, dict):
        raise InputError(f"{where}: field 'model' is not an object; re-export the bundle")
    for key in ("kind",):
        if key in model and not isinstance(model[key], str):
            raise InputError(f"{where}: model.{key} is {model[key]!r}, not a string; re-export the bundle")
    if "equivariant" in model and not isinstance(model["equivariant"], bool):
        raise InputError(f"{where}: model.equivariant is {model['equivariant']!r}, not true/false; re-export")
    _check_history(manifest, meanings, out_meaning, where)
    need = onnx.get("min_onnxruntime")
    if need is not None and not isinstance(need, str):
        raise InputError(f"{where}: onnx.min_onnxruntime is {need!r}, not a version string; re-export the bundle")


def manifest_history(manifest: dict) -> int:
    """How many frames before the current one a step of this (checked) bundle needs (:func:`history_length`)."""
    h_in = max([int(i["shape"][1]) for i in manifest["inputs"] if i.get("meaning") == PREVIOUS_DISPLACEMENTS] or [0])
    return history_length(
        manifest["outputs"][0]["meaning"],
        [i.get("meaning") for i in manifest["inputs"]],
        manifest.get("model", {}).get("ar_coefficients") or (),
        displacements=h_in,
    )


def _check_history(manifest: dict, meanings: list, out_meaning: str, where: str) -> None:
    """The beads per frame, the inputs' and output's shapes, the AR coefficients and the permutation promise."""
    model = manifest.get("model", {})
    n = model.get("num_nodes", DEFAULT_N_BEADS)
    if not (_is_int(n) and MIN_BEADS <= n <= MAX_BEADS):
        raise InputError(f"{where}: model.num_nodes is {n!r}; expected beads per frame, {MIN_BEADS} to {MAX_BEADS}")
    out_shape = manifest["outputs"][0].get("shape")
    if out_shape is not None and out_shape != ["batch", n, 3]:
        raise InputError(f"{where}: output shape {out_shape!r}; expected ['batch', {n}, 3] (num_nodes {n}); re-export")
    h_in = None
    for spec in manifest["inputs"]:
        shape = spec.get("shape")
        if spec.get("meaning") == PREVIOUS_DISPLACEMENTS:
            ok = (
                isinstance(shape, list)
                and len(shape) == 4
                and _is_int(shape[1])
                and 1 <= shape[1] <= MAX_HISTORY
                and shape[2:] == [n, 3]
            )
            if not ok:
                raise InputError(
                    f"{where}: input {spec['name']!r} has shape {shape!r}; expected ['batch', H, {n}, 3] "
                    f"with 1 <= H <= {MAX_HISTORY}; re-export the bundle"
                )
            h_in = shape[1]
        elif shape is not None and shape != ["batch", n, 3]:
            raise InputError(
                f"{where}: input {spec['name']!r} has shape {shape!r}; expected ['batch', {n}, 3]; re-export"
            )
    coefs = model.get("ar_coefficients")
    if out_meaning == AR_CORRECTION or coefs is not None:
        ok = isinstance(coefs, list) and 1 <= len(coefs) <= MAX_HISTORY and all(_finite_number(c) for c in coefs)
        if not ok:
            raise InputError(
                f"{where}: model.ar_coefficients is {coefs!r}; an 'ar_correction' output needs a list of 1 to "
                f"{MAX_HISTORY} finite numbers; re-export the bundle"
            )
        if h_in is not None and h_in != len(coefs):
            raise InputError(
                f"{where}: {len(coefs)} AR coefficients but the history input holds {h_in} displacements; "
                "re-export the bundle"
            )
    noise = model.get("noise_scale")
    if noise is not None and (not _finite_number(noise) or noise < 0):
        raise InputError(f"{where}: model.noise_scale is {noise!r}; expected a finite number >= 0; re-export")
    rule = model.get("noise_rule", "residual")
    if rule not in NOISE_RULES:
        raise InputError(f"{where}: model.noise_rule is {rule!r}; expected one of {list(NOISE_RULES)}; re-export")
    perm = model.get("permutation", "any")
    if perm not in PERMUTATIONS:
        raise InputError(f"{where}: model.permutation is {perm!r}; expected one of {list(PERMUTATIONS)}")
