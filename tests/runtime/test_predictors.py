"""The predictor suite (runtime/_predictors.py): the trivial predictors every model is judged against."""

from __future__ import annotations

import numpy as np
import pytest

from e3traj.runtime import choose_ar, fit_ar, predictor_suite, split_pairs
from e3traj.runtime._predictors import (
    CONSTANT_ACCELERATION,
    CONSTANT_VELOCITY,
    PERSISTENCE,
    LinearExtrapolation,
    best_of,
)


def _ar_traj(b, frames=400, seed=0, noise=1e-4):
    """A trajectory whose displacements follow d_{t+1} = sum_j b_j d_{t-j+1} + noise (a known AR model)."""
    rng = np.random.default_rng(seed)
    h = len(b)
    x = np.zeros((frames, 12, 3))
    x[: h + 1] = rng.normal(size=(1, 12, 3)) + np.cumsum(rng.normal(scale=0.01, size=(h + 1, 12, 3)), axis=0)
    for t in range(h, frames - 1):
        d = sum(b[j] * (x[t - j] - x[t - j - 1]) for j in range(h))
        x[t + 1] = x[t] + d + rng.normal(scale=noise, size=(12, 3))
    return x


def test_trivial_predictors_are_the_textbook_formulas():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(3, 3, 12, 3))  # x_{t-2}, x_{t-1}, x_t per row
    x, past = f[:, 2], f[:, :2]
    np.testing.assert_array_equal(PERSISTENCE.step(x), x)
    np.testing.assert_allclose(CONSTANT_VELOCITY.step(x, past), 2 * x - f[:, 1], atol=1e-14)
    np.testing.assert_allclose(CONSTANT_ACCELERATION.step(x, past), 3 * x - 3 * f[:, 1] + f[:, 0], atol=1e-14)
    # one frame before may be passed as (B, 12, 3)
    np.testing.assert_array_equal(CONSTANT_VELOCITY.step(x, f[:, 1]), CONSTANT_VELOCITY.step(x, past))
    assert (PERSISTENCE.history, CONSTANT_VELOCITY.history, CONSTANT_ACCELERATION.history) == (0, 1, 2)
    with pytest.raises(ValueError, match=r"H >= 2"):
        CONSTANT_ACCELERATION.step(x, f[:, 1])


def test_fit_ar_recovers_known_coefficients():
    b = (1.6, -0.8, 0.15)
    split = split_pairs(_ar_traj(b))
    fit = fit_ar(split, 4)
    assert fit.order == 4 and fit.history == 3 and fit.name == "ar4"
    np.testing.assert_allclose(fit.coefficients, b, atol=0.05)
    assert fit_ar(split, 1).coefficients == ()  # AR(1) is persistence
    for bad in (0, 9, 2.5, True):
        with pytest.raises(ValueError, match="AR order"):
            fit_ar(split, bad)


def test_ar_is_translation_and_rotation_equivariant():
    """The coefficients act on displacements, so sum c_i = 1 by construction: a shift moves the prediction along."""
    split = split_pairs(_ar_traj((1.6, -0.8, 0.15)))
    p = fit_ar(split, 4)
    rng = np.random.default_rng(3)
    f = rng.normal(size=(5, 4, 12, 3))
    x, past = f[:, -1], f[:, :-1]
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    t = np.array([3.0, -1.0, 2.0])
    got = p.step(x @ q.T + t, past @ q.T + t)
    np.testing.assert_allclose(got, p.step(x, past) @ q.T + t, atol=1e-12)


def test_choose_ar_picks_the_order_of_the_process_on_validation():
    split = split_pairs(_ar_traj((1.6, -0.8, 0.15), frames=800))
    best, scores = choose_ar(split)
    assert sorted(scores) == list(range(1, 9))
    assert best.order == min(scores, key=scores.get)
    assert best.order >= 4  # fewer lags cannot express the process
    assert scores[4] < 0.85 * scores[3] and scores[4] < 1.1 * 1e-4**2  # at the noise floor


def test_suite_names_and_best_of():
    split = split_pairs(_ar_traj((1.6, -0.8, 0.15)))
    suite = predictor_suite(split, ar_order=3)
    assert list(suite) == ["persistence", "constant_velocity", "constant_acceleration", "ar"]
    assert suite["ar"].order == 3
    assert best_of({"a": 2.0, "b": 1.0, "c": float("nan")}) == "b"
    with pytest.raises(ValueError, match="no finite score"):
        best_of({"a": float("nan")})


def test_linear_extrapolation_is_a_plain_dataclass():
    p = LinearExtrapolation("x", "x", (1.0, 0.5))
    assert p.order == 3 and p.history == 2


def test_a_short_trajectory_gets_the_orders_it_can_fit():
    """20 frames: 15 training pairs fit AR(k) up to k = 6 (3 (k - 1) training frames); no order beyond is tried."""
    rng = np.random.default_rng(2)
    split = split_pairs(np.cumsum(rng.normal(scale=0.01, size=(20, 12, 3)), axis=0))
    best, scores = choose_ar(split)
    assert max(scores) == split.n_train // 3 + 1 and best.order in scores
