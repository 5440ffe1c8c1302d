"""Reading a bundle archive in memory (runtime/_tar.py): every tar-level check before any member is used.

Through ``unpack_bundle`` and ``verify_bundle`` (as the host reaches it) and directly through ``read_archive``.
"""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from _archives import tar_dir, tar_file, tar_special, write_tar

from e3traj.runtime import _tar, pack_bundle, unpack_bundle, verify_bundle
from e3traj.runtime._errors import InputError
from e3traj.runtime._tar import MAX_HEADER_BYTES, read_archive


def test_unpack_refuses_oversized_and_crowded_archives(toy_bundle, tmp_path, monkeypatch, one_line):
    archive = write_tar(tmp_path / "big.tar.gz", [tar_dir("b"), tar_file("b/blob", b"\0" * 5000)])
    monkeypatch.setattr(_tar, "MAX_ARCHIVE_BYTES", 4096)
    with pytest.raises(InputError) as e:
        unpack_bundle(archive, tmp_path / "d1")
    one_line(e, "4096 bytes")
    monkeypatch.undo()
    crowded = write_tar(tmp_path / "crowded.tar.gz", [tar_dir("b")] + [tar_file(f"b/f{i}") for i in range(70)])
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


# --------------------------------------------------------------------------------------------- read_archive


def test_read_archive_returns_the_top_folder_and_views_of_the_members(toy_bundle, tmp_path):
    archive = pack_bundle(toy_bundle, tmp_path / "toy.tar.gz")
    before = sorted(os.listdir(tmp_path))
    got = read_archive(archive)
    assert got.top == "toy"
    assert sorted(got.files) == sorted(p.name for p in toy_bundle.iterdir())
    for name, view in got.files.items():
        assert isinstance(view, memoryview) and bytes(view) == (toy_bundle / name).read_bytes()
    assert sorted(os.listdir(tmp_path)) == before  # read in memory: nothing extracted


@pytest.mark.parametrize(
    "members, fragment",
    [
        (
            [tar_dir("b"), tar_special("b/model.onnx", tarfile.SYMTYPE, "/etc/passwd")],
            "member 'b/model.onnx' is a link",
        ),
        ([tar_dir("b"), tar_file("b/a"), tar_file("b/a")], "member 'b/a' appears twice"),
        ([tar_file("b/../../x")], "climbs out with '..'"),
        ([], "the archive is empty"),
    ],
    ids=["symlink", "duplicate", "dotdot", "empty"],
)
def test_read_archive_refuses_with_the_label_it_is_given(tmp_path, members, fragment, one_line):
    archive = write_tar(tmp_path / "x.tar.gz", members)
    with pytest.raises(InputError) as e:
        read_archive(archive, label="shipped.tar.gz")
    msg = one_line(e, "shipped.tar.gz: ", fragment)
    assert str(archive) not in msg


def test_read_archive_refuses_an_oversized_pax_record_and_an_oversized_archive(tmp_path, monkeypatch, one_line):
    info, data = tar_file("b/model.onnx", b"x")
    info.pax_headers = {"comment": "c" * (MAX_HEADER_BYTES + 100)}
    with tarfile.open(tmp_path / "pax.tar.gz", "w:gz", format=tarfile.PAX_FORMAT) as tf:
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(InputError) as e:
        read_archive(tmp_path / "pax.tar.gz")
    one_line(e, "pax.tar.gz", f"over the {MAX_HEADER_BYTES}-byte limit")
    big = write_tar(tmp_path / "big.tar.gz", [tar_dir("b"), tar_file("b/blob", os.urandom(6000))])
    monkeypatch.setattr(_tar, "MAX_ARCHIVE_BYTES", 4096)  # incompressible: the packed file itself is over
    with pytest.raises(InputError) as e:
        read_archive(big)
    one_line(e, "big.tar.gz", "over 4096 bytes", "a few MB")
    with pytest.raises(InputError) as e:
        read_archive(tmp_path / "missing.tar.gz")
    one_line(e, "missing.tar.gz", "not found")
