"""Seeded, bounded fuzz test of the host commands: inspect, check, rollout, pack, bench and evaluate.

What it does. Each case takes one of the committed reference bundles (``sim-e3nn``, ``sim-e3nn-velocity``), a
packed ``.tar.gz`` of ``sim-e3nn`` or a short simulated trajectory, applies one mutation from one of five families
and runs two of the commands that take that input through the installed console script, in a subprocess:

1. ``manifest``: byte flips, truncation, JSON edits (delete or re-type a key at any depth, 100,000-deep nesting,
   huge numbers, control characters and unicode in names, lists where strings belong, a non-object root).
2. ``onnx``: flips, truncation, splices, garbage in ``model.onnx``, re-hashed in the manifest so the bytes reach
   the ONNX scanner and onnxruntime (and one stale-hash variant that verification must catch).
3. ``example``: zip-level mutations of ``example.npz`` (header and central-directory flips, flag bits such as
   encryption, compression methods, truncation, extra and duplicate members) and array-level ones (0 frames, huge
   or negative shapes declared in the ``.npy`` header, object and other dtypes, NaN), re-hashed.
4. ``archive``: flips and truncation of the gzip stream, and archives rebuilt with ``tarfile``: extra and duplicate
   members, huge pax headers, pax overrides, wrong sizes, links, devices, absolute paths, '..', nested folders.
5. ``traj``: the trajectory given to ``rollout`` (INIT) and ``evaluate`` (``--data``): the zip and array mutations of
   (3), NaN/Inf, wrong shapes, 0 or 1 frame, raw ``.npy`` headers, empty and foreign files.

Every run must end with exit code 2-5 (0 only where the mutation can leave the input valid), at most one
non-empty line on stderr, no traceback, no output file and no leftover (temporary) file in the output folder, the
working folder or ``$TMPDIR``, and a maximum RSS of the children under 1.5 GiB. Failures are collected and reported
together at the end, each with its case id (``family(base):mutation -> command``), exit code and stderr.

How it is bounded. One ``random.Random(SEED)`` drives every choice, so the sequence of cases is fixed. The loop
stops once ``BUDGET_S`` seconds have passed, but only after ``MIN_CASES`` cases (and asserts that many ran). Inputs
are small (rollout ``--steps 3``, ``check --trials 1``, the smallest ``bench`` settings, a 64-frame trajectory);
every subprocess has a ``TIMEOUT_S`` timeout (a timeout is a failure) and an address-space limit (``AS_LIMIT``) so
a memory bomb fails the case instead of the machine.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import resource
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SEED = 20261201
BUDGET_S = 50.0
MIN_CASES = 30
MAX_CASES = 500
COMMANDS_PER_CASE = 2
TIMEOUT_S = 60
MAX_RSS_KIB = 1536 * 1024
AS_LIMIT = 4 << 30
ALLOWED_CODES = {0, 2, 3, 4, 5}
MAX_SHOWN = 30

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
E3TRAJ = Path(sys.executable).with_name("e3traj")
BASES = ("sim-e3nn", "sim-e3nn-velocity")

BUNDLE_COMMANDS = ("inspect", "check", "rollout", "bench", "evaluate", "pack")
TRAJ_COMMANDS = ("rollout", "evaluate")
ALL = frozenset(BUNDLE_COMMANDS)
NONE: frozenset[str] = frozenset()
NO_EXAMPLE = frozenset({"inspect", "pack", "rollout", "evaluate"})  # commands that never read example.npz
NO_SESSION = frozenset({"inspect", "pack"})  # commands that never create an onnxruntime session
TRAJ_OK = frozenset(TRAJ_COMMANDS)

#: names with control characters, unicode and other surprises (for manifest fields and member names)
WEIRD_NAMES = (
    "\x1b[31mred\x1b[0m.onnx",
    "new\nline.onnx",
    "carriage\rreturn.npz",
    "tab\there.onnx",
    "ü-ñ-漢字.onnx",
    "\u202eevil.onnx",
    "nul\x00byte.onnx",
    "a" * 300,
    " ",
    "-rf",
)
DISK_NAMES = tuple(n for n in WEIRD_NAMES if "\x00" not in n and len(n.encode()) < 200)
HUGE_NUMBERS = ("1e999", "-1e999", "1" + "0" * 5000, "NaN", "Infinity", str(2**64), "1e-400", "-0", "9" * 400)
DEEP = 100_000


@dataclass(frozen=True)
class FuzzInputs:
    """The pristine inputs every case starts from (prepared once per module)."""

    bundles: dict[str, Path]
    archive: Path
    traj: Path
    setup_failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mutation:
    """One mutated input: ``ok`` names the commands for which exit code 0 is legitimate."""

    label: str
    bundle: Path
    traj: Path
    ok: frozenset[str]
    commands: tuple[str, ...]


# --------------------------------------------------------------------------------------------- subprocess helpers


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def _run_e3traj(args: list[str], cwd: Path, tmpdir: Path) -> subprocess.CompletedProcess | None:
    """Run ``e3traj ARGS`` in ``cwd`` with ``TMPDIR=tmpdir``; None on a timeout."""
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONDONTWRITEBYTECODE="1")
    try:
        return subprocess.run(
            [str(E3TRAJ), *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT_S,
            preexec_fn=_limit_memory,
        )
    except subprocess.TimeoutExpired:
        return None


def _children_max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def _command_args(command: str, m: Mutation, out: Path, rng: random.Random) -> tuple[list[str], list[Path]]:
    """The argv of one host command on a mutation, and the output paths it is asked to write."""
    bundle, traj = str(m.bundle), str(m.traj)
    if command == "inspect":
        return ["inspect", bundle] + (["--json"] if rng.random() < 0.3 else []), []
    if command == "check":
        return ["check", bundle, "--trials", "1", "--threads", "1"], []
    if command == "bench":
        small = ["--batch-sizes", "1", "--threads", "1", "--repeats", "1", "--seconds", "0.01"]
        return ["bench", bundle, *small, "--rollout-steps", "2", "--roofline-seconds", "0.01"], []
    if command == "evaluate":
        return ["evaluate", bundle, "--data", traj, "--starts", "1"], []
    if command == "pack":
        return ["pack", bundle, "-o", str(out / "packed.tar.gz")], [out / "packed.tar.gz"]
    if command == "rollout":
        outputs = [out / "roll.npz"] + ([out / "roll.xyz"] if rng.random() < 0.4 else [])
        args = ["rollout", bundle, traj, "-o", str(outputs[0]), "--steps", "3"]
        return args + (["--xyz", str(outputs[1])] if len(outputs) > 1 else []), outputs
    raise AssertionError(command)


def _stderr_lines(text: str) -> list[str]:
    return [ln for ln in re.split(r"[\r\n]+", text) if ln.strip()]


def _traceback_tail(text: str) -> str:
    lines = _stderr_lines(text)
    return lines[-1].strip()[:160] if lines else ""


#: what ``tempfile`` and e3traj name their temporaries; other TMPDIR entries are not ours (onnxruntime's import
#: drops a '.ses' marker file there, on success too)
_TEMP_PREFIXES = ("tmp", "e3traj", ".e3traj")


def _leftovers(folder: Path, allowed: set[Path], prefixes: tuple[str, ...] = ("",)) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p not in allowed and p.name.startswith(prefixes))


def _judge(
    command: str, ok: frozenset[str], proc: subprocess.CompletedProcess, outputs: list[Path], dirs: dict[str, Path]
) -> list[str]:
    """Problems of one finished run (an empty list when it behaved)."""
    problems = []
    rc = proc.returncode
    stdout = proc.stdout.decode("utf-8", "replace")
    stderr = proc.stderr.decode("utf-8", "replace")
    if rc not in ALLOWED_CODES:
        problems.append(f"exit code {rc}")
    for name, text in (("stderr", stderr), ("stdout", stdout)):
        if "Traceback" in text:
            problems.append(f"traceback on {name}: {_traceback_tail(text)!r}")
    n_lines = len(_stderr_lines(stderr))
    if n_lines > 1:
        problems.append(f"{n_lines} lines on stderr")
    if rc == 0 and command not in ok:
        problems.append("exit 0 on an input this command must refuse")
    partial_ok = command == "rollout" and rc == 5  # an incomplete rollout keeps the frames before the failure
    if rc != 0 and not partial_ok:
        problems += [f"left output {p.name!r} after exit {rc}" for p in outputs if p.exists() or p.is_symlink()]
    if rc == 0:
        problems += [f"exit 0 but no {p.name!r}" for p in outputs if not p.is_file()]
    for where, folder in dirs.items():
        extra = _leftovers(folder, set(outputs), _TEMP_PREFIXES if where == "TMPDIR" else ("",))
        if extra:
            problems.append(f"leftovers in {where}: {extra[:5]}")
    return problems


# --------------------------------------------------------------------------------------------- byte helpers


def _flip(data: bytes, pos: int, rng: random.Random) -> bytes:
    buf = bytearray(data)
    buf[pos] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _patch_u16(buf: bytearray, pos: int, value: int) -> None:
    struct.pack_into("<H", buf, pos, value)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------- bundle helpers


def _copy_bundle(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _load_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


def _write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _rehash(bundle: Path, manifest: dict | None = None) -> None:
    """Re-list the sha256 and size of every listed file that exists, so a mutated file passes verification."""
    manifest = _load_manifest(bundle) if manifest is None else manifest
    for name, entry in manifest["files"].items():
        path = bundle / name
        if path.is_file():
            data = path.read_bytes()
            entry.update(sha256=_sha256(data), size=len(data))
    _write_manifest(bundle, manifest)


def _json_paths(obj, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys and indices) below ``obj``."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    out = []
    for key, value in items:
        out.append(prefix + (key,))
        out += _json_paths(value, prefix + (key,))
    return out


def _get(obj, path: tuple):
    for key in path:
        obj = obj[key]
    return obj


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def _other_type_value(rng: random.Random, old) -> tuple[str, object]:
    pool = [
        ("null", None),
        ("bool", True),
        ("int", -1),
        ("int", 0),
        ("float", 1.5),
        ("float", 1e308),
        ("str", ""),
        ("str", "x"),
        ("list", []),
        ("list", [1, "a", None]),
        ("dict", {}),
        ("dict", {"a": {"b": 1}}),
        ("int", 2**64),
    ]
    kinds = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}
    pool = [p for p in pool if p[0] != kinds.get(type(old))]
    return rng.choice(pool)


# --------------------------------------------------------------------------------------------- family 1: manifest


def _m_flip(rng, bundle):
    raw = (bundle / "manifest.json").read_bytes()
    pos = rng.randrange(len(raw))
    (bundle / "manifest.json").write_bytes(_flip(raw, pos, rng))
    return f"flip-byte@{pos}", ALL, bundle


def _m_truncate(rng, bundle):
    raw = (bundle / "manifest.json").read_bytes()
    n = rng.randrange(len(raw) - 2)
    (bundle / "manifest.json").write_bytes(raw[:n])
    return f"truncate@{n}", NONE, bundle


def _m_delete_key(rng, bundle):
    manifest = _load_manifest(bundle)
    path = rng.choice(_json_paths(manifest))
    del _get(manifest, path[:-1])[path[-1]]
    _write_manifest(bundle, manifest)
    return f"delete-key@{_dotted(path)}", ALL, bundle


def _m_retype(rng, bundle):
    manifest = _load_manifest(bundle)
    path = rng.choice(_json_paths(manifest))
    kind, value = _other_type_value(rng, _get(manifest, path))
    _get(manifest, path[:-1])[path[-1]] = value
    _write_manifest(bundle, manifest)
    return f"retype@{_dotted(path)}={kind}", ALL, bundle


def _splice_literal(rng, bundle, literal: str) -> str:
    """Put ``literal`` (raw JSON text) at a random path of the manifest; return the path."""
    manifest = _load_manifest(bundle)
    path = rng.choice(_json_paths(manifest))
    _get(manifest, path[:-1])[path[-1]] = "@@SPLICE@@"
    text = json.dumps(manifest, indent=2, sort_keys=True).replace('"@@SPLICE@@"', literal, 1)
    (bundle / "manifest.json").write_text(text, encoding="utf-8")
    return _dotted(path)


def _m_deep_nesting(rng, bundle):
    shape = rng.choice(("list", "object"))
    literal = "[" * DEEP + "]" * DEEP if shape == "list" else '{"a":' * DEEP + "1" + "}" * DEEP
    path = _splice_literal(rng, bundle, literal)
    return f"deep-{shape}-nesting@{path}", NONE, bundle


def _m_huge_number(rng, bundle):
    literal = rng.choice(HUGE_NUMBERS)
    path = _splice_literal(rng, bundle, literal)
    return f"huge-number@{path}={literal[:10]}", ALL, bundle


def _m_list_for_string(rng, bundle):
    manifest = _load_manifest(bundle)
    required = [("format",), ("onnx", "file"), ("example", "file"), ("inputs", 0, "name"), ("inputs", 0, "dtype")]
    required += [("inputs", 0, "meaning"), ("outputs", 0, "meaning"), ("outputs", 0, "name")]
    informational = [("model", "kind"), ("created_utc",), ("e3traj_version",), ("onnx", "min_onnxruntime")]
    path = rng.choice(required + informational)
    _get(manifest, path[:-1])[path[-1]] = [_get(manifest, path)]
    _write_manifest(bundle, manifest)
    return f"list-for-string@{_dotted(path)}", NONE if path in required else ALL, bundle


def _m_weird_name(rng, bundle):
    manifest = _load_manifest(bundle)
    how = rng.choice(("rename", "rename-stale", "listed-missing", "input-name", "kind", "dirname"))
    if how in ("rename", "rename-stale"):
        section = rng.choice(("onnx", "example"))
        old, new = manifest[section]["file"], rng.choice(DISK_NAMES)
        (bundle / old).rename(bundle / new)
        manifest["files"][new] = manifest["files"].pop(old)
        manifest[section]["file"] = new
        if how == "rename-stale":
            manifest["files"][new]["size"] += 1
        _write_manifest(bundle, manifest)
        return f"{how}:{old}->{new!r}", ALL if how == "rename" else NONE, bundle
    name = rng.choice(WEIRD_NAMES)
    if how == "listed-missing":
        manifest["files"][name] = {"sha256": "0" * 64, "size": 1}
        ok = NONE
    elif how == "input-name":
        manifest["inputs"][0]["name"] = name
        ok = NO_SESSION
    elif how == "kind":
        manifest["model"]["kind"] = name
        ok = ALL
    else:  # a bundle folder with a strange name, and an unlisted file so the error names the folder
        name = rng.choice(DISK_NAMES)
        bundle = bundle.rename(bundle.with_name(name))
        (bundle / "extra.txt").write_text("not listed\n")
        return f"dirname={name!r}+unlisted-file", NONE, bundle
    _write_manifest(bundle, manifest)
    return f"{how}={name!r}", ok, bundle


def _m_root(rng, bundle):
    how = rng.choice(("array", "null", "string", "bom", "utf16", "oversize", "empty"))
    text = (bundle / "manifest.json").read_text(encoding="utf-8")
    data = {
        "array": b"[]",
        "null": b"null",
        "string": b'"e3traj-bundle"',
        "bom": b"\xef\xbb\xbf" + text.encode(),
        "utf16": text.encode("utf-16"),
        "empty": b"",
    }.get(how)
    if how == "oversize":
        data = text.encode() + b" " * (17 << 20)
    (bundle / "manifest.json").write_bytes(data)
    return f"root={how}", NONE, bundle


MANIFEST_OPS = (
    _m_flip,
    _m_truncate,
    _m_delete_key,
    _m_retype,
    _m_deep_nesting,
    _m_huge_number,
    _m_list_for_string,
    _m_weird_name,
    _m_root,
)


def _mutate_manifest(rng: random.Random, dest: Path, inputs: FuzzInputs) -> Mutation:
    base = rng.choice(BASES)
    bundle = _copy_bundle(inputs.bundles[base], dest / "bundle")
    label, ok, bundle = rng.choice(MANIFEST_OPS)(rng, bundle)
    return Mutation(f"manifest({base}):{label}", bundle, inputs.traj, ok, BUNDLE_COMMANDS)


# --------------------------------------------------------------------------------------------- family 2: onnx


def _o_flip(rng, data):
    positions = sorted(rng.randrange(len(data)) for _ in range(rng.randint(1, 4)))
    for pos in positions:
        data = _flip(data, pos, rng)
    return f"flip@{','.join(map(str, positions))}", ALL, data


def _o_truncate(rng, data):
    n = rng.randrange(len(data))
    return f"truncate@{n}", NONE, data[:n]


def _o_splice(rng, data):
    a, b, length = rng.randrange(len(data)), rng.randrange(len(data)), rng.randint(1, 4096)
    chunk = data[a : a + length]
    if rng.random() < 0.5:
        return f"splice-insert@{a}->{b}+{len(chunk)}", ALL, data[:b] + chunk + data[b:]
    return f"splice-over@{a}->{b}+{len(chunk)}", ALL, data[:b] + chunk + data[b + len(chunk) :]


def _o_garbage(rng, data):
    n = rng.choice((0, 1, 16, 4096))
    return f"garbage:{n}-bytes", NONE, rng.randbytes(n)


def _o_lie_length(rng, data):
    n = rng.choice((2**31, 2**40, 2**63 - 1, len(data) + 1))
    return f"graph-length-lie={n}", NONE, b"\x08\x08\x3a" + _varint(n) + data


def _o_append(rng, data):
    n = rng.randint(1, 64)
    return f"append-garbage:{n}", ALL, data + rng.randbytes(n)


ONNX_OPS = (_o_flip, _o_flip, _o_truncate, _o_splice, _o_garbage, _o_lie_length, _o_append)


def _mutate_onnx(rng: random.Random, dest: Path, inputs: FuzzInputs) -> Mutation:
    base = rng.choice(BASES)
    bundle = _copy_bundle(inputs.bundles[base], dest / "bundle")
    label, ok, data = rng.choice(ONNX_OPS)(rng, (bundle / "model.onnx").read_bytes())
    (bundle / "model.onnx").write_bytes(data)
    if rng.random() < 0.15:
        label, ok = label + "+stale-hash", NONE
    else:
        _rehash(bundle)
    return Mutation(f"onnx({base}):{label}", bundle, inputs.traj, ok, BUNDLE_COMMANDS)


# --------------------------------------------------------------------------------------------- npz helpers


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _npy_raw(header: str, payload: bytes = b"", version: int = 1) -> bytes:
    """A .npy file with a hand-written header (padded to 64 bytes like numpy's)."""
    prefix = 10 if version == 1 else 12
    pad = -(prefix + len(header) + 1) % 64
    text = (header + " " * pad + "\n").encode("latin1")
    size = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + payload


def _npy_declaring(shape: tuple, descr: str, payload: bytes) -> bytes:
    return _npy_raw(repr({"descr": descr, "fortran_order": False, "shape": shape}), payload)


def _zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate member names are one of the mutations
        with zipfile.ZipFile(buf, "w", compression) as zf:
            for name, data in members:
                zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, compression)
    return buf.getvalue()


def _npz(arrays: dict[str, np.ndarray], compression: int = zipfile.ZIP_STORED) -> bytes:
    return _zip([(f"{k}.npy", _npy(v)) for k, v in arrays.items()], compression)


def _zip_entries(data: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """(central entry offset, its length, local header offset) per member, and the end record's offset."""
    end = data.rindex(b"PK\x05\x06")
    count, _size, pos = struct.unpack_from("<HII", data, end + 10)
    entries = []
    for _ in range(count):
        n, m, k = struct.unpack_from("<HHH", data, pos + 28)
        local = struct.unpack_from("<I", data, pos + 42)[0]
        entries.append((pos, 46 + n + m + k, local))
        pos += 46 + n + m + k
    return entries, end


#: an npz op's verdict when only the values of the example's reference output were damaged (``bench`` never reads
#: them); REFERENCE_KEY is that output's name in the reference bundles
REFERENCE_ONLY = "reference-only"
REFERENCE_KEY = "prediction"

# Each npz op: (rng, arrays) -> (label, file bytes, verdict): True if the file may still be valid, False if not,
# or REFERENCE_ONLY.


def _z_flip(rng, arrays):
    data = _npz(arrays)
    entries, end = _zip_entries(data)
    central, length, local = rng.choice(entries)
    region = rng.choice(("local-header", "central-dir", "end-record"))
    start, size = {"local-header": (local, 30), "central-dir": (central, length), "end-record": (end, 22)}[region]
    pos = start + rng.randrange(size)
    return f"zip-flip@{region}+{pos - start}", _flip(data, pos, rng), True


def _z_flag_bit(rng, arrays):
    buf = bytearray(_npz(arrays))
    bit, where = rng.choice((0, 0, 3, 5, 6, 11)), rng.choice(("central", "local", "both"))
    entries, _end = _zip_entries(bytes(buf))
    for central, _length, local in entries:
        if where in ("central", "both"):
            _patch_u16(buf, central + 8, struct.unpack_from("<H", buf, central + 8)[0] | 1 << bit)
        if where in ("local", "both"):
            _patch_u16(buf, local + 6, struct.unpack_from("<H", buf, local + 6)[0] | 1 << bit)
    label = "encryption-flag" if bit == 0 else f"flag-bit{bit}"
    return f"{label}@{where}", bytes(buf), where == "local" or bit in (3, 11)


def _z_method(rng, arrays):
    buf = bytearray(_npz(arrays))
    method = rng.choice((1, 6, 8, 9, 12, 14, 93, 99))
    entries, _end = _zip_entries(bytes(buf))
    for central, _length, local in entries:
        _patch_u16(buf, central + 10, method)
        _patch_u16(buf, local + 8, method)
    return f"compression-method={method}", bytes(buf), False


def _z_truncate(rng, arrays):
    data = _npz(arrays)
    n = rng.randrange(len(data))
    return f"truncate@{n}", data[:n], False


def _z_extra_member(rng, arrays):
    members = [(f"{k}.npy", _npy(v)) for k, v in arrays.items()]
    first = next(iter(arrays))
    how = rng.choice(("junk-array", "text", "nested", "duplicate", "weird-name"))
    extra = {
        "junk-array": ("junk.npy", _npy(np.zeros(3))),
        "text": ("readme.txt", b"hello\n"),
        "nested": ("sub/dir/x.npy", _npy(np.ones((2, 12, 3)))),
        "duplicate": (f"{first}.npy", _npy(arrays[first][::-1].copy())),
        "weird-name": (rng.choice(DISK_NAMES) + ".npy", _npy(np.zeros(1))),
    }[how]
    return f"extra-member:{how}", _zip(members + [extra]), True


def _z_zero_frames(rng, arrays):
    return "zero-frames", _npz({k: v[:0] for k, v in arrays.items()}), False


def _z_huge_shape(rng, arrays):
    key = rng.choice(list(arrays))
    arr = arrays[key]
    lead = rng.choice((10**12, 2**62, 2**61 + 1, -1, (300 << 20) // (arr[0].size * arr.itemsize)))
    shape = (lead, *arr.shape[1:])
    member = _npy_declaring(shape, arr.dtype.str, arr[:2].tobytes())
    members = [(f"{k}.npy", member if k == key else _npy(v)) for k, v in arrays.items()]
    return f"huge-shape:{key}={shape}", _zip(members), False


def _z_bad_header(rng, arrays):
    key = rng.choice(list(arrays))
    how = rng.choice(("missing-key", "expression", "nested-parens", "long-v2", "bad-magic"))
    shape = arrays[key].shape
    member = {
        "missing-key": _npy_raw(repr({"descr": "<f4", "shape": shape})),
        "expression": _npy_raw("__import__('os').getcwd()"),
        "nested-parens": _npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 3000 + ")" * 3000 + "}"),
        "long-v2": _npy_raw(repr({"descr": "<f4", "fortran_order": False, "shape": shape}) + " " * 20000, version=2),
        "bad-magic": b"\x93NUMPX\x09\x00" + _npy(arrays[key])[8:],
    }[how]
    members = [(f"{k}.npy", member if k == key else _npy(v)) for k, v in arrays.items()]
    return f"bad-npy-header:{key}:{how}", _zip(members), False


def _z_object_dtype(rng, arrays):
    key = rng.choice(list(arrays))
    obj = np.empty(arrays[key].shape[:1], dtype=object)
    obj[:] = [{"x": 1}] * len(obj)
    members = [(f"{k}.npy", _npy(obj) if k == key else _npy(v)) for k, v in arrays.items()]
    return f"object-dtype:{key}", _zip(members), False


def _z_dtype(rng, arrays):
    descr = rng.choice((">f4", "<f2", "<f8", "<i2", ">u4", "<c8", "|b1", "<U4", "|V4", "<M8[s]"))
    out = {}
    for key, arr in arrays.items():
        kind = np.dtype(descr).kind
        out[key] = arr.view(descr) if kind == "V" else arr.astype(np.int64 if kind == "M" else arr.dtype).astype(descr)
    return f"dtype={descr}", _npz(out), np.dtype(descr).kind in "fiu"


def _z_nonfinite(rng, arrays):
    key = rng.choice(list(arrays))
    value = rng.choice((np.nan, np.inf, -np.inf))
    arr = arrays[key].copy()
    index = tuple(rng.randrange(n) for n in arr.shape)
    arr[index] = value
    verdict = REFERENCE_ONLY if key == REFERENCE_KEY else False
    return f"{value}@{key}{list(index)}", _npz({**arrays, key: arr}), verdict


def _z_wrong_shape(rng, arrays):
    key = rng.choice(list(arrays))
    arr = arrays[key]
    t = len(arr)
    shape = rng.choice(((t, 11, arr.shape[2]), (t, 12, 4), (t, 12, 1), (t, 12), (2, t, 12, arr.shape[2]), (12,), ()))
    new = np.resize(arr, shape) if shape else np.float64(1.0)
    return f"wrong-shape:{key}={shape}", _npz({**arrays, key: np.asarray(new)}), False


def _z_missing(rng, arrays):
    key = rng.choice(list(arrays))
    return f"missing-array:{key}", _npz({k: v for k, v in arrays.items() if k != key}), False


def _z_deflated(rng, arrays):
    fortran = rng.random() < 0.5
    out = {k: np.asfortranarray(v) for k, v in arrays.items()} if fortran else arrays
    return f"deflate{'+fortran' if fortran else ''}", _npz(out, zipfile.ZIP_DEFLATED), True


NPZ_OPS = (
    _z_flip,
    _z_flag_bit,
    _z_flag_bit,
    _z_method,
    _z_truncate,
    _z_extra_member,
    _z_zero_frames,
    _z_huge_shape,
    _z_huge_shape,
    _z_bad_header,
    _z_object_dtype,
    _z_dtype,
    _z_nonfinite,
    _z_wrong_shape,
    _z_missing,
    _z_deflated,
)


# --------------------------------------------------------------------------------------------- family 3: example


def _mutate_example(rng: random.Random, dest: Path, inputs: FuzzInputs) -> Mutation:
    base = rng.choice(BASES)
    bundle = _copy_bundle(inputs.bundles[base], dest / "bundle")
    with np.load(bundle / "example.npz") as z:
        arrays = {k: z[k] for k in z.files}
    label, data, verdict = rng.choice(NPZ_OPS)(rng, arrays)
    (bundle / "example.npz").write_bytes(data)
    ok = NO_EXAMPLE | {"bench"} if verdict == REFERENCE_ONLY else ALL if verdict else NO_EXAMPLE
    if rng.random() < 0.15:
        label, ok = label + "+stale-hash", NONE
    else:
        _rehash(bundle)
    return Mutation(f"example({base}):{label}", bundle, inputs.traj, ok, BUNDLE_COMMANDS)


# --------------------------------------------------------------------------------------------- family 4: archive


def _file_info(name: str, size: int, **pax) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.pax_headers = size, 0o644, pax
    return info


def _special_info(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, target, 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def _bundle_members(files: dict[str, bytes], top: str, with_dir: bool = True) -> list:
    members = [(_special_info(top, tarfile.DIRTYPE), None)] if with_dir else []
    return members + [(_file_info(f"{top}/{name}", len(data)), data) for name, data in sorted(files.items())]


def _patch_tar_size(tar: bytes, member: str, size: int) -> bytes:
    """Rewrite the ustar size field (and checksum) of ``member``'s header block."""
    buf = bytearray(tar)
    pos = 0
    while pos + 512 <= len(buf):
        name = bytes(buf[pos : pos + 100]).rstrip(b"\0").decode()
        if name == member:
            buf[pos + 124 : pos + 136] = f"{size:011o}\0".encode()
            buf[pos + 148 : pos + 156] = b" " * 8
            buf[pos + 148 : pos + 156] = f"{sum(buf[pos : pos + 512]):06o}\0 ".encode()
            return bytes(buf)
        declared = int(bytes(buf[pos + 124 : pos + 136]).rstrip(b"\0 ") or b"0", 8)
        pos += 512 + -(-declared // 512) * 512
    raise AssertionError(member)


def _a_gzip_bytes(rng, files, archive):
    how = rng.choice(("flip", "flip", "truncate", "trailing-garbage", "concat", "header-flags", "plain-tar", "garbage"))
    if how == "flip":
        pos = rng.randrange(len(archive))
        return f"gz-flip@{pos}", _flip(archive, pos, rng), ALL
    if how == "truncate":
        n = rng.randrange(int(len(archive) * 0.9))
        return f"gz-truncate@{n}", archive[:n], NONE
    if how == "trailing-garbage":
        return "gz-trailing-garbage", archive + rng.randbytes(rng.randint(1, 600)), ALL
    if how == "concat":
        return "gz-concat", archive + archive, ALL
    if how == "header-flags":
        flags = rng.choice((0x02, 0x04, 0x08, 0x10, 0xE0))
        return f"gz-header-flags={flags:#x}", archive[:3] + bytes([flags]) + archive[4:], ALL
    if how == "plain-tar":
        return "plain-tar-not-gzip", gzip.decompress(archive), NONE
    return "gzip-of-garbage", gzip.compress(rng.randbytes(4096), mtime=0), NONE


def _a_members(rng, files, archive):
    top = "sim-e3nn"
    members = _bundle_members(files, top)
    how = rng.choice(
        (
            "extra",
            "duplicate",
            "symlink",
            "hardlink",
            "absolute",
            "dotdot",
            "nested",
            "two-tops",
            "empty",
            "fifo",
            "chardev",
            "many",
            "weird-extra",
        )
    )
    if how == "extra":
        members.append((_file_info(f"{top}/extra.txt", 3), b"hi\n"))
    elif how == "duplicate":
        info, data = rng.choice(members[1:])
        members.append((_file_info(info.name, len(data)), data))
    elif how in ("symlink", "hardlink"):
        target = rng.choice(("/etc/passwd", "example.npz", f"{top}/example.npz", "../../../../etc/hostname"))
        kind = tarfile.SYMTYPE if how == "symlink" else tarfile.LNKTYPE
        members = [m for m in members if not m[0].name.endswith("model.onnx")]
        members.append((_special_info(f"{top}/model.onnx", kind, target), None))
        how += f"->{target}"
    elif how == "absolute":
        members = [(_file_info("/" + info.name, info.size), data) for info, data in members if data is not None]
    elif how == "dotdot":
        name = rng.choice(("../evil.txt", f"{top}/../evil.txt", f"{top}/../{top}/extra.txt"))
        members.append((_file_info(name, 3), b"hi\n"))
        how += f":{name}"
    elif how == "nested":
        members.append((_special_info(f"{top}/sub", tarfile.DIRTYPE), None))
        members.append((_file_info(f"{top}/sub/model.onnx", len(files["model.onnx"])), files["model.onnx"]))
    elif how == "two-tops":
        members += _bundle_members(files, "other")
    elif how == "empty":
        members = []
    elif how in ("fifo", "chardev"):
        kind = tarfile.FIFOTYPE if how == "fifo" else tarfile.CHRTYPE
        members.append((_special_info(f"{top}/dev", kind), None))
    elif how == "many":
        members += [(_file_info(f"{top}/f{i:03d}", 1), b"x") for i in range(80)]
    else:
        name = rng.choice(DISK_NAMES)
        members.append((_file_info(f"{top}/{name}", 3), b"hi\n"))
        how += f"={name!r}"
    return f"tar:{how}", gzip.compress(_tar(members), mtime=0), NONE


def _a_headers(rng, files, archive):
    top = "sim-e3nn"
    how = rng.choice(("huge-pax", "pax-size", "pax-path", "wrong-size", "weird-top", "weird-top-broken", "layout"))
    if how == "huge-pax":
        n = rng.choice((1 << 20, 8 << 20, 30 << 20))
        members = _bundle_members(files, top)
        members[1][0].pax_headers = {"comment": "x" * n}
        return f"tar:huge-pax={n}", gzip.compress(_tar(members), mtime=0, compresslevel=1), ALL
    if how in ("pax-size", "pax-path"):
        value = rng.choice(("0", "1", "-1", "99999999999999999999", "1e3", "")) if how == "pax-size" else None
        value = value if value is not None else rng.choice(("../x", "/etc/x", f"{top}/sub/x", f"{top}/\n"))
        members = _bundle_members(files, top)
        members[-1][0].pax_headers = {how[4:]: value}
        try:
            data = gzip.compress(_tar(members), mtime=0)
        except (ValueError, tarfile.TarError, OSError):
            return f"tar:{how}={value!r}(unbuildable)", archive[:100], NONE
        return f"tar:{how}={value!r}", data, NONE
    if how == "wrong-size":
        name = rng.choice(sorted(files))
        delta = rng.choice((-1, 1, 512, 10**9, -len(files[name])))
        tar = _tar(_bundle_members(files, top), fmt=tarfile.USTAR_FORMAT)
        patched = _patch_tar_size(tar, f"{top}/{name}", len(files[name]) + delta)
        return f"tar:wrong-size:{name}{delta:+d}", gzip.compress(patched, mtime=0), NONE
    if how in ("weird-top", "weird-top-broken"):
        weird = rng.choice(DISK_NAMES)
        members = _bundle_members(files, weird)
        if how == "weird-top-broken":
            members.append((_file_info(f"{weird}/extra.txt", 3), b"hi\n"))
        return f"tar:{how}={weird!r}", gzip.compress(_tar(members), mtime=0), ALL if how == "weird-top" else NONE
    layout = rng.choice(("no-dir-entry", "reversed", "ustar", "gnu"))
    members = _bundle_members(files, top, with_dir=layout != "no-dir-entry")
    members = members[::-1] if layout == "reversed" else members
    fmt = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT}.get(layout, tarfile.PAX_FORMAT)
    return f"tar:layout={layout}", gzip.compress(_tar(members, fmt=fmt), mtime=0), ALL


ARCHIVE_OPS = (_a_gzip_bytes, _a_members, _a_members, _a_headers)


def _mutate_archive(rng: random.Random, dest: Path, inputs: FuzzInputs) -> Mutation:
    src = inputs.bundles["sim-e3nn"]
    files = {p.name: p.read_bytes() for p in sorted(src.iterdir())}
    label, data, ok = rng.choice(ARCHIVE_OPS)(rng, files, inputs.archive.read_bytes())
    dest.mkdir(parents=True)
    path = dest / "bundle.tar.gz"
    path.write_bytes(data)
    return Mutation(f"archive(sim-e3nn):{label}", path, inputs.traj, ok - {"pack"}, BUNDLE_COMMANDS)


# --------------------------------------------------------------------------------------------- family 5: traj


def _t_npz(rng, frames, bundle_base):
    label, data, verdict = rng.choice(NPZ_OPS)(rng, {"arr": frames})
    return label, "traj.npz", data, TRAJ_OK if verdict is True else NONE


def _t_frames(rng, frames, bundle_base):
    how = rng.choice(("one-frame", "two-frames", "extreme", "single-other-key", "two-keys-no-arr", "int"))
    if how == "one-frame":
        ok = frozenset({"rollout"}) if bundle_base == "sim-e3nn" else NONE
        return how, "traj.npz", _npz({"arr": frames[:1]}), ok
    if how == "two-frames":
        return how, "traj.npz", _npz({"arr": frames[:2]}), frozenset({"rollout"})
    if how == "extreme":
        value = rng.choice((1e30, 1e38, 1e200, -1e308))
        return f"extreme={value:g}", "traj.npz", _npz({"arr": frames * 0 + value}), TRAJ_OK
    if how == "single-other-key":
        return how, "traj.npz", _npz({"positions": frames}), TRAJ_OK
    if how == "two-keys-no-arr":
        return how, "traj.npz", _npz({"a": frames, "b": frames}), NONE
    return how, "traj.npz", _npz({"arr": (frames * 1000).astype(np.int64)}), TRAJ_OK


def _t_npy(rng, frames, bundle_base):
    how = rng.choice(("plain", "truncated", "huge-shape", "negative-shape", "object", "v3-header", "bad-header"))
    if how == "plain":
        return "npy:plain", "traj.npy", _npy(frames), TRAJ_OK
    if how == "truncated":
        data = _npy(frames)
        n = rng.randrange(len(data))
        return f"npy:truncate@{n}", "traj.npy", data[:n], NONE
    if how in ("huge-shape", "negative-shape"):
        lead = rng.choice((10**12, 2**62, (900 << 20) // 192)) if how == "huge-shape" else -5
        shape = (lead, 12, 2)
        return f"npy:shape={shape}", "traj.npy", _npy_declaring(shape, "<f8", frames[:1].tobytes()), NONE
    if how == "object":
        obj = np.empty(3, dtype=object)
        return "npy:object-dtype", "traj.npy", _npy(obj), NONE
    if how == "v3-header":
        raw = _npy_raw(repr({"descr": "<f8", "fortran_order": False, "shape": frames.shape}), frames.tobytes(), 2)
        return "npy:v3-header", "traj.npy", raw[:6] + b"\x03" + raw[7:], TRAJ_OK
    return "npy:bad-header", "traj.npy", _npy_raw("{'descr': 'f8', 'shape': (1,2,3) ,", b""), NONE


def _t_files(rng, frames, bundle_base):
    how = rng.choice(("empty", "text", "pk-only", "weird-name+nan"))
    if how == "empty":
        return "file:empty", "traj.npz", b"", NONE
    if how == "text":
        return "file:text", "traj.npz", b"hello, world\n", NONE
    if how == "pk-only":
        return "file:pk-magic", "traj.npz", b"PK\x03\x04" + rng.randbytes(64), NONE
    bad = frames.copy()
    bad[3, 4, 0] = np.nan
    name = rng.choice(DISK_NAMES) + ".npz"
    return f"file:name={name!r}+nan", name, _npz({"arr": bad}), NONE


TRAJ_OPS = (_t_npz, _t_npz, _t_npz, _t_frames, _t_npy, _t_files)


def _mutate_traj(rng: random.Random, dest: Path, inputs: FuzzInputs) -> Mutation:
    base = rng.choice(BASES)
    with np.load(inputs.traj) as z:
        frames = z["arr"]
    label, name, data, ok = rng.choice(TRAJ_OPS)(rng, frames, base)
    dest.mkdir(parents=True)
    path = dest / name
    path.write_bytes(data)
    return Mutation(f"traj({base}):{label}", inputs.bundles[base], path, ok, TRAJ_COMMANDS)


MUTATORS: dict[str, Callable[[random.Random, Path, FuzzInputs], Mutation]] = {
    "manifest": _mutate_manifest,
    "onnx": _mutate_onnx,
    "example": _mutate_example,
    "archive": _mutate_archive,
    "traj": _mutate_traj,
}


# --------------------------------------------------------------------------------------------- fixtures and test


def _pristine_archive(bundle: Path) -> bytes:
    """What ``e3traj pack`` writes: one top-level folder, sorted members, PAX headers, gzip without mtime."""
    files = {p.name: p.read_bytes() for p in sorted(bundle.iterdir())}
    return gzip.compress(_tar(_bundle_members(files, bundle.name)), mtime=0)


@pytest.fixture(scope="module")
def fuzz_inputs(tmp_path_factory) -> FuzzInputs:
    """Copies of two reference bundles, a packed archive of sim-e3nn and a 64-frame simulated trajectory.

    If ``e3traj pack`` fails on the pristine bundle, an equivalent archive is built here so the other cases still
    run, and the failure is reported with the fuzz failures (``setup_failures``).
    """
    root = tmp_path_factory.mktemp("fuzz-inputs")
    bundles = {name: _copy_bundle(ARTIFACTS / name, root / name) for name in BASES}
    archive, traj = root / "sim-e3nn.tar.gz", root / "traj.npz"
    simulate = subprocess.run(
        [str(E3TRAJ), "simulate", "--frames", "64", "-o", str(traj)], cwd=root, capture_output=True, timeout=TIMEOUT_S
    )
    assert simulate.returncode == 0, simulate.stderr.decode(errors="replace")
    pack = subprocess.run(
        [str(E3TRAJ), "pack", str(bundles["sim-e3nn"]), "-o", str(archive)],
        cwd=root,
        capture_output=True,
        timeout=TIMEOUT_S,
    )
    setup_failures = []
    if pack.returncode != 0 or not archive.is_file():
        stderr = pack.stderr.decode("utf-8", "replace")
        setup_failures.append(
            f"setup: e3traj pack of the pristine sim-e3nn exited {pack.returncode}: {stderr[-300:]!r}"
        )
        archive.write_bytes(_pristine_archive(bundles["sim-e3nn"]))
    return FuzzInputs(bundles=bundles, archive=archive, traj=traj, setup_failures=tuple(setup_failures))


def _relative(args: list[str], case_dir: Path, inputs: FuzzInputs) -> str:
    text = " ".join(args)
    for folder, short in ((case_dir, "CASE"), (inputs.traj.parent, "INPUTS")):
        text = text.replace(str(folder), short)
    return text


def _run_case(
    case_dir: Path, mutation: Mutation, command: str, rng: random.Random, inputs: FuzzInputs, rss_before: int
) -> list[str]:
    """Run one command on one mutation; return its failure lines."""
    run_dir = case_dir / f"run-{command}"
    dirs = {"output folder": run_dir / "out", "cwd": run_dir / "cwd", "TMPDIR": run_dir / "tmp"}
    for folder in dirs.values():
        folder.mkdir(parents=True)
    args, outputs = _command_args(command, mutation, dirs["output folder"], rng)
    case_id = f"{mutation.label} -> {command}"
    proc = _run_e3traj(args, dirs["cwd"], dirs["TMPDIR"])
    if proc is None:
        return [f"{case_id}: timed out after {TIMEOUT_S} s [{_relative(args, case_dir, inputs)}]"]
    problems = _judge(command, mutation.ok, proc, outputs, dirs)
    rss = _children_max_rss_kib()
    if rss > MAX_RSS_KIB and rss > rss_before:
        problems.append(f"max RSS of the children {rss // 1024} MiB (limit {MAX_RSS_KIB // 1024} MiB)")
    if not problems:
        return []
    stderr = proc.stderr.decode("utf-8", "replace")[:300]
    return [
        f"{case_id}: {'; '.join(problems)} (exit {proc.returncode}) "
        f"[{_relative(args, case_dir, inputs)}] stderr: {stderr!r}"
    ]


def test_host_commands_survive_fuzzed_inputs(fuzz_inputs, tmp_path):
    rng = random.Random(SEED)
    failures: list[str] = list(fuzz_inputs.setup_failures)
    n_cases = n_commands = 0
    order: list[str] = []
    start = time.monotonic()
    while n_cases < MAX_CASES and (n_cases < MIN_CASES or time.monotonic() - start < BUDGET_S):
        if not order:  # every block of five cases covers each family once, in a seeded order
            order = sorted(MUTATORS)
            rng.shuffle(order)
        case_dir = tmp_path / f"case{n_cases:03d}"
        mutation = MUTATORS[order.pop()](rng, case_dir / "input", fuzz_inputs)
        commands = rng.sample(mutation.commands, min(COMMANDS_PER_CASE, len(mutation.commands)))
        case_failures = []
        for command in commands:
            rss_before = _children_max_rss_kib()
            case_failures += _run_case(case_dir, mutation, command, rng, fuzz_inputs, rss_before)
            n_commands += 1
        if not case_failures:
            shutil.rmtree(case_dir, ignore_errors=True)  # keep only the failing cases on disk
        failures += case_failures
        n_cases += 1
    elapsed = time.monotonic() - start
    print(f"\nfuzz: {n_cases} cases, {n_commands} commands, {len(failures)} failures, {elapsed:.1f} s")
    assert n_cases >= MIN_CASES, f"only {n_cases} cases ran"
    shown = "\n".join(failures[:MAX_SHOWN])
    more = f"\n... and {len(failures) - MAX_SHOWN} more" if len(failures) > MAX_SHOWN else ""
    assert not failures, f"{len(failures)} of {n_commands} fuzzed host commands misbehaved:\n{shown}{more}"
