"""Honest metrics: every model score sits next to the whole predictor suite on the same pairs.

The suite (:mod:`e3traj.runtime._predictors`): persistence, constant velocity, constant acceleration and the
fitted linear extrapolation AR(k). Every report names the best of them and the model's ratio to it.

- skill = 1 - MSE / MSE_persistence (0: no better than copying the frame; < 0: worse)
- ratio to the best = MSE / MSE_best (< 1: the model beats every trivial predictor)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ._contract import MIN_BEADS, as_past
from ._data import Split, frames_before, lift_to_3d, split_pairs
from ._errors import InputError
from ._predictors import CONSTANT_VELOCITY, PERSISTENCE, best_of, predictor_suite, validation_windows
from ._rollout import rollout

__all__ = [
    "StepFn",
    "mse",
    "skill",
    "rmsd",
    "persistence_step",
    "constant_velocity_step",
    "as_predictor",
    "one_step_metrics",
    "rollout_starts",
    "rollout_rmsd",
    "evaluate_predictor",
    "trajectory_stats",
    "SUITE_LABELS",
]

#: ``step(positions, previous) -> next positions``; all ``(B, N, 3)`` float64. ``previous`` is the frame before.
StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: Report labels of the suite's members, in report order.
SUITE_LABELS = {
    "persistence": "persistence",
    "constant_velocity": "constant velocity",
    "constant_acceleration": "constant acceleration",
    "ar": "fitted AR(k)",
}


def mse(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean squared error over every coordinate (float64). Shapes: any, equal."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.mean(d * d))


def skill(model_mse: float, persistence_mse: float) -> float:
    """1 - MSE / MSE_persistence."""
    return float(1.0 - model_mse / persistence_mse) if persistence_mse > 0 else float("nan")


def rmsd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root-mean-square deviation over beads, per frame. Shapes: ``(..., N, 3)`` -> ``(...)``."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return np.sqrt(np.mean(np.sum(d * d, axis=-1), axis=-1))


def persistence_step(x: np.ndarray, prev: np.ndarray | None = None) -> np.ndarray:
    """Copy the frame."""
    return PERSISTENCE.step(x)


def constant_velocity_step(x: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """x_t + (x_t - x_{t-1}). Shapes: ``x``, ``prev`` ``(B, N, 3)``."""
    return CONSTANT_VELOCITY.step(x, prev)


class _Predictor:
    """A plain ``step(positions, previous)`` function (``previous`` the frame before) as a predictor."""

    history = 1

    def __init__(self, step: StepFn) -> None:
        self._fn = step

    def step(self, x, previous=None):
        past = as_past(previous, 1, np.shape(x))
        return self._fn(x, past[:, -1])


def as_predictor(p):
    """A predictor (``history`` and ``step(x, previous)``) as it is; a bundle; or a plain ``step(x, prev)``."""
    if hasattr(p, "step") and hasattr(p, "history"):
        return p
    if callable(p):
        return _Predictor(p)
    raise TypeError(f"not a predictor: {p!r}")


def _predict(p, x, past, batch_size: int = 4096) -> np.ndarray:
    h = int(p.history)
    parts = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        parts.append(p.step(xb, past[i : i + batch_size, past.shape[1] - h :]) if h else p.step(xb))
    return np.concatenate(parts)


def one_step_metrics(model, split: Split, suite: Mapping | None = None, batch_size: int = 4096) -> dict:
    """One-step validation MSE of ``model`` and of every member of the predictor suite, on the same pairs.

    ``model``: a predictor, a bundle, or a plain ``step(x, prev)``. ``suite``: default
    :func:`~e3traj.runtime._predictors.predictor_suite` of ``split``. Keys: ``val_mse``, ``val_rmse``,
    ``<name>_mse`` for each member, ``ar_order``, ``ar_coefficients``, ``best_baseline`` (the member with the
    lowest MSE), ``best_baseline_mse``, ``ratio_to_best`` (model / best), ``skill`` (vs persistence),
    ``skill_vs_constant_velocity``, ``n_val_pairs``.
    """
    model = as_predictor(model)
    suite = dict(predictor_suite(split) if suite is None else suite)
    h = max([int(model.history)] + [int(p.history) for p in suite.values()])
    x, past, y = validation_windows(split, h)
    m = mse(_predict(model, x, past, batch_size), y)
    out: dict = {"val_mse": m, "val_rmse": float(np.sqrt(m))}
    scores = {name: mse(_predict(p, x, past, batch_size), y) for name, p in suite.items()}
    for name, v in scores.items():
        out[f"{name}_mse"] = v
    if "ar" in suite:
        out["ar_order"] = int(suite["ar"].order)
        out["ar_coefficients"] = [float(c) for c in suite["ar"].coefficients]
    best = best_of(scores)
    out.update(
        best_baseline=best,
        best_baseline_mse=scores[best],
        ratio_to_best=float(m / scores[best]) if scores[best] > 0 else float("nan"),
        skill=skill(m, scores.get("persistence", mse(x, y))),
        skill_vs_constant_velocity=skill(m, scores.get("constant_velocity", float("nan"))),
        n_val_pairs=len(x),
    )
    return out


def rollout_starts(split: Split, horizon: int, n_starts: int, history: int = 0) -> np.ndarray:
    """Evenly spaced starting frames in the validation part whose ``horizon`` true frames exist (and whose
    ``history`` frames before exist)."""
    if not split.segments:
        first = max(split.val_start, history)
        last = len(split.frames) - 1 - horizon
        if last < first:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.linspace(first, last, num=max(1, n_starts)).round().astype(np.int64))
    # several trajectories: every start in the validation part of its own, with its horizon inside it too
    ok = np.concatenate([np.arange(max(v, a + history), b - horizon) for a, v, b in split.parts])
    if not len(ok):
        return np.zeros(0, dtype=np.int64)
    return np.unique(ok[np.linspace(0, len(ok) - 1, num=max(1, n_starts)).round().astype(np.int64)])


def _roll(step, frames: np.ndarray, starts: np.ndarray, horizon: int) -> np.ndarray:
    """Positions predicted for k = 0..horizon by the one rollout loop; NaN from the first non-finite step on.

    ``step``: a predictor (or a plain ``step(x, prev)``). Shapes: -> ``(horizon + 1, len(starts), N, 3)``.
    """
    p = as_predictor(step)
    h = int(p.history)
    previous = frames_before(frames, starts, h)
    res = rollout(p, frames[starts], horizon, previous=previous)
    out = np.full((horizon + 1, len(starts)) + frames.shape[1:], np.nan)
    out[: len(res.traj)] = res.traj
    return out


def rollout_rmsd(
    steps: Mapping, split: Split, ks: Sequence[int] = (1, 10, 100), n_starts: int = 8
) -> dict[str, dict[str, float]]:
    """Mean RMSD after k autoregressive steps, from starting frames in the validation part.

    The horizon shrinks to what the validation part holds; a k beyond it is left out. Every predictor starts
    from the same frames. Returns ``{name: {"k=1": rmsd, ...}}`` for every predictor given.
    """
    h = max(int(as_predictor(p).history) for p in steps.values())
    n_val = max(b - 1 - max(v, a + h) for a, v, b in split.parts)  # a held-out file loses its first h starts
    ks = [int(k) for k in ks if 0 < int(k) <= n_val]
    if not ks:
        return {name: {} for name in steps}
    horizon = max(ks)
    starts = rollout_starts(split, horizon, n_starts, history=h)
    truth = np.stack([split.frames[starts + k] for k in range(horizon + 1)])
    result = {}
    for name, fn in steps.items():
        pred = _roll(fn, split.frames, starts, horizon)
        err = rmsd(pred, truth)  # (horizon + 1, n_starts)
        result[name] = {f"k={k}": float(np.mean(err[k])) for k in ks}
    result["_starts"] = {"starts": starts.tolist()}  # type: ignore[dict-item]
    return result


def evaluate_predictor(
    step, split: Split, *, ks: Sequence[int] = (1, 10, 100), n_starts: int = 8, suite: Mapping | None = None
) -> dict[str, object]:
    """One-step metrics and k-step rollout RMSD for a model and every member of the predictor suite.

    ``rollout_best`` names, per k, the suite member with the lowest RMSD.
    """
    suite = dict(predictor_suite(split) if suite is None else suite)
    one = one_step_metrics(step, split, suite)
    roll = rollout_rmsd({"model": step, **suite}, split, ks=ks, n_starts=n_starts)
    starts = roll.pop("_starts", {}).get("starts", [])
    ks_done = list(roll.get("model", {}))
    best = {}
    for k in ks_done:
        try:
            best[k] = best_of({n: roll[n][k] for n in suite})
        except ValueError:  # every member diverged at this horizon: no best to name
            pass
    return {"one_step": one, "rollout_rmsd": roll, "rollout_starts": starts, "rollout_best": best}


def trajectory_stats(frames) -> dict:
    """Statistics of a trajectory, to compare a simulated one with the chapter's data.

    Args:
        frames: positions, ``(T, N, 2|3)`` with ``T >= 3``.

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

    Shapes: ``frames`` ``(T, N, 2|3)``.
    """
    a = np.asarray(frames, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] < MIN_BEADS or a.shape[2] not in (2, 3) or a.shape[0] < 3:
        raise ValueError(f"trajectory_stats: expected shape (T >= 3, N >= {MIN_BEADS}, 2|3), got {a.shape}")
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
