"""The embedded bead-spring simulator (runtime/_simulate.py); ``e3traj simulate``: cli/test_cli_data.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from e3traj.runtime._data import validate_frames
from e3traj.runtime._exact import _Normals
from e3traj.runtime._metrics import trajectory_stats
from e3traj.runtime._simulate import MAX_SIM_FRAMES, SimParams, _Forces, _initial_chain, simulate


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
