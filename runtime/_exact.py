"""Arithmetic that gives the same bits on every machine, for the simulator.

Only correctly rounded IEEE operations (``+ - * /`` and ``sqrt``, elementwise), sums in a fixed order, exact
conversions, and transcendental constants in 40-digit decimal (software) arithmetic: no BLAS, no SIMD-dispatched
numpy function and no call into the C library's libm (whose ``exp``/``log``/``cos`` glibc picks by CPU).
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np

from ._errors import UsageError

__all__ = ["_Normals", "_log", "_exp_exact", "_cos_exact", "_sum_axis1", "_dot_last", "_centred"]

_DECIMAL_DIGITS = 40


def _exp_exact(x: float) -> float:
    """``exp(x)`` correctly rounded from 40 decimal digits (software arithmetic: the same on every machine)."""
    with localcontext() as ctx:
        ctx.prec = _DECIMAL_DIGITS
        return float(Decimal(x).exp())


def _cos_exact(x: float) -> float:
    """``cos(x)`` for ``|x| <= 4`` by its Taylor series in 40-digit decimal arithmetic (the same on every machine)."""
    if not abs(x) <= 4.0:
        raise UsageError(f"_cos_exact: expected |x| <= 4, got {x!r}")
    with localcontext() as ctx:
        ctx.prec = _DECIMAL_DIGITS + 5
        x2 = Decimal(x) * Decimal(x)
        term = total = Decimal(1)
        k = 0
        while abs(term) > Decimal(10) ** -(_DECIMAL_DIGITS + 3):
            k += 2
            term = -term * x2 / (k * (k - 1))
            total += term
        return float(total)


def _wca_factor() -> float:
    """``2^(1/6)``, the WCA cutoff in units of sigma, in 40-digit decimal arithmetic (not the C library's pow)."""
    with localcontext() as ctx:
        ctx.prec = _DECIMAL_DIGITS
        return float((Decimal(2).ln() / 6).exp())


_WCA_FACTOR = _wca_factor()


_TWO_M51 = math.ldexp(1.0, -51)


_LN2 = 0.6931471805599453  # ln 2 rounded to float64


_SQRT_HALF = 0.7071067811865476


#: 2 atanh(t) = 2 t (1 + t^2/3 + t^4/5 + ...): with |t| <= 0.1716 the terms up to t^24 reach 1e-18
_ATANH_COEFS = tuple(1.0 / (2 * k + 1) for k in range(12, -1, -1))


def _log(s: np.ndarray) -> np.ndarray:
    """Natural logarithm of positive finite floats in elementwise IEEE arithmetic only (within 2 ulp).

    ``s = m 2^e`` with ``m`` in ``[sqrt(1/2), sqrt(2))`` (``frexp`` is exact); ``ln m = 2 atanh(t)``,
    ``t = (m - 1) / (m + 1)``, by a fixed Horner scheme. No libm or SIMD-dispatched call, so the bits are the same
    on every machine.

    Shapes: any -> the same.
    """
    m, e = np.frexp(s)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)
    e = (e - low).astype(np.float64)
    t = (m - 1.0) / (m + 1.0)
    t2 = t * t
    acc = np.full_like(t, _ATANH_COEFS[0])
    for c in _ATANH_COEFS[1:]:
        acc = acc * t2 + c
    return e * _LN2 + 2.0 * t * acc


class _Normals:
    """Standard normal deviates from a seed, bit-identical on every machine.

    Marsaglia's polar method on the raw 64-bit PCG64 stream: two words give ``u, v`` in ``(-1, 1)`` (exact
    conversions), kept when ``0 < s = u^2 + v^2 < 1``, giving ``u sqrt(-2 ln s / s)`` and ``v sqrt(...)``. The
    sequence depends on the seed alone, not on how many are taken at a time.
    """

    _BLOCK = 8192  # pairs of words per refill; any size gives the same sequence

    def __init__(self, seed: int) -> None:
        self._bits = np.random.PCG64(seed)
        self._buf = np.empty(0)

    def _refill(self) -> None:
        raw = self._bits.random_raw(2 * self._BLOCK)
        u = ((raw >> np.uint64(12)).astype(np.float64) + 0.5) * _TWO_M51 - 1.0  # exact: (2k + 1) 2^-52 - 1
        u, v = u[0::2], u[1::2]
        s = u * u + v * v
        keep = (s > 0.0) & (s < 1.0)
        u, v, s = u[keep], v[keep], s[keep]
        r = np.sqrt(-2.0 * _log(s) / s)
        pairs = np.empty((len(s), 2))
        pairs[:, 0] = u * r
        pairs[:, 1] = v * r
        self._buf = np.concatenate([self._buf, pairs.reshape(-1)])

    def take(self, shape) -> np.ndarray:
        """The next ``prod(shape)`` deviates. Shapes: -> ``shape``."""
        n = int(np.prod(shape, dtype=np.int64))
        while len(self._buf) < n:
            self._refill()
        out, self._buf = self._buf[:n], self._buf[n:]
        return out.reshape(shape)

    def scalar(self) -> float:
        return float(self.take(1)[0])


def _sum_axis1(a: np.ndarray) -> np.ndarray:
    """Sum over axis 1 in a fixed order of elementwise additions (no reduction kernel decides it).

    Halving: the second half is added to the first (``a[:, k] + a[:, k + m // 2]``), an odd last column is
    carried over, until one column is left; for four terms ``(a0 + a2) + (a1 + a3)``.

    Shapes: ``(n, m, ...)`` -> ``(n, ...)``.
    """
    while a.shape[1] > 1:
        h = a.shape[1] // 2
        s = a[:, :h] + a[:, h : 2 * h]
        a = np.concatenate([s, a[:, 2 * h :]], axis=1) if a.shape[1] % 2 else s
    return a[:, 0]


def _dot_last(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum(a * b, axis=-1)`` over 2 or 3 coordinates, spelled out. Shapes: ``(..., dim)`` x2 -> ``(...)``."""
    out = a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1]
    if a.shape[-1] == 3:
        out = out + a[..., 2] * b[..., 2]
    return out


def _centred(x: np.ndarray) -> np.ndarray:
    """``x - mean(x, axis=0)`` with the mean summed in a fixed order. Shapes: ``(n, dim)`` -> ``(n, dim)``."""
    return x - _sum_axis1(x.T[:, :, None])[:, 0] / x.shape[0]
