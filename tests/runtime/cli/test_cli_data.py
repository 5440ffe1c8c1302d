"""``e3traj simulate`` (runtime/cli/_data.py): writes a loadable trajectory; bad values are one-line errors."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from e3traj.runtime._data import load_trajectory
from e3traj.runtime._simulate import simulate
from e3traj.runtime.cli import main


def test_cli_simulate_writes_a_loadable_trajectory(tmp_path):
    out = tmp_path / "out.npz"
    result = CliRunner().invoke(main, ["simulate", "--frames", "64", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "64 frames" in result.output
    frames = load_trajectory(out)
    assert frames.shape == (64, 12, 3)
    assert np.all(frames[..., 2] == 0.0)
    np.testing.assert_array_equal(frames[..., :2], simulate(frames=64, seed=0, dim=2))


def test_cli_simulate_3d_with_seed(tmp_path):
    out = tmp_path / "sim3.npz"
    result = CliRunner().invoke(main, ["simulate", "--frames", "16", "--seed", "4", "--dim", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(load_trajectory(out), simulate(frames=16, seed=4, dim=3))


def test_cli_simulate_bad_seed_is_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["simulate", "--frames", "8", "--seed", "-2", "-o", str(tmp_path / "x.npz")])
    assert result.exit_code == 2
    assert "Error: simulate: seed must be an int >= 0, got -2" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.npz").exists()


def test_simulate_frames_are_capped_before_allocation(cli, tmp_path, cli_error):
    from e3traj.runtime._simulate import MAX_SIM_FRAMES

    r = cli("simulate", "--frames", "10000000000", "-o", tmp_path / "s.npz")
    cli_error(r, 2, f"at most {MAX_SIM_FRAMES:,}")
    assert not (tmp_path / "s.npz").exists()
