"""Sampled rollouts (runtime/_noise.py): per-start seeding, planar noise, the fitted scale."""

from __future__ import annotations

import numpy as np
import pytest

from e3traj.runtime import LinearExtrapolation, RolloutNoise, residual_scale, rollout
from e3traj.runtime._errors import UsageError


def _frames(b=4, planar=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, 12, 3))
    if planar:
        x[..., 2] = 0.0
    return x


def test_each_start_has_its_own_stream_so_splitting_the_starts_changes_nothing():
    x = _frames(4, planar=False)
    together = RolloutNoise(0.1, 7, [10, 20, 30, 40])
    apart = [RolloutNoise(0.1, 7, [s]) for s in (10, 20, 30, 40)]
    for _ in range(3):
        a = together(x)
        b = np.concatenate([n(x[i : i + 1]) for i, n in enumerate(apart)])
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(RolloutNoise(0.1, 8, [10])(x[:1]), RolloutNoise(0.1, 7, [10])(x[:1]))


def test_planar_frames_get_noise_in_their_plane():
    x = _frames(3, planar=True)
    eps = RolloutNoise(0.5, 0, [0, 1, 2])(x)
    assert np.all(eps[..., 2] == 0) and np.std(eps[..., :2]) == pytest.approx(0.5, rel=0.2)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    tilted = x @ q.T  # the same planar chains, rotated out of z = 0
    eps = RolloutNoise(0.5, 0, [0, 1, 2])(tilted)
    normal = q[:, 2]
    assert np.abs(eps @ normal).max() < 1e-12  # still in each chain's own plane
    with pytest.raises(UsageError, match="noise scale"):
        RolloutNoise(-1.0, 0, [0])


def test_the_fitted_scale_is_the_rms_residual_per_moving_coordinate():
    rng = np.random.default_rng(2)
    frames = np.cumsum(rng.normal(scale=0.01, size=(200, 12, 3)), axis=0)
    frames[..., 2] = 0.0
    persistence = LinearExtrapolation("p", "p", ())
    d = np.diff(frames, axis=0)[:100]
    assert residual_scale(persistence, frames, 0, 100) == pytest.approx(np.sqrt(np.sum(d**2) / (d[..., 0].size * 2)))


def test_a_sampled_rollout_adds_the_noise_to_every_frame():
    p = LinearExtrapolation("p", "p", ())  # persistence: every step's change is the noise alone
    x = _frames(2, planar=False)
    res = rollout(p, x, 50, noise=RolloutNoise(0.01, 3, [5, 6]))
    step = np.diff(res.traj, axis=0)
    assert np.std(step) == pytest.approx(0.01, rel=0.1)
    again = rollout(p, x, 50, noise=RolloutNoise(0.01, 3, [5, 6]))
    np.testing.assert_array_equal(res.traj, again.traj)


def test_the_velocity_gain_is_exact_and_refuses_what_does_not_damp():
    from e3traj.runtime import velocity_gain

    assert velocity_gain([0.9]) == pytest.approx(1 / (1 - 0.81))
    b = [1.2, -0.35]  # AR(2): the gain equals the impulse response's sum of squares
    psi = [1.0, 1.2]
    for _ in range(2000):
        psi.append(b[0] * psi[-1] + b[1] * psi[-2])
    assert velocity_gain(b) == pytest.approx(float(np.sum(np.square(psi))), rel=1e-9)
    for bad, fragment in (([1.0], "do not damp"), ([0.5, 0.6], "do not damp"), ([], "1 or more"), ([np.nan], "nan")):
        with pytest.raises(ValueError, match=fragment):
            velocity_gain(bad)


def test_the_thermostat_recovers_the_noise_of_a_damped_walk():
    from e3traj.runtime import thermostat_scale

    rng = np.random.default_rng(0)
    b, sigma, n = 0.95, 2e-3, 20_000
    d = np.zeros((n, 12, 3))
    for t in range(1, n):
        d[t] = b * d[t - 1] + sigma * rng.standard_normal((12, 3))
    frames = np.cumsum(d, axis=0)
    assert thermostat_scale([b], frames, 100, n - 1) == pytest.approx(sigma, rel=0.03)
    planar = frames.copy()
    planar[..., 2] = 0.0  # z never moves: not counted
    assert thermostat_scale([b], planar, 100, n - 1) == pytest.approx(sigma, rel=0.03)
    with pytest.raises(UsageError, match=r"\[5, 5\)"):
        thermostat_scale([b], frames, 5, 5)
