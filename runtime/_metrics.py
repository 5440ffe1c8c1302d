"""Honest metrics: every model score sits next to the two trivial predictors on the same pairs.

- persistence ("copy the frame"): x_{t+1} = x_t
- constant velocity: x_{t+1} = x_t + (x_t - x_{t-1})
- skill = 1 - MSE / MSE_persistence (0: no better than copying the frame; < 0: worse)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ._contract import VELOCITY_CORRECTION, next_frame
from ._data import Split

__all__ = [
    "StepFn",
    "mse",
    "skill",
    "rmsd",
    "persistence_step",
    "constant_velocity_step",
    "one_step_metrics",
    "rollout_starts",
    "rollout_rmsd",
    "evaluate_predictor",
]

#: ``step(positions, previous) -> next positions``; all ``(B, 12, 3)`` float64. ``previous`` is the frame before.
StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def mse(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean squared error over every coordinate (float64). Shapes: any, equal."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.mean(d * d))


def skill(model_mse: float, persistence_mse: float) -> float:
    """1 - MSE / MSE_persistence."""
    return float(1.0 - model_mse / persistence_mse) if persistence_mse > 0 else float("nan")


def rmsd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root-mean-square deviation over beads, per frame. Shapes: ``(..., 12, 3)`` -> ``(...)``."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return np.sqrt(np.mean(np.sum(d * d, axis=-1), axis=-1))


def persistence_step(x: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """Copy the frame."""
    return np.array(x, dtype=np.float64, copy=True)


def constant_velocity_step(x: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """x_t + (x_t - x_{t-1}): the velocity-correction rule with no correction."""
    return next_frame(VELOCITY_CORRECTION, np.asarray(x, dtype=np.float64), 0.0, np.asarray(prev, dtype=np.float64))


def one_step_metrics(step: StepFn, split: Split, batch_size: int = 4096) -> dict[str, float]:
    """One-step validation MSE of ``step`` and of the trivial predictors on the same pairs."""
    x, y, prev = split.val_x, split.val_y, split.val_prev
    pred = np.concatenate([step(x[i : i + batch_size], prev[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    m = mse(pred, y)
    p = mse(x, y)
    cv = mse(constant_velocity_step(x, prev), y)
    return {
        "val_mse": m,
        "val_rmse": float(np.sqrt(m)),
        "persistence_mse": p,
        "constant_velocity_mse": cv,
        "skill": skill(m, p),
        "skill_vs_constant_velocity": skill(m, cv),
        "n_val_pairs": len(x),
    }


def rollout_starts(split: Split, horizon: int, n_starts: int) -> np.ndarray:
    """Evenly spaced starting frames in the validation part whose ``horizon`` true frames exist."""
    first = split.val_start
    last = len(split.frames) - 1 - horizon
    if last < first:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(first, last, num=max(1, n_starts)).round().astype(np.int64))


def _roll(step: StepFn, frames: np.ndarray, starts: np.ndarray, horizon: int) -> np.ndarray:
    """Positions predicted for k = 0..horizon. Shapes: -> ``(horizon + 1, len(starts), 12, 3)``."""
    out = np.empty((horizon + 1, len(starts), 12, 3))
    out[0] = frames[starts]
    prev = frames[starts - 1]
    for k in range(1, horizon + 1):
        nxt = step(out[k - 1], prev)
        prev = out[k - 1]
        out[k] = nxt
        if not np.all(np.isfinite(nxt)):
            out[k + 1 :] = np.nan
            break
    return out


def rollout_rmsd(
    steps: dict[str, StepFn], split: Split, ks: Sequence[int] = (1, 10, 100), n_starts: int = 8
) -> dict[str, dict[str, float]]:
    """Mean RMSD after k autoregressive steps, from starting frames in the validation part.

    The horizon shrinks to what the validation part holds; a k beyond it is left out.
    Returns ``{name: {"k=1": rmsd, ...}}`` for every step function given.
    """
    n_val = len(split.frames) - 1 - split.val_start
    ks = [int(k) for k in ks if 0 < int(k) <= n_val]
    if not ks:
        return {name: {} for name in steps}
    horizon = max(ks)
    starts = rollout_starts(split, horizon, n_starts)
    truth = np.stack([split.frames[starts + k] for k in range(horizon + 1)])
    result = {}
    for name, fn in steps.items():
        pred = _roll(fn, split.frames, starts, horizon)
        err = rmsd(pred, truth)  # (horizon + 1, n_starts)
        result[name] = {f"k={k}": float(np.mean(err[k])) for k in ks}
    result["_starts"] = {"starts": starts.tolist()}  # type: ignore[dict-item]
    return result


def evaluate_predictor(
    step: StepFn, split: Split, *, ks: Sequence[int] = (1, 10, 100), n_starts: int = 8
) -> dict[str, object]:
    """One-step metrics and k-step rollout RMSD for a model and the two trivial predictors."""
    one = one_step_metrics(step, split)
    roll = rollout_rmsd(
        {"model": step, "persistence": persistence_step, "constant_velocity": constant_velocity_step},
        split,
        ks=ks,
        n_starts=n_starts,
    )
    starts = roll.pop("_starts", {}).get("starts", [])
    return {"one_step": one, "rollout_rmsd": roll, "rollout_starts": starts}
