"""What the figures show, computed without matplotlib: R², rollout RMSD curves, training curves from manifests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ._contract import MIN_BEADS
from ._errors import InputError, UsageError
from ._metrics import StepFn, _roll, as_predictor, rmsd

__all__ = ["TrainingCurve", "r2_score", "rollout_rmsd_curves", "training_curve"]


def _frames(arr, name: str) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] < MIN_BEADS or a.shape[2] != 3 or a.shape[0] < 1:
        raise UsageError(f"{name}: shape {a.shape}; expected (T, N, 3) with T >= 1, N >= {MIN_BEADS}")
    return a


def r2_score(pred: np.ndarray, true: np.ndarray) -> float:
    """Coefficient of determination over every coordinate: 1 - SS_res / SS_tot (NaN when SS_tot is 0).

    Shapes: any, equal.
    """
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(true, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise UsageError(f"pred has {p.size} values, true has {t.size}; pass arrays of the same shape")
    ss_tot = float(np.sum((t - t.mean()) ** 2)) if t.size else 0.0
    if ss_tot == 0.0:
        return float("nan")
    with np.errstate(over="ignore", invalid="ignore"):
        return float(1.0 - np.sum((p - t) ** 2) / ss_tot)


def rollout_rmsd_curves(
    steps: Mapping[str, StepFn], frames: np.ndarray, starts: Sequence[int] | np.ndarray, horizon: int
) -> dict[str, np.ndarray]:
    """RMSD to the true frames after k = 1..horizon autoregressive steps, per predictor and starting frame.

    A predictor that becomes non-finite gives NaN from that step on.

    ``steps``: name -> predictor (``history`` and ``step``; a bundle) or plain ``step(x, prev)``.

    Shapes: ``frames`` ``(T, N, 3)``; ``starts`` ``(S,)`` with ``history <= start`` (at least 1) and
    ``start + horizon < T`` -> each curve ``(horizon, S)``.
    """
    frames = _frames(frames, "frames")
    st = np.asarray(starts, dtype=np.int64)
    if isinstance(horizon, bool) or int(horizon) < 1:
        raise UsageError(f"horizon: got {horizon!r}; pass a positive number of steps")
    horizon = int(horizon)
    first = max([1] + [int(as_predictor(fn).history) for fn in steps.values()])
    if st.ndim != 1 or not st.size or st.min() < first or st.max() + horizon >= len(frames):
        raise UsageError(
            f"starts: {st.tolist()} need {first} <= start and start + {horizon} < {len(frames)} (the frames available)"
        )
    truth = np.stack([frames[st + k] for k in range(horizon + 1)])
    out = {}
    for name, fn in steps.items():
        with np.errstate(all="ignore"):
            pred = _roll(fn, frames, st, horizon)
            out[name] = rmsd(pred, truth)[1:]
    return out


@dataclass(frozen=True)
class TrainingCurve:
    """Validation MSE over wall time for one model, with the trivial predictors' MSE on the same pairs.

    Shapes: ``time``, ``val_mse`` ``(E,)`` (one value per epoch).
    """

    label: str
    time: np.ndarray
    val_mse: np.ndarray
    persistence_mse: float | None = None
    constant_velocity_mse: float | None = None
    ar_mse: float | None = None  # the fitted AR(k) (bundles from before the suite have none)
    ar_order: int | None = None


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def training_curve(manifest: Mapping, label: str, where: str = "manifest.json") -> TrainingCurve:
    """Read ``training.history`` (and ``training.metrics``) of a bundle manifest.

    Raises:
        InputError: no or an empty history, or entries without numeric ``time``/``val_mse`` (``where`` names
            the manifest in the message).
    """
    training = manifest.get("training")
    history = training.get("history") if isinstance(training, Mapping) else None
    if history is None or (isinstance(history, list) and not history):
        state = "is empty" if isinstance(history, list) else "is missing"
        raise InputError(
            f"{where}: training.history {state}, so there is no training curve to plot; "
            "export a checkpoint made by 'e3traj train' (it records the history) or leave this bundle out"
        )
    if not isinstance(history, list):
        raise InputError(f"{where}: training.history is a {type(history).__name__}, not a list; re-export the bundle")
    times, vals = [], []
    for i, entry in enumerate(history):
        t = _number(entry.get("time")) if isinstance(entry, Mapping) else None
        v = entry.get("val_mse") if isinstance(entry, Mapping) else None
        v = float("nan") if v is None else _number(v)  # JSON null: a diverged epoch
        if t is None or v is None:
            raise InputError(
                f"{where}: training.history[{i}] is {entry!r}; each entry needs numeric 'time' and 'val_mse'"
            )
        times.append(t)
        vals.append(v)
    metrics = training.get("metrics") if isinstance(training.get("metrics"), Mapping) else {}
    return TrainingCurve(
        label=label,
        time=np.asarray(times, dtype=np.float64),
        val_mse=np.asarray(vals, dtype=np.float64),
        persistence_mse=_number(metrics.get("persistence_mse")),
        constant_velocity_mse=_number(metrics.get("constant_velocity_mse")),
        ar_mse=_number(metrics.get("ar_mse")),
        ar_order=int(metrics["ar_order"]) if _number(metrics.get("ar_order")) is not None else None,
    )
