"""``e3traj fidelity`` and ``rollout --stop-unstable`` through the CLI."""

from __future__ import annotations

import json

import numpy as np

from e3traj.runtime._simulate import simulate


def _traj(tmp_path, frames=300):
    xy = simulate(frames=frames, seed=2)
    path = tmp_path / "traj.npy"
    np.save(path, np.concatenate([xy, np.zeros(xy.shape[:2] + (1,))], axis=-1))
    return path


def test_fidelity_prints_the_suite_beside_the_model_and_json_holds_it(cli, toy_bundle, tmp_path, cli_error):
    traj = _traj(tmp_path)
    r = cli("fidelity", toy_bundle, "--data", traj, "--steps", 40, "--starts", 3)
    assert r.exit_code == 0, r.output
    for name in ("model (e3nn)", "persistence", "constant velocity", "constant acceleration", "fitted"):
        assert name in r.output
    assert "unstable at the first non-finite value" in r.output and "noise floor" not in r.output
    r = cli("fidelity", toy_bundle, "--data", traj, "--steps", 40, "--starts", 3, "--json")
    rep = json.loads(r.output)
    assert len(rep["rows"]) == 5 and rep["floor"] is None and rep["reference"] == "the data's frames"
    assert all(0.0 <= row["stable_fraction"] <= 1.0 for row in rep["rows"])
    cli_error(cli("fidelity", toy_bundle, "--data", traj, "--steps", 0), 2, "--steps", "positive")
    cli_error(cli("fidelity", toy_bundle, "--data", traj, "--starts", 10**6), 2, "--starts", "limit")


def test_rollout_stop_unstable_keeps_the_frames_before_and_exits_5(cli, blowup_bundle, tmp_path, cli_error):
    traj = _traj(tmp_path, 40)
    out = tmp_path / "r.npz"
    r = cli("rollout", blowup_bundle, traj, "-o", out, "--steps", 5, "--frames", "3", "--stop-unstable")
    msg = cli_error(r, 5, "left the physical band", "bond outside")
    with np.load(out, allow_pickle=False) as z:
        assert not bool(z["complete"]) and int(z["steps_done"]) == 0 and z["traj"].shape[0] == 1
    assert "frames before it" in msg
    one = tmp_path / "one.npy"
    np.save(one, np.load(traj)[0])
    r = cli("rollout", blowup_bundle, one, "-o", tmp_path / "w.npz", "--steps", 2, "--stop-unstable")
    cli_error(r, 3, "one frame")


def test_stop_unstable_lets_a_physical_rollout_run_to_the_end(cli, toy_bundle, tmp_path):
    traj = _traj(tmp_path, 40)
    r = cli("rollout", toy_bundle, traj, "-o", tmp_path / "ok.npz", "--steps", 5, "--frames", "3", "--stop-unstable")
    assert r.exit_code == 0, r.output


def test_rollout_noise_options(cli, toy_bundle, tmp_path, cli_error):
    traj = _traj(tmp_path, 40)
    out = tmp_path / "s.npz"
    r = cli("rollout", toy_bundle, traj, "-o", out, "--steps", 5, "--frames", "3,9", "--noise", "0.001", "--seed", 4)
    assert r.exit_code == 0, r.output
    with np.load(out, allow_pickle=False) as z:
        assert float(z["noise_scale"]) == 0.001 and int(z["noise_seed"]) == 4
    r = cli("rollout", toy_bundle, traj, "-o", tmp_path / "f.npz", "--steps", 5, "--noise", "fitted")
    cli_error(r, 2, "--noise fitted", "noise_scale", "re-export")
    r = cli("rollout", toy_bundle, traj, "-o", tmp_path / "f.npz", "--steps", 5, "--noise", "loud")
    cli_error(r, 2, "--noise", "'loud'")
