"""Packing a bundle into one .tar.gz and unpacking archives safely."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from e3traj.runtime import Bundle, _tar, pack_bundle, unpack_bundle, verify_bundle
from e3traj.runtime._errors import InputError, UsageError


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    return _special(name, tarfile.DIRTYPE)


def _bundle_members(bundle: Path, top: str = "b") -> list:
    return [_dir(top)] + [_file(f"{top}/{p.name}", p.read_bytes()) for p in sorted(bundle.iterdir())]


def test_pack_then_open_the_archive(toy_bundle, tmp_path):
    out = pack_bundle(toy_bundle, tmp_path / "toy.tar.gz")
    assert out == tmp_path / "toy.tar.gz"
    with tarfile.open(out) as tf:
        names = tf.getnames()
        assert names == ["toy", "toy/example.npz", "toy/manifest.json", "toy/model.onnx"]
        assert all(m.mtime == 0 and m.uid == 0 and (m.isdir() or m.isfile()) for m in tf.getmembers())
    x = np.random.default_rng(0).normal(size=(3, 12, 3))
    with Bundle.open(toy_bundle) as plain, Bundle.open(out) as packed:
        assert packed.sha256 == plain.sha256 and packed.path == out
        np.testing.assert_array_equal(packed.predict({"positions": x}), plain.predict({"positions": x}))
        assert packed.root is None and plain.root == toy_bundle  # an archive is read in memory, never extracted
        assert packed.recheck_example() <= 1e-5
    assert verify_bundle(out)["files"] == verify_bundle(toy_bundle)["files"]


def test_opening_or_verifying_an_archive_writes_nothing(toy_bundle, tmp_path, monkeypatch):
    archive = pack_bundle(toy_bundle, tmp_path / "toy.tar.gz")
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with Bundle.open(archive) as b:
        assert b.recheck_example() <= 1e-5
        assert list(spool.iterdir()) == []
    verify_bundle(archive)
    assert list(spool.iterdir()) == []


def test_pack_is_reproducible_and_atomic(toy_bundle, tmp_path):
    a = pack_bundle(toy_bundle, tmp_path / "a.tgz")
    b = pack_bundle(toy_bundle, tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    assert sorted(os.listdir(tmp_path)) == sorted(["a.tgz", "b.tar.gz", "toy"])


def test_pack_refuses_bad_outputs(toy_bundle, tmp_path, one_line):
    with pytest.raises(UsageError) as e:
        pack_bundle(toy_bundle, toy_bundle / "inside.tar.gz")
    one_line(e, "inside the bundle folder")
    assert not (toy_bundle / "inside.tar.gz").exists()
    with pytest.raises(UsageError) as e:
        pack_bundle(toy_bundle, tmp_path / "toy.zip")
    one_line(e, ".tar.gz")
    (tmp_path / "exists.tar.gz").write_bytes(b"old")
    with pytest.raises(UsageError) as e:
        pack_bundle(toy_bundle, tmp_path / "exists.tar.gz")
    one_line(e, "already exists", "--force")
    assert (tmp_path / "exists.tar.gz").read_bytes() == b"old"
    pack_bundle(toy_bundle, tmp_path / "exists.tar.gz", force=True)
    assert tarfile.is_tarfile(tmp_path / "exists.tar.gz")
    with pytest.raises(UsageError) as e:  # an archive is not a folder
        pack_bundle(tmp_path / "exists.tar.gz", tmp_path / "again.tar.gz")
    one_line(e, "not a bundle folder")


def test_pack_verifies_first_and_leaves_nothing(make_bundle, tmp_path, one_line, no_leftovers):
    path = make_bundle("toy", "broken")
    (path / "stray.txt").write_text("x")
    with pytest.raises(InputError) as e:
        pack_bundle(path, tmp_path / "broken.tar.gz")
    one_line(e, "stray.txt", "not listed")
    no_leftovers(tmp_path, "broken.tar.gz")


def test_unpack_bundle_returns_a_verified_folder(toy_bundle, tmp_path):
    archive = pack_bundle(toy_bundle, tmp_path / "toy.tar.gz")
    dest = tmp_path / "dest"
    root = unpack_bundle(archive, dest)
    assert root == dest / "toy" and sorted(os.listdir(dest)) == ["toy"]
    assert verify_bundle(root)["files"] == json.loads((toy_bundle / "manifest.json").read_text())["files"]
    with pytest.raises(UsageError, match="already exists"):
        unpack_bundle(archive, dest)


BAD_ARCHIVES = {
    "dotdot": (lambda b: _bundle_members(b) + [_file("b/../../escape.txt")], "'..'"),
    "dotdot_top": (lambda b: [_file("../escape.txt")], "'..'"),
    "absolute": (lambda b: [_file("/tmp/e3traj-abs-escape.txt")], "absolute path"),
    "symlink": (lambda b: [_dir("b"), _special("b/model.onnx", tarfile.SYMTYPE, "/etc/passwd")], "is a link"),
    "hardlink": (lambda b: [_dir("b"), _special("b/model.onnx", tarfile.LNKTYPE, "b/x")], "is a link"),
    "fifo": (lambda b: [_dir("b"), _special("b/pipe", tarfile.FIFOTYPE)], "device or FIFO"),
    "chardev": (lambda b: [_dir("b"), _special("b/null", tarfile.CHRTYPE)], "device or FIFO"),
    "two_tops": (lambda b: _bundle_members(b, "b") + [_dir("c")], "more than one top-level"),
    "top_file": (lambda b: [_file("manifest.json", b"{}")], "directly inside one top-level folder"),
    "subfolder": (lambda b: [_dir("b"), _dir("b/sub")], "subfolder"),
    "nested_file": (lambda b: [_dir("b"), _file("b/sub/x.txt")], "directly inside"),
    "duplicate": (lambda b: [_file("b/a"), _file("b/a")], "appears twice"),
    "empty": (lambda b: [], "empty"),
    "tampered": (
        lambda b: (
            [_dir("b")]
            + [
                _file(f"b/{p.name}", p.read_bytes()[:-1] if p.name == "model.onnx" else p.read_bytes())
                for p in sorted(b.iterdir())
            ]
        ),
        "size",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_unpack_refuses_unsafe_archives(toy_bundle, tmp_path, case, one_line):
    build, fragment = BAD_ARCHIVES[case]
    archive = _write_tar(tmp_path / f"{case}.tar.gz", build(toy_bundle))
    dest = tmp_path / "dest"
    with pytest.raises(InputError) as e:
        unpack_bundle(archive, dest)
    one_line(e, str(archive), fragment)
    assert not dest.exists()  # refused in memory, before anything was written
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/e3traj-abs-escape.txt").exists()
    with pytest.raises(InputError):  # Bundle.open runs the same checks
        Bundle.open(archive)


def test_unpack_refuses_oversized_and_crowded_archives(toy_bundle, tmp_path, monkeypatch, one_line):
    archive = _write_tar(tmp_path / "big.tar.gz", [_dir("b"), _file("b/blob", b"\0" * 5000)])
    monkeypatch.setattr(_tar, "MAX_ARCHIVE_BYTES", 4096)
    with pytest.raises(InputError) as e:
        unpack_bundle(archive, tmp_path / "d1")
    one_line(e, "4096 bytes")
    monkeypatch.undo()
    crowded = _write_tar(tmp_path / "crowded.tar.gz", [_dir("b")] + [_file(f"b/f{i}") for i in range(70)])
    with pytest.raises(InputError) as e:
        unpack_bundle(crowded, tmp_path / "d2")
    one_line(e, "more than 64 members")


def test_unpack_refuses_truncated_and_non_gzip_files(toy_bundle, tmp_path, one_line):
    archive = pack_bundle(toy_bundle, tmp_path / "toy.tar.gz")
    data = archive.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as e:
        unpack_bundle(tmp_path / "cut.tar.gz", tmp_path / "d")
    one_line(e, "cut.tar.gz", "truncated")
    (tmp_path / "plain.tar.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError) as e:
        unpack_bundle(tmp_path / "plain.tar.gz", tmp_path / "d")
    one_line(e, "plain.tar.gz")


def test_a_valid_hand_made_archive_opens(toy_bundle, tmp_path):
    archive = _write_tar(tmp_path / "hand.tar.gz", _bundle_members(toy_bundle, "hand"))
    with Bundle.open(archive) as b:
        assert b.kind == "e3nn"


def _raw_member(name: str, kind: bytes, size: int) -> bytes:
    """One raw tar header block (checksum left blank: the walker must refuse before tarfile looks)."""
    block = bytearray(512)
    block[: len(name)] = name.encode()
    block[100:108] = b"0000644\0"
    block[124:136] = f"{size:011o}\0".encode()
    block[156:157] = kind
    block[257:263] = b"ustar\0"
    return bytes(block) + bytes(-(-size // 512) * 512)


@pytest.mark.parametrize(
    "kind, size, payload, fragment",
    [
        (b"X", 200_000, b"", "over the 4096-byte limit"),  # a Solaris pax record tarfile would parse slowly
        (b"x", 60, b"30 GNU.sparse.size=1000000000\n", "GNU sparse"),
        (b"S", 0, b"", "GNU sparse file"),
    ],
    ids=["solaris-pax-huge", "pax-gnu-sparse", "old-gnu-sparse"],
)
def test_sparse_and_oversized_tar_records_are_refused_before_tarfile(tmp_path, kind, size, payload, fragment):
    import gzip
    import time

    raw = bytearray(_raw_member("b/model.onnx", kind, size))
    raw[512 : 512 + len(payload)] = payload
    archive = tmp_path / "hostile.tar.gz"
    archive.write_bytes(gzip.compress(bytes(raw) + bytes(1024)))
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=fragment):
        verify_bundle(archive)
    assert time.perf_counter() - t0 < 5.0  # refused at once, not after a quadratic parse
