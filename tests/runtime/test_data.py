"""Trajectory loading and validation: good files load, bad ones give one-line errors naming the file."""

import zipfile

import numpy as np
import pytest

from e3traj.runtime import DMOL_SHA256
from e3traj.runtime._data import (
    InputError,
    frames_sha256,
    load_trajectory,
    save_trajectory,
    split_pairs,
    validate_frames,
)

rng = np.random.default_rng(0)


def _frames(t=5, d=2):
    return rng.normal(size=(t, 12, d))


def test_npz_arr_2d_lifted_to_3d(tmp_path):
    f = tmp_path / "t.npz"
    a = _frames(7, 2)
    np.savez(f, arr=a)
    out = load_trajectory(f)
    assert out.shape == (7, 12, 3) and out.dtype == np.float64
    np.testing.assert_array_equal(out[..., :2], a)
    assert np.all(out[..., 2] == 0)


def test_single_frame_npy_and_single_key_npz(tmp_path):
    a = _frames(1, 3)[0]
    np.save(tmp_path / "one.npy", a)
    assert load_trajectory(tmp_path / "one.npy").shape == (1, 12, 3)
    np.savez(tmp_path / "k.npz", positions=_frames(4, 3))
    assert load_trajectory(tmp_path / "k.npz").shape == (4, 12, 3)


def test_save_roundtrip_atomic(tmp_path):
    a = _frames(3, 3)
    save_trajectory(tmp_path / "s.npz", a)
    np.testing.assert_array_equal(load_trajectory(tmp_path / "s.npz"), a)
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda: np.full((3, 12, 2), np.nan), "non-finite"),
        (lambda: np.ones((3, 2, 2)), "2 beads per frame; a chain needs 3 to 1024"),
        (lambda: np.ones((2, 1025, 3)), "1025 beads"),
        (lambda: np.ones(12), "rank 1"),
        (lambda: np.ones((2, 3, 12, 3)), "rank 4"),
        (lambda: np.ones((3, 12, 4)), "4 coordinates"),
        (lambda: np.array(["a"] * 36).reshape(3, 12, 1), "not numeric"),
    ],
)
def test_bad_arrays(tmp_path, make, needle):
    f = tmp_path / "bad.npz"
    np.savez(f, arr=make())
    with pytest.raises(InputError) as e:
        load_trajectory(f)
    msg = str(e.value)
    assert needle in msg and str(f) in msg and "\n" not in msg


def test_any_chain_length_loads_and_a_model_s_n_is_enforced(tmp_path):
    f = tmp_path / "t20.npz"
    np.savez(f, arr=np.ones((4, 20, 2)))
    assert load_trajectory(f).shape == (4, 20, 3)
    assert load_trajectory(f, n_beads=20).shape == (4, 20, 3)
    with pytest.raises(InputError) as e:
        load_trajectory(f, n_beads=12)
    msg = str(e.value)
    assert str(f) in msg and "20 beads per frame; the model expects 12" in msg and "\n" not in msg


def test_object_array_never_unpickled(tmp_path):
    f = tmp_path / "obj.npz"
    np.savez(f, arr=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(InputError, match="never unpickled"):
        load_trajectory(f)


def test_empty_truncated_and_garbage(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_trajectory(tmp_path / "empty.npz")
    good = tmp_path / "good.npz"
    np.savez(good, arr=_frames(50, 2))
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated|corrupt"):
        load_trajectory(tmp_path / "trunc.npz")
    (tmp_path / "junk.npz").write_bytes(b"hello world")
    with pytest.raises(InputError, match="not an .npz"):
        load_trajectory(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="not found"):
        load_trajectory(tmp_path / "missing.npz")


def test_huge_header_refused_before_reading(tmp_path):
    f = tmp_path / "huge.npz"
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**9, 12, 3)}
    with zipfile.ZipFile(f, "w") as zf, zf.open("arr.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 64)
    with pytest.raises(InputError, match="limit"):
        load_trajectory(f)


def test_min_frames():
    with pytest.raises(InputError, match="at least 2"):
        validate_frames(np.zeros((1, 12, 3)), "x", min_frames=2)


def test_chapter_split_sizes():
    s = split_pairs(np.zeros((2048, 12, 3)))
    assert s.n_train == 1637 and len(s.val_x) == 410 and len(s.val_y) == 410 and len(s.val_prev) == 410
    frames = np.arange(2048)[:, None, None] * np.ones((1, 12, 3))
    s = split_pairs(frames)
    assert s.val_x[0, 0, 0] == 1637 and s.val_y[0, 0, 0] == 1638 and s.val_prev[0, 0, 0] == 1636
    assert s.train_y[-1, 0, 0] == 1637 and s.val_y[-1, 0, 0] == 2047
    with pytest.raises(ValueError, match="1.5"):
        split_pairs(frames, 1.5)


def test_frames_sha256_is_format_independent(tmp_path):
    a = _frames(4, 2)
    np.savez(tmp_path / "a.npz", arr=a)
    np.save(tmp_path / "a.npy", a.astype(np.float64))
    assert frames_sha256(load_trajectory(tmp_path / "a.npz")) == frames_sha256(load_trajectory(tmp_path / "a.npy"))


def test_real_data_checksum_and_split(shared_paths):
    from e3traj.runtime import _data
    from e3traj.runtime._io import sha256_file

    assert sha256_file(shared_paths) == DMOL_SHA256
    frames = _data.load_trajectory(shared_paths)
    assert frames.shape == (2048, 12, 3)
    s = split_pairs(frames)
    pers = np.mean((s.val_y - s.val_x) ** 2)
    cv = np.mean((s.val_y - (2 * s.val_x - s.val_prev)) ** 2)
    assert pers == pytest.approx(2.43e-5, rel=0.01)
    assert cv == pytest.approx(1.65e-7, rel=0.01)


def test_outputs_get_normal_permissions(tmp_path):
    import os

    from e3traj.runtime._io import atomic_output, atomic_output_dir

    mask = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_output_dir(tmp_path / "d") as d:
            (d / "a").write_text("y")
    finally:
        os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_a_negative_shape_is_refused_before_reading(tmp_path):
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (-1, 12, 3), }"
    header += " " * (118 - len(header)) + "\n"
    bad = tmp_path / "neg.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(8 * 36))
    with pytest.raises(InputError, match="negative shape"):
        load_trajectory(bad)


def test_the_same_frames_give_the_same_file_whatever_the_clock(tmp_path, monkeypatch):
    # (numpy 2.4's savez already writes a fixed timestamp; this holds the promise whatever numpy a host has)
    import time

    frames = _frames(4, 2)
    monkeypatch.setattr(time, "time", lambda: 1_000_000_000.0)  # 2001
    save_trajectory(tmp_path / "a.npz", frames)
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)  # 2027
    save_trajectory(tmp_path / "b.npz", frames)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    np.testing.assert_array_equal(load_trajectory(tmp_path / "a.npz")[..., :2], frames)
