"""The trivial predictors every model is judged against, in numpy (hosts have them).

- persistence: x_{t+1} = x_t
- constant velocity: x_t + (x_t - x_{t-1})
- constant acceleration: 3 x_t - 3 x_{t-1} + x_{t-2}
- AR(k), the fitted linear extrapolation over the last k frames: x_t + sum_j b_j (x_{t-j+1} - x_{t-j}),
  j = 1..k-1, i.e. sum_i c_i x_{t-i} with sum c_i = 1 (the displacement form builds the constraint in). One
  coefficient per lag, shared by all beads and coordinates, least squares over the training pairs: exactly E(3)-
  and permutation-equivariant, so a fair baseline for an equivariant model.

A predictor is anything with ``history`` (frames before the current one it needs) and
``step(x, previous) -> next frame``, ``previous`` the past frames ``(B, H >= history, N, 3)``, chronological.
Bundles follow the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._contract import ar_extrapolate, as_past, past_displacements
from ._data import Split, frames_before
from ._errors import InputError

__all__ = [
    "LinearExtrapolation",
    "PERSISTENCE",
    "CONSTANT_VELOCITY",
    "CONSTANT_ACCELERATION",
    "MAX_AR_ORDER",
    "fit_ar",
    "choose_ar",
    "predictor_suite",
    "best_of",
]

#: The largest AR order :func:`choose_ar` tries (frames in the window).
MAX_AR_ORDER = 8


@dataclass(frozen=True)
class LinearExtrapolation:
    """``x_t + sum_j b_j d_j`` with ``d_j = x_{t-j+1} - x_{t-j}``: persistence (no b), constant velocity (b = 1),
    constant acceleration (b = 2, -1), or a fitted AR(k) (k - 1 coefficients).

    Shapes: ``step(x (B, N, 3), previous (B, H, N, 3)) -> (B, N, 3)`` float64.
    """

    name: str
    label: str
    coefficients: tuple[float, ...]

    @property
    def history(self) -> int:
        return len(self.coefficients)

    @property
    def order(self) -> int:
        """k: the frames in the window (the current one and ``history`` before it)."""
        return len(self.coefficients) + 1

    def step(self, x: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.history == 0:
            return np.array(x, copy=True)
        past = as_past(np.asarray(previous, dtype=np.float64) if previous is not None else None, self.history, x.shape)
        return ar_extrapolate(x, past, self.coefficients)


PERSISTENCE = LinearExtrapolation("persistence", "persistence (copy the frame)", ())
CONSTANT_VELOCITY = LinearExtrapolation("constant_velocity", "constant velocity", (1.0,))
CONSTANT_ACCELERATION = LinearExtrapolation("constant_acceleration", "constant acceleration", (2.0, -1.0))


def _windows(frames: np.ndarray, ts: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x = frames[t], past = frames[t-h:t], y = frames[t+1] for each t.

    Shapes: -> ``(n, N, 3)``, ``(n, h, N, 3)``, ``(n, N, 3)``.
    """
    return frames[ts], frames_before(frames, ts, h), frames[ts + 1]


def fit_ar(split: Split, order: int) -> LinearExtrapolation:
    """AR(order) fitted by least squares on the training pairs that have ``order - 1`` frames before them.

    Raises ValueError for an order outside 1..the training pairs.
    """
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or not 1 <= order <= MAX_AR_ORDER:
        raise ValueError(f"AR order must be an integer in 1..{MAX_AR_ORDER}, got {order!r}")
    h = int(order) - 1
    if h == 0:
        return LinearExtrapolation("ar1", "AR(1) = persistence", ())
    frames = np.asarray(split.frames, dtype=np.float64)
    ts = split.train_index(h)
    if len(ts) < 2 * h:
        raise ValueError(f"AR({order}) needs at least {3 * h} training frames, the split has {split.n_train}")
    x, past, y = _windows(frames, ts, h)
    d = past_displacements(x, past, h)
    a = np.stack([di.reshape(-1) for di in d], axis=1)  # (n * 36, h)
    b, *_ = np.linalg.lstsq(a, (y - x).reshape(-1), rcond=None)
    return LinearExtrapolation(f"ar{order}", f"AR({order}), fitted", tuple(float(v) for v in b))


def validation_windows(split: Split, h: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Every validation pair's input, the ``h`` frames before it and its label (what every predictor is scored on).

    Shapes: -> ``(n, N, 3)``, ``(n, h, N, 3)`` (None for h = 0), ``(n, N, 3)``.
    Raises InputError when the first validation pair has fewer than ``h`` frames before it.
    """
    if split.history_room < h:
        raise InputError(
            f"trajectory: {h} frames are needed before the first validation pair, it has {split.history_room}"
        )
    frames = np.asarray(split.frames, dtype=np.float64)
    return _windows(frames, split.val_index(h), h)


def _val_mse(p, split: Split, h: int) -> float:
    x, past, y = validation_windows(split, h)
    d = p.step(x, past) - y
    return float(np.mean(d * d))


def choose_ar(split: Split, orders: Sequence[int] | None = None) -> tuple[LinearExtrapolation, dict[int, float]]:
    """The fitted AR(k) with the lowest one-step validation MSE over ``orders`` (default 1..8).

    Every order is scored on the same validation pairs. Returns the predictor and ``{k: validation MSE}``.
    """
    if orders is None:  # every order whose window fits before the first validation pair and can be fitted
        top = min(MAX_AR_ORDER, split.history_room + 1)  # (one trajectory: k <= n_train // 3 + 1, as fit_ar needs)
        orders = [k for k in range(1, top + 1) if len(split.train_index(k - 1)) >= 2 * (k - 1)]
    orders = [int(k) for k in orders]
    if not orders:
        raise ValueError("choose_ar: no AR order to try")
    h = max(orders) - 1
    if split.history_room < h:
        raise ValueError(f"choose_ar: AR({max(orders)}) needs {h} frames before the first validation pair")
    fits = {k: fit_ar(split, k) for k in orders}
    scores = {k: _val_mse(p, split, h) for k, p in fits.items()}
    best = min(scores, key=lambda k: (scores[k], k))
    return fits[best], scores


def predictor_suite(split: Split, ar_order: int | None = None) -> dict[str, LinearExtrapolation]:
    """Persistence, constant velocity, constant acceleration and the fitted AR(k) (k chosen on validation from
    1..8 unless given), keyed by name (``persistence``, ``constant_velocity``, ``constant_acceleration``, ``ar``).
    """
    ar = fit_ar(split, ar_order) if ar_order is not None else choose_ar(split)[0]
    return {
        "persistence": PERSISTENCE,
        "constant_velocity": CONSTANT_VELOCITY,
        "constant_acceleration": CONSTANT_ACCELERATION,
        "ar": ar,
    }


def best_of(scores: dict[str, float]) -> str:
    """The name with the lowest finite score (ties: the first); ValueError when none is finite."""
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    if not finite:
        raise ValueError(f"best_of: no finite score among {sorted(scores)}")
    return min(finite, key=lambda k: finite[k])
