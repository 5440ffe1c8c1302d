"""Sampled rollouts: isotropic Gaussian noise on every predicted frame, with a scale fitted on the training
residuals, seeded per start (numpy only).

A deterministic model of a Langevin system predicts the mean of the next frame and loses the thermal noise, so
its rollouts freeze. Adding noise of the size of its one-step residuals samples trajectories instead of
predicting one. The noise is isotropic, so the sampled process is E(3)-equivariant in distribution; on planar
data it is drawn in the chain's own plane (found from the frame), so a planar chain stays planar. Every start has
its own generator, seeded by ``(seed, start frame)``: splitting the starts over several runs never changes a
trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._data import frames_before
from ._errors import UsageError

__all__ = [
    "RolloutNoise",
    "residual_scale",
    "thermostat_scale",
    "velocity_gain",
    "internal_msd",
]


def _pairs(lo, hi) -> np.ndarray:
    """The pairs ``t -> t + 1``: ``lo <= t < hi``, or ``lo`` itself when it is an array of t (``hi`` None)."""
    return np.arange(lo, hi) if hi is not None else np.asarray(lo, dtype=np.int64)


def residual_scale(predictor, frames: np.ndarray, lo, hi: int | None = None) -> float:
    """RMS one-step residual per moving coordinate of ``predictor`` on the pairs ``t -> t + 1``, ``lo <= t < hi``
    (or the pairs ``lo``, an array, e.g. :meth:`Split.train_index`; the caller keeps ``h`` frames of their own
    trajectory before each).

    On planar data (z = 0 everywhere) the z coordinate, which never moves, is not counted.
    Shapes: ``frames`` ``(T, N, 3)``.
    """
    frames = np.asarray(frames, dtype=np.float64)
    h = int(predictor.history)
    ts = _pairs(lo, hi)
    ts = ts[ts >= h]
    if not len(ts):
        raise UsageError(f"residual_scale: no pairs with {h} frames before them")
    past = frames_before(frames, ts, h)
    pred = predictor.step(frames[ts], past) if h else predictor.step(frames[ts])
    res = pred - frames[ts + 1]
    ncoord = 2 if np.all(frames[..., 2] == 0) else 3
    return float(np.sqrt(np.sum(res * res) / (res[..., 0].size * ncoord)))


def velocity_gain(coefficients: Sequence[float]) -> float:
    """Stationary variance of ``d_{t+1} = sum_j b_j d_{t-j+1} + e_t`` per unit variance of the white noise ``e``.

    Solved exactly from the companion matrix A (``P = A P A^T + e_1 e_1^T``, the gain is ``P[0, 0]``).
    Raises ``ValueError`` naming the coefficients when the recursion does not damp (a root on or outside the
    unit circle): no noise then holds a steady state.
    """
    b = np.asarray([float(c) for c in coefficients], dtype=np.float64)
    if b.ndim != 1 or not len(b) or not np.all(np.isfinite(b)):
        raise ValueError(f"damping coefficients: got {list(coefficients)!r}; expected 1 or more finite numbers")
    h = len(b)
    a = np.zeros((h, h))
    a[0] = b
    a[1:, :-1] = np.eye(h - 1)
    radius = float(np.max(np.abs(np.linalg.eigvals(a))))
    if not radius < 1.0:
        raise ValueError(
            f"damping coefficients {b.tolist()} do not damp (spectral radius {radius:.6g} >= 1): no thermostat "
            "noise holds a steady state"
        )
    q = np.zeros((h, h))
    q[0, 0] = 1.0
    p = np.linalg.solve(np.eye(h * h) - np.kron(a, a), q.reshape(-1)).reshape(h, h)
    return float(p[0, 0])


def thermostat_scale(coefficients: Sequence[float], frames: np.ndarray, lo, hi: int | None = None) -> float:
    """The noise per coordinate whose steady state under the damping ``coefficients`` has the mean squared
    one-step displacement of ``frames[lo:hi + 1]`` (fluctuation-dissipation: the thermostat of a learned
    Langevin integrator, see :mod:`e3traj.train._langevin`).

    It ignores how the forces shape the steady state. Measured on the simulator: sampled rollouts of the langevin
    model with this noise have the training frames' internal motion (lag 1) to 2% (two passes of rescaling by
    rollouts moved the scale by 1.7%), and 0.8x that of an independent long simulation: 1,638 frames are about
    two friction times (1 / gamma = 833 frames), and the kinetic temperature of a 12-bead chain wanders by that
    much over them. Planar data's z coordinate, which never moves, is not counted.
    Shapes: ``frames`` ``(T, N, 3)``.
    """
    frames = np.asarray(frames, dtype=np.float64)
    ts = _pairs(lo, hi)
    if not len(ts) or ts.min() < 0 or ts.max() + 1 >= len(frames):
        raise UsageError(f"thermostat_scale: no displacements in [{lo}, {hi}) of {len(frames)} frames")
    d = frames[ts + 1] - frames[ts]
    ncoord = 2 if np.all(frames[..., 2] == 0) else 3
    mean_square = float(np.sum(d * d) / (d[..., 0].size * ncoord))
    return math.sqrt(mean_square / velocity_gain(coefficients))


def internal_msd(traj: np.ndarray, lag: int) -> float:
    """Mean squared displacement relative to the centre of mass after ``lag`` steps, over every start.

    Shapes: ``traj`` ``(T, S, N, 3)``; NaN when ``T <= lag``.
    """
    if len(traj) <= lag:
        return float("nan")
    rel = traj - traj.mean(axis=-2, keepdims=True)
    d = rel[lag:] - rel[:-lag]
    return float(np.mean(np.sum(d * d, axis=-1)))


class RolloutNoise:
    """``noise(frames) -> eps``: one draw per start and step, ``scale`` per coordinate.

    ``starts``: the frame index of each batch row in its trajectory (seeds its generator with ``seed``).
    Shapes: ``frames`` ``(B, N, 3)`` -> ``(B, N, 3)``.
    """

    def __init__(self, scale: float, seed: int, starts: Sequence[int] | np.ndarray) -> None:
        if not (isinstance(scale, int | float) and not isinstance(scale, bool) and np.isfinite(scale) and scale >= 0):
            raise UsageError(f"noise scale: got {scale!r}; pass a finite number >= 0")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise UsageError(f"seed: got {seed!r}; pass an integer >= 0")
        self.scale = float(scale)
        self.seed = int(seed)
        self._rngs = [np.random.default_rng([int(seed), int(s)]) for s in np.asarray(starts, dtype=np.int64)]

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if len(frames) != len(self._rngs):
            raise UsageError(f"noise: {len(frames)} frames for {len(self._rngs)} starts")
        eps = np.stack([g.standard_normal(frames.shape[1:]) for g in self._rngs]) * self.scale
        planar = np.all(frames[..., 2] == 0, axis=-1)  # (B,): exactly planar frames keep z = 0
        eps[planar, :, 2] = 0.0
        for b in np.flatnonzero(~planar):
            centred = frames[b] - frames[b].mean(axis=0)
            _, sv, vt = np.linalg.svd(centred, full_matrices=True)
            if sv[-1] <= 1e-6 * sv[0]:  # in a plane of its own (a rotated planar chain, up to float32 rounding)
                n = vt[-1]
                eps[b] -= np.outer(eps[b] @ n, n)
        return eps
