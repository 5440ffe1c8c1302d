"""The embedded bead-spring simulator (runtime/_simulate.py) and ``e3traj simulate``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from e3traj.runtime._data import load_trajectory, validate_frames
from e3traj.runtime._exact import _cos_exact, _exp_exact, _log, _Normals, _sum_axis1
from e3traj.runtime._metrics import trajectory_stats
from e3traj.runtime._simulate import MAX_SIM_FRAMES, SimParams, _Forces, _initial_chain, simulate
from e3traj.runtime.cli import main


@pytest.fixture(scope="module")
def planar_run() -> np.ndarray:
    """The chapter-sized run: 2048 frames, seed 0, planar (about 0.6 s)."""
    return simulate(frames=2048, seed=0, dim=2)


@pytest.fixture(scope="module")
def spatial_run() -> np.ndarray:
    return simulate(frames=1024, seed=0, dim=3)


def test_same_seed_is_bit_identical_and_seeds_differ():
    a = simulate(frames=96, seed=7)
    b = simulate(frames=96, seed=7)
    c = simulate(frames=96, seed=8)
    assert a.tobytes() == b.tobytes()
    assert not np.allclose(a, c)


def test_shorter_run_is_a_prefix_of_a_longer_one():
    long = simulate(frames=1100, seed=3, dim=3)  # crosses the 1024-step noise blocks
    short = simulate(frames=5, seed=3, dim=3)
    np.testing.assert_array_equal(long[:5], short)


@pytest.mark.parametrize("dim", [2, 3])
def test_shape_dtype_and_finite(dim):
    out = simulate(frames=33, seed=1, dim=dim)
    assert out.shape == (33, 12, dim)
    assert out.dtype == np.float64
    assert np.all(np.isfinite(out))
    assert simulate(frames=1, seed=1, dim=dim).shape == (1, 12, dim)


def test_planar_run_lifts_to_z_zero_and_3d_run_uses_z(planar_run, spatial_run):
    lifted = validate_frames(planar_run)
    assert lifted.shape == (2048, 12, 3)
    assert np.all(lifted[..., 2] == 0.0)
    np.testing.assert_array_equal(lifted[..., :2], planar_run)
    # in 3D the chain really moves out of any one plane: z spreads like x and y
    z_spread = spatial_run[..., 2].std(axis=1).mean()
    x_spread = spatial_run[..., 0].std(axis=1).mean()
    assert 0.3 * x_spread < z_spread < 3.0 * x_spread


def _check_chapter_like(stats: dict) -> None:
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert 0.30 <= stats["bond_mean"] <= 0.42, stats
    assert 0.003 <= stats["rms_disp"] <= 0.009, stats
    assert stats["const_velocity_mse"] < stats["persistence_mse"] / 30, stats
    assert stats["max_pair"] < 3.5, stats
    assert stats["vacf1"] > 0.99, stats  # underdamped: velocities persist from frame to frame


def test_planar_statistics_resemble_the_chapter(planar_run):
    stats = trajectory_stats(planar_run)
    _check_chapter_like(stats)
    # the chapter's data: persistence 2.43e-5, constant velocity 1.65e-7 on the validation split
    assert 1e-5 < stats["persistence_mse"] < 5e-5, stats
    assert 0.2 < stats["cos_bond_mean"] < 0.7, stats


def test_spatial_statistics_are_sensible(spatial_run):
    _check_chapter_like(trajectory_stats(spatial_run))


def test_trajectory_stats_on_a_chain_in_uniform_motion():
    # a straight chain, bond 0.5, moving by (0.01, 0) every frame: every figure is known exactly
    t = np.arange(20.0)[:, None, None]
    beads = np.stack([0.5 * np.arange(12.0), np.zeros(12)], axis=-1)[None]
    frames = beads + t * np.array([0.01, 0.0])
    s = trajectory_stats(frames)
    assert s["frames"] == 20
    assert s["bond_mean"] == pytest.approx(0.5) and s["bond_std"] == pytest.approx(0.0, abs=1e-12)
    assert s["rms_disp"] == pytest.approx(0.01 / math.sqrt(2))  # per moving coordinate (x and y)
    assert s["rms_second_diff"] == pytest.approx(0.0, abs=1e-12)
    assert s["max_pair"] == pytest.approx(5.5)
    assert s["cos_bond_mean"] == pytest.approx(1.0)
    assert s["vacf1"] == pytest.approx(1.0)
    assert s["persistence_mse"] == pytest.approx(0.01**2 / 3)  # averaged over x, y and the lifted z
    assert s["const_velocity_mse"] == pytest.approx(0.0, abs=1e-20)
    # lifting to 3D by hand changes nothing
    lifted = np.concatenate([frames, np.zeros(frames.shape[:2] + (1,))], axis=-1)
    assert trajectory_stats(lifted) == s


def test_trajectory_stats_matches_the_chapter_figures():
    """The brief's figures for paths.npz, reproduced on a copy when the shared data is here."""
    from e3traj.runtime import dmol_path
    from e3traj.runtime._errors import InputError

    try:
        path = dmol_path(download=False)
    except InputError:
        pytest.skip("the chapter's paths.npz is not available here")
    s = trajectory_stats(load_trajectory(path))
    assert s["bond_mean"] == pytest.approx(0.363, abs=1e-3)
    assert s["rms_disp"] == pytest.approx(0.0060, abs=1e-4)
    assert s["persistence_mse"] == pytest.approx(2.43e-5, rel=0.01)
    assert s["const_velocity_mse"] == pytest.approx(1.65e-7, rel=0.01)


def test_trajectory_stats_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(2, 12, 2\)"):
        trajectory_stats(np.zeros((2, 12, 2)))
    with pytest.raises(ValueError, match=r"\(5, 11, 3\)"):
        trajectory_stats(np.zeros((5, 11, 3)))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("params", [SimParams(), SimParams(lj_cutoff=0.425, bond_core=0.0)])
def test_forces_are_minus_the_energy_gradient(dim, params):
    normals = _Normals(5)
    x = _initial_chain(normals, params, dim) + 0.03 * normals.take((12, dim))
    x[7] = x[3] + 0.16 / math.sqrt(dim)  # a Lennard-Jones contact inside the core
    x[1] = x[0] + 0.09 / math.sqrt(dim)  # a short bond
    forces = _Forces(params)
    f = forces(x)
    h = 1e-6
    grad = np.zeros_like(x)
    for i in range(12):
        for c in range(dim):
            xp, xm = x.copy(), x.copy()
            xp[i, c] += h
            xm[i, c] -= h
            grad[i, c] = (forces.energy(xp) - forces.energy(xm)) / (2 * h)
    np.testing.assert_allclose(f, -grad, atol=1e-5 * max(1.0, np.abs(f).max()))
    np.testing.assert_allclose(f.sum(axis=0), 0.0, atol=1e-9)  # internal forces only


def test_log_is_within_a_few_ulp_of_the_c_library():
    s = np.concatenate([np.random.default_rng(0).random(20000), [1e-300, 2.0**-1074, 0.5, 0.70710678, 1.0, 3.0]])
    ours = _log(s)
    ref = np.array([math.log(v) for v in s])
    ulp = np.spacing(np.abs(ref)) + (ref == 0)
    err = np.abs(ours - ref) / ulp
    assert np.max(err) <= 3.0 and np.mean(err == 0) > 0.5  # 2.0 here; another libm may be 0.5 ulp off itself
    assert _log(np.array([1.0]))[0] == 0.0


def test_decimal_constants_are_correctly_rounded():
    for x in (-0.0004, -0.2 * 0.002, 0.0, 1.5, -3.0):
        assert abs(_exp_exact(x) - math.exp(x)) <= np.spacing(math.exp(x))
    for x in (2.0 * math.pi / 3.0, math.pi, 0.1, 1.0, 3.9, 0.0):
        assert abs(_cos_exact(x) - math.cos(x)) <= np.spacing(abs(math.cos(x)))
    with pytest.raises(ValueError, match="got 5.0"):
        _cos_exact(5.0)


def test_normals_do_not_depend_on_how_many_are_taken_at_a_time():
    whole = _Normals(3).take(50000)
    parts = _Normals(3)
    pieces = [parts.take(n) for n in (1, 7, 16383, 2, 33607)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    assert not np.array_equal(_Normals(4).take(100), whole[:100])


def test_normals_are_standard_normal():
    z = _Normals(0).take(400000)
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1.0) < 0.01
    assert abs(np.mean(z**4) - 3.0) < 0.05  # kurtosis of a Gaussian
    # quantiles against the normal CDF: P(|z| < 1) = 0.6827, P(|z| < 2) = 0.9545, P(|z| < 3) = 0.9973
    for k, p in ((1, 0.682689), (2, 0.954500), (3, 0.997300)):
        assert abs(np.mean(np.abs(z) < k) - p) < 0.003


@pytest.mark.parametrize("m", [1, 2, 3, 11, 12, 13])
def test_fixed_order_sum_equals_the_sum(m):
    a = np.random.default_rng(m).standard_normal((4, m, 3))
    np.testing.assert_allclose(_sum_axis1(a), a.sum(axis=1), rtol=1e-13, atol=1e-13)
    # and it really fixes the order: (a0 + a2) + (a1 + a3) for four terms (left to right would give 1.0)
    b = np.array([[1e16, 1.0, -1e16, 1.0]])
    assert _sum_axis1(b)[0] == (1e16 + -1e16) + (1.0 + 1.0) == 2.0


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        ({"frames": 0}, "0"),
        ({"frames": -5}, "-5"),
        ({"frames": 2.5}, "2.5"),
        ({"dim": 1}, "1"),
        ({"dim": 4}, "4"),
        ({"dim": "3"}, "'3'"),
        ({"seed": -1}, "-1"),
        ({"frames": MAX_SIM_FRAMES + 1}, f"{MAX_SIM_FRAMES + 1}"),
        ({"params": {"dt": 0.01}}, "dict"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(kwargs, shown):
    with pytest.raises(ValueError) as info:
        simulate(**kwargs)
    assert f"got {shown}" in str(info.value)
    assert next(iter(kwargs)) in str(info.value)


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        ({"dt": 0.0}, "0.0"),
        ({"friction": -1.0}, "-1.0"),
        ({"steps_per_frame": 0}, "0"),
        ({"burn_in": -3}, "-3"),
        ({"angle": 4.0}, "4.0"),
        ({"lj_cutoff": -1.0}, "-1.0"),
        ({"bond_k": float("nan")}, "nan"),
    ],
)
def test_bad_params_raise_value_error_naming_the_value(kwargs, shown):
    with pytest.raises(ValueError) as info:
        SimParams(**kwargs)
    assert f"got {shown}" in str(info.value)
    assert next(iter(kwargs)) in str(info.value)


def test_a_step_too_large_is_refused_not_returned():
    with pytest.raises(ValueError, match=r"dt \(now 0\.05\)"):
        simulate(frames=50, seed=0, params=SimParams(dt=0.05))


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
