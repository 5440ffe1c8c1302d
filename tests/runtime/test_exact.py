"""Bit-reproducible arithmetic (runtime/_exact.py): accurate enough, and independent of how it is called."""

from __future__ import annotations

import math

import numpy as np
import pytest

from e3traj.runtime._exact import _cos_exact, _exp_exact, _log, _Normals, _sum_axis1


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
