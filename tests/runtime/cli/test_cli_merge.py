"""``rollout --shard`` and ``e3traj merge`` through the CLI: the merge of the shards is the single run's file."""

from __future__ import annotations

import numpy as np

from e3traj.runtime._simulate import simulate


def _traj(tmp_path):
    xy = simulate(frames=120, seed=4)
    path = tmp_path / "traj.npy"
    np.save(path, np.concatenate([xy, np.zeros(xy.shape[:2] + (1,))], axis=-1))
    return path


def test_shards_merge_into_the_single_run_bit_for_bit(cli, history_bundle, tmp_path, cli_error, monkeypatch):
    traj = _traj(tmp_path)
    common = [history_bundle, traj, "--frames", "10-30", "--steps", 25, "--noise", "1e-4", "--seed", 2]
    assert cli("rollout", *common, "-o", tmp_path / "one.npz").exit_code == 0
    shards = []
    for i in range(3):
        out = tmp_path / f"s{i}.npz"
        r = cli("rollout", *common, "--shard", f"{i}/3", "-o", out)
        assert r.exit_code == 0, r.output
        shards.append(out)
    with np.load(shards[1], allow_pickle=False) as z:
        assert z["starts"].tolist() == list(range(17, 24)) and int(z["shard_index"]) == 1
        assert len(str(z["init_sha256"])) == 64 and z["all_starts"].tolist() == list(range(10, 31))
    r = cli("merge", *shards[::-1], "-o", tmp_path / "merged.npz")
    assert r.exit_code == 0 and "merged 3 shards" in r.output
    assert (tmp_path / "merged.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()
    # a job array: task ids 1..3 are shards 0..2
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert cli("rollout", *common, "--shard", "slurm", "-o", tmp_path / "slurm.npz").exit_code == 0
    assert (tmp_path / "slurm.npz").read_bytes() == shards[1].read_bytes()
    cli_error(cli("merge", *shards[:2], "-o", tmp_path / "m2.npz"), 3, "missing [2]")
    cli_error(cli("merge", *shards, "-o", tmp_path / "merged.npz"), 2, "--force")
    cli_error(cli("rollout", *common, "--shard", "3/3", "-o", tmp_path / "x.npz"), 2, "0 <= I < N")
    assert not (tmp_path / "m2.npz").exists() and not (tmp_path / "x.npz").exists()


def test_every_thins_the_file_and_the_xyz_and_merges_too(cli, history_bundle, tmp_path):
    traj = _traj(tmp_path)
    common = [history_bundle, traj, "--frames", "10-17", "--steps", 30, "--noise", "1e-4", "--seed", 5]
    assert cli("rollout", *common, "-o", tmp_path / "all.npz").exit_code == 0
    r = cli("rollout", *common, "--every", 10, "-o", tmp_path / "ten.npz", "--xyz", tmp_path / "ten.xyz")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "all.npz") as a, np.load(tmp_path / "ten.npz") as t:
        assert int(t["every"]) == 10 and t["traj"].shape == (4, 8, 12, 3)
        np.testing.assert_array_equal(t["traj"], a["traj"][::10])
    assert "frame=30 start=10" in (tmp_path / "ten.xyz").read_text()
    for i in range(2):
        assert cli("rollout", *common, "--every", 10, "--shard", f"{i}/2", "-o", tmp_path / f"e{i}.npz").exit_code == 0
    assert cli("merge", tmp_path / "e0.npz", tmp_path / "e1.npz", "-o", tmp_path / "m.npz").exit_code == 0
    assert (tmp_path / "m.npz").read_bytes() == (tmp_path / "ten.npz").read_bytes()
    r = cli("rollout", *common, "--every", 0, "-o", tmp_path / "z.npz")
    assert r.exit_code == 2 and "--every" in r.output


def test_one_start_shards_of_a_larger_run_keep_the_batched_graph(cli, make_bundle, tmp_path):
    """With a single-frame graph that computes something else, shards of one start of a 2-start run run the
    batched graph as the run does; a 1-start run runs the single-frame graph. (The toy graph's ReduceMean rounds
    batches of 1 and 2 differently by ~1e-9, so the shards are compared to the run within 1e-7.)"""
    from _toys import build_model
    from onnx import numpy_helper

    single = build_model("toy", batch=1)
    for i, init in enumerate(single.graph.initializer):
        if init.name == "k_centroid":
            single.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(0.02, np.float32), "k_centroid"))
    bundle = make_bundle(single_frame=single)
    traj = _traj(tmp_path)
    common = [bundle, traj, "--frames", "3,7", "--steps", 6]
    assert cli("rollout", *common, "-o", tmp_path / "one.npz").exit_code == 0
    for i in range(2):
        assert cli("rollout", *common, "--shard", f"{i}/2", "-o", tmp_path / f"s{i}.npz").exit_code == 0
    assert cli("merge", tmp_path / "s0.npz", tmp_path / "s1.npz", "-o", tmp_path / "m.npz").exit_code == 0
    assert cli("rollout", bundle, traj, "--frames", "3", "--steps", 6, "-o", tmp_path / "alone.npz").exit_code == 0
    with np.load(tmp_path / "m.npz") as m, np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "alone.npz") as a:
        np.testing.assert_allclose(m["traj"], one["traj"], rtol=0, atol=1e-7)
        assert np.abs(a["traj"][:, 0] - one["traj"][:, 0]).max() > 1e-4  # the single-frame graph ran alone
