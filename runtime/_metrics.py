"""Honest metrics: every model score sits next to the two trivial predictors on the same pairs.

- persistence ("copy the frame"): x_{t+1} = x_t
- constant velocity: x_{t+1} = x_t + (x_t - x_{t-1})
- skill = 1 - MSE / MSE_persistence (0: no better than copying the frame; < 0: worse)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ._contract import VELOCITY_CORRECTION, next_frame
from ._data import N_BEADS, Split, lift_to_3d, split_pairs
from ._errors import InputError
from ._rollout import rollout

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
    "trajectory_stats",
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


class _Predictor:
    """A ``step(positions, previous)`` function seen as what :func:`~e3traj.runtime.rollout` steps."""

    needs_previous = True

    def __init__(self, step: StepFn) -> None:
        self.step = step


def _roll(step: StepFn, frames: np.ndarray, starts: np.ndarray, horizon: int) -> np.ndarray:
    """Positions predicted for k = 0..horizon by the one rollout loop; NaN from the first non-finite step on.

    Shapes: -> ``(horizon + 1, len(starts), 12, 3)``.
    """
    res = rollout(_Predictor(step), frames[starts], horizon, previous=frames[starts - 1])
    out = np.full((horizon + 1, len(starts), 12, 3), np.nan)
    out[: len(res.traj)] = res.traj
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


def trajectory_stats(frames) -> dict:
    """Statistics of a trajectory, to compare a simulated one with the chapter's data.

    Args:
        frames: positions, ``(T, 12, 2|3)`` with ``T >= 3``.

    Returns:
        A dict of floats:
        ``bond_mean``, ``bond_std`` (bond lengths over all frames and bonds);
        ``rms_disp`` (RMS of ``x_{t+1} - x_t`` per coordinate);
        ``rms_second_diff`` (RMS of ``x_{t+1} - 2 x_t + x_{t-1}`` per coordinate);
        ``vacf1`` (lag-1 autocorrelation of the per-frame displacements);
        ``max_pair`` (largest distance between two beads in any frame);
        ``rg_mean`` (mean radius of gyration);
        ``cos_bond_mean``, ``cos_bond_std`` (cosine between successive bond vectors, 1 = straight);
        ``persistence_mse``, ``const_velocity_mse`` and their ratio ``cv_gain`` (one-step MSE on the chapter's
        validation split, 2D lifted to 3D with z = 0 so the figures match the chapter's).

    Shapes: ``frames`` ``(T, 12, 2|3)``.
    """
    a = np.asarray(frames, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] != N_BEADS or a.shape[2] not in (2, 3) or a.shape[0] < 3:
        raise ValueError(f"trajectory_stats: expected shape (T >= 3, {N_BEADS}, 2|3), got {a.shape}")
    a = lift_to_3d(a)
    bonds = a[:, 1:] - a[:, :-1]
    blen = np.linalg.norm(bonds, axis=-1)
    cos = np.einsum("tbi,tbi->tb", bonds[:, 1:], bonds[:, :-1]) / (blen[:, 1:] * blen[:, :-1])
    step = np.diff(a, axis=0)
    planar = bool(np.all(a[..., 2] == 0))
    ncoord = 2 if planar else 3
    second = a[2:] - 2 * a[1:-1] + a[:-2]
    flat = step.reshape(len(step), -1)
    vacf1 = float(np.sum(flat[1:] * flat[:-1]) / np.sum(flat[:-1] ** 2)) if np.any(flat) else float("nan")
    max_pair2 = 0.0
    for lo in range(0, len(a), 4096):  # in blocks, to bound memory on long trajectories
        diff = a[lo : lo + 4096, :, None] - a[lo : lo + 4096, None]
        max_pair2 = max(max_pair2, float(np.max(np.einsum("tijk,tijk->tij", diff, diff))))
    com = a.mean(axis=1, keepdims=True)
    rg = np.sqrt(np.mean(np.sum((a - com) ** 2, axis=-1), axis=1))
    stats = {
        "frames": int(a.shape[0]),
        "bond_mean": float(blen.mean()),
        "bond_std": float(blen.std()),
        # per moving coordinate: the z = 0 of a planar trajectory is not counted
        "rms_disp": float(np.sqrt(np.sum(step**2) / (step[..., 0].size * ncoord))),
        "rms_second_diff": float(np.sqrt(np.sum(second**2) / (second[..., 0].size * ncoord))),
        "vacf1": vacf1,
        "max_pair": math.sqrt(max_pair2),
        "rg_mean": float(rg.mean()),
        "cos_bond_mean": float(cos.mean()),
        "cos_bond_std": float(cos.std()),
    }
    # the chapter's split: pairs (frames[:-1], frames[1:]), the first int(0.8 * pairs) train, the rest validate
    pers = cv = gain = float("nan")
    try:
        split = split_pairs(a)
    except InputError:
        split = None
    if split is not None:
        pers = float(np.mean((split.val_y - split.val_x) ** 2))
        cv = float(np.mean((split.val_y - (2 * split.val_x - split.val_prev)) ** 2))
        gain = pers / cv if cv > 0 else float("inf")
    stats.update(persistence_mse=pers, const_velocity_mse=cv, cv_gain=gain)
    return stats
