"""The zip- and ``.npy``-level mutations of the fuzz test (see :mod:`_fuzz`), shared by two families: the bundle's
``example.npz`` (``test_fuzz_example.py``) and the trajectory given to the host commands (``test_fuzz_traj.py``).

Zip level: header and central-directory flips, flag bits such as encryption, compression methods, truncation,
extra and duplicate members. Array level: 0 frames, huge or negative shapes declared in the ``.npy`` header, bad
headers, object and other dtypes, NaN/Inf, wrong shapes, missing arrays, deflate and Fortran order.
"""

from __future__ import annotations

import io
import struct
import warnings
import zipfile

import numpy as np
from _fuzz import DISK_NAMES, flip


def _patch_u16(buf: bytearray, pos: int, value: int) -> None:
    struct.pack_into("<H", buf, pos, value)


# --------------------------------------------------------------------------------------------- npz helpers


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def npy_raw(header: str, payload: bytes = b"", version: int = 1) -> bytes:
    """A .npy file with a hand-written header (padded to 64 bytes like numpy's)."""
    prefix = 10 if version == 1 else 12
    pad = -(prefix + len(header) + 1) % 64
    text = (header + " " * pad + "\n").encode("latin1")
    size = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + payload


def npy_declaring(shape: tuple, descr: str, payload: bytes) -> bytes:
    return npy_raw(repr({"descr": descr, "fortran_order": False, "shape": shape}), payload)


def _zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate member names are one of the mutations
        with zipfile.ZipFile(buf, "w", compression) as zf:
            for name, data in members:
                zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, compression)
    return buf.getvalue()


def npz(arrays: dict[str, np.ndarray], compression: int = zipfile.ZIP_STORED) -> bytes:
    return _zip([(f"{k}.npy", npy(v)) for k, v in arrays.items()], compression)


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
    data = npz(arrays)
    entries, end = _zip_entries(data)
    central, length, local = rng.choice(entries)
    region = rng.choice(("local-header", "central-dir", "end-record"))
    start, size = {"local-header": (local, 30), "central-dir": (central, length), "end-record": (end, 22)}[region]
    pos = start + rng.randrange(size)
    return f"zip-flip@{region}+{pos - start}", flip(data, pos, rng), True


def _z_flag_bit(rng, arrays):
    buf = bytearray(npz(arrays))
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
    buf = bytearray(npz(arrays))
    method = rng.choice((1, 6, 8, 9, 12, 14, 93, 99))
    entries, _end = _zip_entries(bytes(buf))
    for central, _length, local in entries:
        _patch_u16(buf, central + 10, method)
        _patch_u16(buf, local + 8, method)
    return f"compression-method={method}", bytes(buf), False


def _z_truncate(rng, arrays):
    data = npz(arrays)
    n = rng.randrange(len(data))
    return f"truncate@{n}", data[:n], False


def _z_extra_member(rng, arrays):
    members = [(f"{k}.npy", npy(v)) for k, v in arrays.items()]
    first = next(iter(arrays))
    how = rng.choice(("junk-array", "text", "nested", "duplicate", "weird-name"))
    extra = {
        "junk-array": ("junk.npy", npy(np.zeros(3))),
        "text": ("readme.txt", b"hello\n"),
        "nested": ("sub/dir/x.npy", npy(np.ones((2, 12, 3)))),
        "duplicate": (f"{first}.npy", npy(arrays[first][::-1].copy())),
        "weird-name": (rng.choice(DISK_NAMES) + ".npy", npy(np.zeros(1))),
    }[how]
    return f"extra-member:{how}", _zip(members + [extra]), True


def _z_zero_frames(rng, arrays):
    return "zero-frames", npz({k: v[:0] for k, v in arrays.items()}), False


def _z_huge_shape(rng, arrays):
    key = rng.choice(list(arrays))
    arr = arrays[key]
    lead = rng.choice((10**12, 2**62, 2**61 + 1, -1, (300 << 20) // (arr[0].size * arr.itemsize)))
    shape = (lead, *arr.shape[1:])
    member = npy_declaring(shape, arr.dtype.str, arr[:2].tobytes())
    members = [(f"{k}.npy", member if k == key else npy(v)) for k, v in arrays.items()]
    return f"huge-shape:{key}={shape}", _zip(members), False


def _z_bad_header(rng, arrays):
    key = rng.choice(list(arrays))
    how = rng.choice(("missing-key", "expression", "nested-parens", "long-v2", "bad-magic"))
    shape = arrays[key].shape
    member = {
        "missing-key": npy_raw(repr({"descr": "<f4", "shape": shape})),
        "expression": npy_raw("__import__('os').getcwd()"),
        "nested-parens": npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 3000 + ")" * 3000 + "}"),
        "long-v2": npy_raw(repr({"descr": "<f4", "fortran_order": False, "shape": shape}) + " " * 20000, version=2),
        "bad-magic": b"\x93NUMPX\x09\x00" + npy(arrays[key])[8:],
    }[how]
    members = [(f"{k}.npy", member if k == key else npy(v)) for k, v in arrays.items()]
    return f"bad-npy-header:{key}:{how}", _zip(members), False


def _z_object_dtype(rng, arrays):
    key = rng.choice(list(arrays))
    obj = np.empty(arrays[key].shape[:1], dtype=object)
    obj[:] = [{"x": 1}] * len(obj)
    members = [(f"{k}.npy", npy(obj) if k == key else npy(v)) for k, v in arrays.items()]
    return f"object-dtype:{key}", _zip(members), False


def _z_dtype(rng, arrays):
    descr = rng.choice((">f4", "<f2", "<f8", "<i2", ">u4", "<c8", "|b1", "<U4", "|V4", "<M8[s]"))
    out = {}
    for key, arr in arrays.items():
        kind = np.dtype(descr).kind
        out[key] = arr.view(descr) if kind == "V" else arr.astype(np.int64 if kind == "M" else arr.dtype).astype(descr)
    return f"dtype={descr}", npz(out), np.dtype(descr).kind in "fiu"


def _z_nonfinite(rng, arrays):
    key = rng.choice(list(arrays))
    value = rng.choice((np.nan, np.inf, -np.inf))
    arr = arrays[key].copy()
    index = tuple(rng.randrange(n) for n in arr.shape)
    arr[index] = value
    verdict = REFERENCE_ONLY if key == REFERENCE_KEY else False
    return f"{value}@{key}{list(index)}", npz({**arrays, key: arr}), verdict


def _z_wrong_shape(rng, arrays):
    key = rng.choice(list(arrays))
    arr = arrays[key]
    t = len(arr)
    shape = rng.choice(((t, 11, arr.shape[2]), (t, 12, 4), (t, 12, 1), (t, 12), (2, t, 12, arr.shape[2]), (12,), ()))
    new = np.resize(arr, shape) if shape else np.float64(1.0)
    return f"wrong-shape:{key}={shape}", npz({**arrays, key: np.asarray(new)}), False


def _z_missing(rng, arrays):
    key = rng.choice(list(arrays))
    return f"missing-array:{key}", npz({k: v for k, v in arrays.items() if k != key}), False


def _z_deflated(rng, arrays):
    fortran = rng.random() < 0.5
    out = {k: np.asfortranarray(v) for k, v in arrays.items()} if fortran else arrays
    return f"deflate{'+fortran' if fortran else ''}", npz(out, zipfile.ZIP_DEFLATED), True


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
