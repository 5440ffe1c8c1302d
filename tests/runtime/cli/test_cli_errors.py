"""The CLI's error funnel (runtime/cli/__init__.py): every bad input file or name is a one-line error, no traceback.

Bad bundles and archives: test_cli_errors_bundles.py.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

# --------------------------------------------------------------------------------------------- rollout: bad INIT


def _npy_with_header(path, shape, descr="<f8"):
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": descr, "fortran_order": False, "shape": shape})
        fh.write(b"\0" * 64)


def _bad_nan(p):
    a = np.zeros((4, 12, 2))
    a[2, 3, 1] = np.nan
    np.savez(p, arr=a)


def _bad_inf(p):
    a = np.zeros((4, 12, 3))
    a[1, 0, 0] = np.inf
    np.savez(p, arr=a)


def _bad_beads11(p):
    np.savez(p, arr=np.zeros((4, 11, 2)))


def _bad_beads13(p):
    np.savez(p, arr=np.zeros((4, 13, 3)))


def _bad_rank1(p):
    np.savez(p, arr=np.zeros(36))


def _bad_rank4(p):
    np.savez(p, arr=np.zeros((2, 4, 12, 3)))


def _bad_coords4(p):
    np.savez(p, arr=np.zeros((4, 12, 4)))


def _bad_empty(p):
    p.write_bytes(b"")


def _bad_object(p):
    np.savez(p, arr=np.array([np.zeros(3), "x"], dtype=object))


def _bad_truncated(p):
    np.savez(p, arr=np.zeros((50, 12, 2)))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _bad_huge_npz(p):
    tmp = p.with_suffix(".npy.part")
    _npy_with_header(tmp, (10**9, 12, 3))
    with zipfile.ZipFile(p, "w") as zf:
        zf.write(tmp, "arr.npy")
    tmp.unlink()


def _bad_huge_npy(p):
    _npy_with_header(p, (10**10, 12, 2))


def _bad_text(p):
    p.write_text("0 0 0\n")


BAD_INITS = [
    _bad_nan,
    _bad_inf,
    _bad_beads11,
    _bad_beads13,
    _bad_rank1,
    _bad_rank4,
    _bad_coords4,
    _bad_empty,
    _bad_object,
    _bad_truncated,
    _bad_huge_npz,
    _bad_huge_npy,
    _bad_text,
]
BAD_FRAGMENTS = {
    "nan": "non-finite",
    "inf": "non-finite",
    "beads11": "11 beads",
    "beads13": "13 beads",
    "rank1": "rank 1",
    "rank4": "rank 4",
    "coords4": "4 coordinates",
    "empty": "empty",
    "object": "object",
    "truncated": "truncated",
    "huge_npz": "limit",
    "huge_npy": "limit",
    "text": "not an .npz",
}


@pytest.mark.parametrize("make", BAD_INITS, ids=[f.__name__[5:] for f in BAD_INITS])
def test_bad_init_is_one_line_exit_3_and_writes_nothing(cli, toy_bundle, tmp_path, make, cli_error, no_leftovers):
    work = tmp_path / "work"
    work.mkdir()
    init = work / ("init.npy" if make is _bad_huge_npy else "init.npz")
    make(init)
    r = cli("rollout", toy_bundle, init, "-o", work / "out.npz", "--steps", 3, "--xyz", work / "out.xyz")
    cli_error(r, 3, str(init), BAD_FRAGMENTS[make.__name__[5:]])
    no_leftovers(work, "out.npz", "out.xyz")


# --------------------------------------------------------------------------------------------- hostile input (issue 15)


def _set_zip_flags(path: Path, flag: int) -> None:
    data = bytearray(path.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            data[i + offset] |= flag
            start = i + 4
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("flag", [0x01, 0x40], ids=["encrypted", "strong-encryption"])
def test_encrypted_zip_members_are_one_line(cli, toy_bundle, toys, tmp_path, flag, cli_error):
    init = tmp_path / "init.npz"
    np.savez(init, arr=toys.make_traj(10))
    _set_zip_flags(init, flag)
    r = cli("rollout", toy_bundle, init, "--steps", 2, "-o", tmp_path / "r.npz")
    cli_error(r, 3, "init.npz")
    _set_zip_flags(toy_bundle / "example.npz", flag)
    toys.rehash(toy_bundle)
    cli_error(cli("check", toy_bundle), 3, "example.npz")


def test_a_malformed_npy_header_is_one_line(cli, toy_bundle, tmp_path, cli_error):
    bad = tmp_path / "bad.npy"
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 12,"  # never closed
    bad.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    cli_error(cli("rollout", toy_bundle, bad, "--steps", 2, "-o", tmp_path / "r.npz"), 3, "bad.npy")


def test_control_characters_in_names_are_escaped(cli, toy_bundle, tmp_path, cli_error):
    evil = tmp_path / "evil\x1b[31m\nname"
    shutil.copytree(toy_bundle, evil)
    (evil / "stray.txt").write_text("x")
    line = cli_error(cli("check", evil), 3, "evil\\x1b[31m\\nname", "stray.txt")
    assert "\x1b" not in line
    r = cli("rollout", toy_bundle, tmp_path / "no\x07such.npz", "--steps", 1, "-o", tmp_path / "r.npz")
    assert "\x07" not in cli_error(r, 3, "no\\x07such.npz")


def test_an_over_long_output_name_is_one_line(cli, toy_bundle, traj_file, tmp_path, cli_error):
    out = tmp_path / ("x" * 300 + ".npz")
    r = cli("rollout", toy_bundle, traj_file, "--steps", 1, "-o", out)
    cli_error(r, 3, "File name too long", "use a shorter name")
    assert os.listdir(tmp_path) == sorted(os.listdir(tmp_path)) and not any(
        n.startswith(".") for n in os.listdir(tmp_path)
    )
