"""Rollouts spooled to disk (:mod:`e3traj.runtime._spool`): the same frames as in memory, bit for bit, through a
window rewound every few steps; the file written as the in-memory rollout's; a killed run's frames recovered."""

from __future__ import annotations

import os

import numpy as np
import pytest

import e3traj.runtime._rollout as rollout_module
from e3traj.runtime import Bundle, InputError, RolloutNoise, UsageError, rollout
from e3traj.runtime._rollout import write_rollout_file
from e3traj.runtime._simulate import simulate
from e3traj.runtime._spool import Spool, partial_folder, recover


def _frames():
    xy = simulate(frames=60, seed=1)
    return np.concatenate([xy, np.zeros(xy.shape[:2] + (1,))], axis=-1)


def _fields(starts, steps, every, sha):
    return dict(
        starts=np.asarray(starts, dtype=np.int64), bundle_sha256=sha, source="init.npy", noise_scale=1e-3,
        noise_seed=1, init_sha256="ab" * 32, stop="", steps_requested=steps, every=every,
        extra={"shard_index": np.int64(0)},
    )  # fmt: skip


@pytest.mark.parametrize("every", [1, 3])
def test_a_spooled_rollout_is_the_in_memory_one_bit_for_bit(history_bundle, tmp_path, monkeypatch, every):
    f = _frames()
    starts = np.array([20, 30, 40])
    with Bundle.open(history_bundle, threads=1) as b:
        prev = np.stack([f[starts - b.history + i] for i in range(b.history)], axis=1)
        full = rollout(b, f[starts], 40, previous=prev, noise=RolloutNoise(1e-3, 1, starts))
        monkeypatch.setattr(rollout_module, "_WINDOW_BYTES", 1)  # a window of h + 1 frames more: rewound often
        spool = Spool(tmp_path / "run.npz", f[starts].shape, _fields(starts, 40, every, b.sha256))
        res = rollout(b, f[starts], 40, previous=prev, noise=RolloutNoise(1e-3, 1, starts), every=every, sink=spool)
        assert spool.count == 40 // every + 1 and res.complete
        np.testing.assert_array_equal(res.traj, full.traj[::every])
        in_memory = rollout(b, f[starts], 40, previous=prev, noise=RolloutNoise(1e-3, 1, starts), every=every)
        np.testing.assert_array_equal(in_memory.traj, full.traj[::every])  # the rewound in-memory window too
        del res
        spool.finish(in_memory)
        write_rollout_file(tmp_path / "ref.npz", in_memory, **{
            k: v for k, v in _fields(starts, 40, every, b.sha256).items() if k not in ("steps_requested", "every")
        })  # fmt: skip
    assert (tmp_path / "run.npz").read_bytes() == (tmp_path / "ref.npz").read_bytes()
    assert not partial_folder(tmp_path / "run.npz").exists()


def test_a_stopped_spooled_rollout_keeps_the_frames_before_the_failure(history_bundle, tmp_path, monkeypatch):
    f = _frames()
    starts = np.array([20, 30])
    monkeypatch.setattr(rollout_module, "_WINDOW_BYTES", 1)
    with Bundle.open(history_bundle, threads=1) as b:
        prev = np.stack([f[starts - b.history + i] for i in range(b.history)], axis=1)
        ref = rollout(b, f[starts], 60, previous=prev, max_distance=0.05)
        spool = Spool(tmp_path / "run.npz", f[starts].shape, _fields(starts, 60, 1, b.sha256))
        res = rollout(b, f[starts], 60, previous=prev, max_distance=0.05, sink=spool)
        assert not ref.complete and (res.failed_step, res.steps_done) == (ref.failed_step, ref.steps_done)
        np.testing.assert_array_equal(res.traj, ref.traj)
        del res
        spool.finish(ref)
    with np.load(tmp_path / "run.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["traj"], ref.traj)
        assert not bool(z["complete"]) and not bool(z["interrupted"]) and int(z["failed_step"]) == ref.failed_step


def test_a_killed_rollout_is_recovered_from_its_whole_frames(toy_bundle, tmp_path, one_line):
    f = _frames()
    out = tmp_path / "run.npz"
    with Bundle.open(toy_bundle, threads=1) as b:
        ref = rollout(b, f[[5, 6]], 30)
        spool = Spool(out, (2, 12, 3), _fields([5, 6], 30, 2, b.sha256), xyz=tmp_path / "run.xyz")
        with pytest.raises(UsageError) as e:  # an unfinished run's frames are never overwritten
            Spool(out, (2, 12, 3), _fields([5, 6], 30, 2, b.sha256))
        one_line(e, "e3traj recover")
    for frame in ref.traj[:9:2]:
        spool.append(frame)
    spool._fh.write(b"\0" * 100)  # the kill cut the next frame short
    spool._fh.flush()  # (what FLUSH_SECONDS does)
    with pytest.raises(InputError) as e:  # the rollout still holds its frames: recover waits for it
        recover(partial_folder(out))
    one_line(e, "still writing it", f"process {os.getpid()}")
    spool.close()  # the process dies: its lock goes
    files, res = recover(partial_folder(out))
    assert files == [out, tmp_path / "run.xyz"] and not partial_folder(out).exists()
    assert (res.steps_done, res.complete, res.interrupted) == (8, False, True)
    with np.load(out, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["traj"], ref.traj[:9:2])
        assert bool(z["interrupted"]) and not bool(z["complete"]) and int(z["steps_done"]) == 8
        assert int(z["every"]) == 2 and int(z["shard_index"]) == 0 and int(z["failed_step"]) == -1
    assert (tmp_path / "run.xyz").read_text().count("frame=8 start=6") == 1
    with pytest.raises(InputError) as e:
        recover(tmp_path / "nothing.partial")
    one_line(e, "not a folder")
    folder = tmp_path / "bad.npz.partial"
    folder.mkdir()
    (folder / "meta.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError) as e:
        recover(folder)
    one_line(e, "meta.npz", "could not read")
    with pytest.raises(InputError) as e:
        recover(tmp_path)  # any other folder is not touched
    one_line(e, "not an OUT.partial folder")


def _killed_spool(tmp_path, meta_changes=None, frames=3):
    """A spool folder as a SIGKILL leaves it: meta.npz, some frames, no outcome; meta changed as asked."""
    out = tmp_path / "run.npz"
    spool = Spool(out, (2, 12, 3), _fields([5, 6], 30, 2, "b" * 64), xyz=tmp_path / "run.xyz")
    for k in range(frames):
        spool.append(np.full((2, 12, 3), float(k)))
    spool.close()
    if meta_changes:
        folder = partial_folder(out)
        with np.load(folder / "meta.npz") as z:
            meta = {k: z[k] for k in z.files}
        meta.update(meta_changes)
        meta = {k: v for k, v in meta.items() if v is not None}
        np.savez(folder / "meta.npz", **meta)
    return out


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"xyz": None}, "missing ['xyz']"),
        ({"output": np.str_("../victim.txt")}, "unknown ['output']"),
        ({"extra.traj": np.zeros(3)}, "unknown ['extra.traj']"),
        ({"steps_requested": np.str_("30")}, "malformed ['steps_requested']"),
        ({"shape": np.asarray([2, 12, 4])}, "are not a rollout's"),
        ({"xyz": np.str_("relative.xyz")}, "not a file outside the spool"),
    ],
)
def test_a_changed_meta_is_refused_in_one_line_and_nothing_is_written(tmp_path, one_line, changes, fragment):
    out = _killed_spool(tmp_path, changes)
    with pytest.raises(InputError) as e:
        recover(partial_folder(out))
    one_line(e, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz.partial"]


def test_recover_from_inside_the_folder_writes_beside_it_and_never_overwrites(tmp_path, monkeypatch):
    out = _killed_spool(tmp_path)
    out.write_text("an earlier file")
    monkeypatch.chdir(partial_folder(out))
    with pytest.raises(UsageError, match="appeared while"):  # without replace, an existing OUT is kept
        recover(".")
    assert out.read_text() == "an earlier file" and (partial_folder(out) / "frames.f64").is_file()
    files, res = recover(".", replace=True)
    assert files == [out, tmp_path / "run.xyz"] and not partial_folder(out).exists()
    assert (res.steps_done, res.interrupted) == (4, True)
    with np.load(out, allow_pickle=False) as z:
        assert z["traj"].shape == (3, 2, 12, 3) and float(z["traj"][2, 0, 0, 0]) == 2.0


def test_an_outcome_recorded_before_the_kill_is_the_one_recovered(toy_bundle, tmp_path):
    f = _frames()
    out = tmp_path / "run.npz"
    with Bundle.open(toy_bundle, threads=1) as b:
        ref = rollout(b, f[[5, 6]], 10, every=3)  # complete: kept frames 0, 3, 6, 9; step 10 was run
        spool = Spool(out, (2, 12, 3), _fields([5, 6], 10, 3, b.sha256))
        rollout(b, f[[5, 6]], 10, every=3, sink=spool)
    spool.record(ref)  # finish() records the outcome first; the kill comes while the file is written
    files, res = recover(partial_folder(out))
    assert (res.complete, res.steps_done, res.interrupted) == (True, 10, False)
    with np.load(out, allow_pickle=False) as z:
        assert bool(z["complete"]) and int(z["steps_done"]) == 10 and not bool(z["interrupted"])
