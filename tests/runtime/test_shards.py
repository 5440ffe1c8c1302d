"""Sharded ensembles (runtime/_shards.py): the share of each shard, SLURM's variables, and merges that give one
run's file bit for bit, stopped rollouts included, or refuse in one line."""

from __future__ import annotations

import numpy as np
import pytest

from e3traj.runtime import InputError, UsageError, rollout
from e3traj.runtime._rollout import write_rollout_file
from e3traj.runtime._shards import merge_rollouts, parse_shard, shard_fields, shard_rows


def test_shards_partition_the_starts_like_array_split():
    for n_starts, count in ((31, 3), (8, 8), (5, 2), (100, 7)):
        rows = [shard_rows(n_starts, i, count) for i in range(count)]
        want = np.array_split(np.arange(n_starts), count)
        assert [list(range(lo, hi)) for lo, hi in rows] == [list(w) for w in want]
    with pytest.raises(UsageError, match="4 shards for 3"):
        shard_rows(3, 0, 4)


def test_parse_shard_and_slurm():
    assert parse_shard("2/5") == (2, 5)
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert parse_shard("slurm", env) == (2, 4)
    assert parse_shard("slurm", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}) == (0, 2)
    for bad in ("5/5", "-1/3", "1of3", ""):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(UsageError, match="SLURM_ARRAY_TASK_ID"):
        parse_shard("slurm", {})
    with pytest.raises(UsageError, match="task 9 of 4"):
        parse_shard("slurm", {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})


class _Drift:
    """A predictor whose rows are independent: x + 0.01 per step; with ``stop``, rows stop at chosen steps."""

    history = 0

    def step(self, x, previous=None):
        return x + 0.01


def _write(path, starts, all_starts, shard, steps=20, fail_at=None):
    x0 = np.zeros((len(starts), 12, 3)) + np.asarray(starts, dtype=float)[:, None, None]
    k = {"n": 0}

    def stop(frames):  # start 17 leaves the band at step fail_at
        k["n"] += 1
        return np.asarray(starts) == 17 if fail_at is not None and k["n"] >= fail_at else np.zeros(len(starts), bool)

    res = rollout(_Drift(), x0, steps, stop=stop)
    extra = None if shard is None else shard_fields(*shard, all_starts)
    write_rollout_file(
        path, res, starts=starts, bundle_sha256="b" * 64, source="t.npz", init_sha256="d" * 64, extra=extra
    )


@pytest.mark.parametrize("fail_at", [None, 7])
def test_the_merge_is_the_single_run_bit_for_bit(tmp_path, fail_at, monkeypatch):
    import e3traj.runtime._shards as shards

    monkeypatch.setattr(shards, "_CHUNK_BYTES", 1)  # the frames are copied one at a time
    all_starts = list(range(10, 23))
    _write(tmp_path / "one.npz", all_starts, all_starts, None, fail_at=fail_at)
    paths = []
    for i in range(3):
        lo, hi = shard_rows(len(all_starts), i, 3)
        p = tmp_path / f"s{i}.npz"
        _write(p, all_starts[lo:hi], all_starts, (i, 3, lo), fail_at=fail_at)
        paths.append(p)
    result, fields = merge_rollouts(paths[::-1])  # any order
    write_rollout_file(tmp_path / "merged.npz", result, **fields)
    assert (tmp_path / "merged.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()
    assert result.complete == (fail_at is None)


def test_shards_of_other_runs_or_missing_or_changed_are_refused(tmp_path):
    all_starts = list(range(10, 16))
    paths = []
    for i in range(2):
        lo, hi = shard_rows(6, i, 2)
        p = tmp_path / f"s{i}.npz"
        _write(p, all_starts[lo:hi], all_starts, (i, 2, lo))
        paths.append(p)
    with pytest.raises(InputError, match=r"missing \[1\]"):
        merge_rollouts(paths[:1])
    with pytest.raises(InputError, match=r"repeated \[0\]"):
        merge_rollouts([paths[0], paths[0]])
    other = tmp_path / "other.npz"
    _write(other, all_starts[3:], all_starts, (1, 2, 3), steps=30)
    with pytest.raises(InputError, match="steps_requested 30 differs"):
        merge_rollouts([paths[0], other])
    plain = tmp_path / "plain.npz"
    _write(plain, all_starts, all_starts, None)
    with pytest.raises(InputError, match="arrays .*shard_index.* missing"):
        merge_rollouts([plain])
    z = dict(np.load(paths[1]))
    z["starts"] = z["starts"] + 1
    np.savez(tmp_path / "tampered.npz", **z)
    with pytest.raises(InputError, match="not rows 3..5"):
        merge_rollouts([paths[0], tmp_path / "tampered.npz"])


def test_a_row_s_failure_is_its_own_so_shards_merge_like_one_run(tmp_path):
    # one row turns non-finite while another leaves the band at the same step: the single run lists both
    class _Mixed:
        history = 0

        def step(self, x, previous=None):
            y = x + 0.01
            if y[0, 0, 0] > 0.045:
                y[0] = np.nan
            return y

    x0 = np.zeros((3, 12, 3))
    x0[1] += 0.01
    stop = lambda f: np.isfinite(f).all(axis=(1, 2)) & (f[:, 0, 0] > 0.055)  # noqa: E731
    one = rollout(_Mixed(), x0, 10, stop=stop)
    assert not one.complete and one.failed_starts.tolist() == [0, 1] and "non-finite" in one.reason


def test_malformed_shards_are_one_line(tmp_path):
    all_starts = list(range(10, 16))
    lo, hi = shard_rows(6, 0, 2)
    _write(tmp_path / "s0.npz", all_starts[lo:hi], all_starts, (0, 2, lo))
    z = dict(np.load(tmp_path / "s0.npz"))
    for key, bad in (
        ("shard_index", np.array([0])),
        ("every", np.int64(0)),
        ("traj", np.zeros(3)),
        ("traj", z["traj"].astype(np.float32)),
        ("traj", np.asfortranarray(z["traj"])),
    ):
        np.savez(tmp_path / "bad.npz", **{**z, key: bad})
        with pytest.raises(InputError, match="do not describe a rollout shard|not C-ordered float64"):
            merge_rollouts([tmp_path / "bad.npz"])


def test_a_shard_interrupted_at_the_shortest_step_makes_the_run_interrupted(tmp_path):
    import dataclasses

    all_starts = list(range(10, 16))
    paths = []
    for i, fail_at in enumerate((7, None)):
        lo, hi = shard_rows(6, i, 2)
        paths.append(tmp_path / f"s{i}.npz")
        _write(paths[-1], all_starts[lo:hi], all_starts, (i, 2, lo), fail_at=fail_at)
    # shard 1 was killed after step 4 (e3traj recover writes it so): shorter than shard 0's failure at step 7
    with np.load(paths[1], allow_pickle=False) as z:
        res = rollout(_Drift(), z["traj"][0], 20)
    cut = dataclasses.replace(res, traj=res.traj[:5], steps_done=4, complete=False, interrupted=True)
    write_rollout_file(
        paths[1], cut, starts=all_starts[3:], bundle_sha256="b" * 64, source="t.npz", init_sha256="d" * 64,
        extra=shard_fields(1, 2, 3, all_starts),
    )  # fmt: skip
    result, _ = merge_rollouts(paths)
    assert (result.steps_done, result.complete, result.interrupted, result.failed_step) == (4, False, True, None)
    assert result.traj.shape == (5, 6, 12, 3) and result.failed_starts.tolist() == []


def _rewrite_member(path, name, data: bytes):
    """``path`` with the member ``name`` replaced by ``data`` (its CRC recomputed: a consistent zip)."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i.filename) for i in zf.infolist()}
    members[name] = data
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in members.items():
            zf.writestr(k, v)


def test_changed_or_hostile_frames_are_refused_in_one_line(tmp_path):
    import io

    all_starts = list(range(10, 16))
    paths = []
    for i in range(2):
        lo, hi = shard_rows(6, i, 2)
        paths.append(tmp_path / f"s{i}.npz")
        _write(paths[-1], all_starts[lo:hi], all_starts, (i, 2, lo))
    result, fields = merge_rollouts(paths)
    blob = bytearray(paths[1].read_bytes())
    with np.load(paths[1]) as z:
        traj = z["traj"]
    at = bytes(blob).find(traj[5].tobytes())
    blob[at + 3] ^= 0x40  # one flipped bit in the frames: the zip's CRC no longer holds
    paths[1].write_bytes(bytes(blob))
    result, fields = merge_rollouts(paths)
    with pytest.raises(InputError, match="CRC"):
        write_rollout_file(tmp_path / "m.npz", result, **fields)

    def npy(arr=None, header=None) -> bytes:
        buf = io.BytesIO()
        if header is None:
            np.lib.format.write_array(buf, arr)
        else:
            np.lib.format.write_array_header_1_0(buf, header)
            buf.write(np.zeros(4).tobytes())
        return buf.getvalue()

    for data, fragment in (
        (npy(traj)[:-64], "bytes of frames"),  # 64 bytes short
        (npy(header={"descr": "<f8", "fortran_order": False, "shape": (-1, 3, 12, 3)}), "not C-ordered"),
        (npy(header={"descr": "<f8", "fortran_order": False, "shape": (21, 3, 2**62, 3)}), "bytes of frames"),
        (npy(traj[:, :, :6]), "6 beads"),
    ):
        _write(paths[1], all_starts[3:], all_starts, (1, 2, 3))
        _rewrite_member(paths[1], "traj.npy", data)
        with pytest.raises(InputError, match=fragment):
            merge_rollouts(paths)
