"""Packing a bundle into one .tar.gz and unpacking archives safely (the tar-level checks: test_tar.py)."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from _archives import bundle_members, tar_dir, tar_file, tar_special, write_tar

from e3traj.runtime import Bundle, pack_bundle, unpack_bundle, verify_bundle
from e3traj.runtime._errors import InputError, UsageError


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
    "dotdot": (lambda b: bundle_members(b) + [tar_file("b/../../escape.txt")], "'..'"),
    "dotdot_top": (lambda b: [tar_file("../escape.txt")], "'..'"),
    "absolute": (lambda b: [tar_file("/tmp/e3traj-abs-escape.txt")], "absolute path"),
    "symlink": (lambda b: [tar_dir("b"), tar_special("b/model.onnx", tarfile.SYMTYPE, "/etc/passwd")], "is a link"),
    "hardlink": (lambda b: [tar_dir("b"), tar_special("b/model.onnx", tarfile.LNKTYPE, "b/x")], "is a link"),
    "fifo": (lambda b: [tar_dir("b"), tar_special("b/pipe", tarfile.FIFOTYPE)], "device or FIFO"),
    "chardev": (lambda b: [tar_dir("b"), tar_special("b/null", tarfile.CHRTYPE)], "device or FIFO"),
    "two_tops": (lambda b: bundle_members(b, "b") + [tar_dir("c")], "more than one top-level"),
    "top_file": (lambda b: [tar_file("manifest.json", b"{}")], "directly inside one top-level folder"),
    "subfolder": (lambda b: [tar_dir("b"), tar_dir("b/sub")], "subfolder"),
    "nested_file": (lambda b: [tar_dir("b"), tar_file("b/sub/x.txt")], "directly inside"),
    "duplicate": (lambda b: [tar_file("b/a"), tar_file("b/a")], "appears twice"),
    "empty": (lambda b: [], "empty"),
    "tampered": (
        lambda b: (
            [tar_dir("b")]
            + [
                tar_file(f"b/{p.name}", p.read_bytes()[:-1] if p.name == "model.onnx" else p.read_bytes())
                for p in sorted(b.iterdir())
            ]
        ),
        "size",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_unpack_refuses_unsafe_archives(toy_bundle, tmp_path, case, one_line):
    build, fragment = BAD_ARCHIVES[case]
    archive = write_tar(tmp_path / f"{case}.tar.gz", build(toy_bundle))
    dest = tmp_path / "dest"
    with pytest.raises(InputError) as e:
        unpack_bundle(archive, dest)
    one_line(e, str(archive), fragment)
    assert not dest.exists()  # refused in memory, before anything was written
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/e3traj-abs-escape.txt").exists()
    with pytest.raises(InputError):  # Bundle.open runs the same checks
        Bundle.open(archive)


def test_a_valid_hand_made_archive_opens(toy_bundle, tmp_path):
    archive = write_tar(tmp_path / "hand.tar.gz", bundle_members(toy_bundle, "hand"))
    with Bundle.open(archive) as b:
        assert b.kind == "e3nn"
