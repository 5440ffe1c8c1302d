"""The chapter's figures from data sources, bundles and rollouts: load, compute, draw one figure, summarise it.

The ``e3traj plot`` commands (:mod:`e3traj.runtime.cli._plot`) are thin wrappers over these; everything is numpy and
onnxruntime, and the drawing modules import matplotlib only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._contract import MIN_BEADS
from ._errors import InputError, UsageError, first_line

__all__ = ["load_rollout"]


def load_rollout(path: Path) -> dict[str, np.ndarray]:
    """Read a rollout ``.npz`` written by ``e3traj rollout`` (never unpickles).

    Shapes: ``traj`` ``(T, B, N, 3)``, ``starts`` ``(B,)``.
    """

    where = str(path)
    if not path.exists():
        raise InputError(f"{where}: file not found; pass a rollout .npz written by 'e3traj rollout'")
    if path.is_dir():
        raise InputError(f"{where}: is a folder; pass a rollout .npz written by 'e3traj rollout'")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise InputError(f"{where}: holds a single array, not a rollout .npz; pass the output of 'e3traj rollout'")
        with z:
            missing = [k for k in ("traj", "starts") if k not in z.files]
            if missing:
                raise InputError(
                    f"{where}: arrays {missing} missing (has {sorted(z.files)}); "
                    "pass a rollout .npz from 'e3traj rollout'"
                )
            out = {k: z[k] for k in z.files}
    except InputError:
        raise
    except Exception as exc:  # zipfile and numpy raise many kinds (BadZipFile, NotImplementedError, ...)
        raise InputError(
            f"{where}: could not read the rollout ({first_line(exc)}); pass a rollout .npz from 'e3traj rollout'"
        ) from None
    traj, starts = out["traj"], out["starts"]
    if traj.ndim != 4 or traj.shape[3] != 3 or traj.shape[2] < MIN_BEADS or traj.shape[0] < 1 or traj.dtype.kind != "f":
        raise InputError(f"{where}: traj has shape {traj.shape} ({traj.dtype}); expected float (T, B, N, 3)")
    if starts.shape != (traj.shape[1],) or starts.dtype.kind not in "iu":
        raise InputError(f"{where}: starts has shape {starts.shape} ({starts.dtype}); expected ({traj.shape[1]},) ints")
    return out


def _str_field(arrays, key: str, default: str = "") -> str:
    v = arrays.get(key)
    return str(v) if v is not None and v.shape == () else default


def _trajectory(
    ds, data_name: str, rollout_path: Path, start: int, out: Path, label: str | None = None, full_view: bool = False
) -> str:
    from ._plot import plot_trajectory

    r = load_rollout(rollout_path)
    traj, starts = r["traj"], r["starts"]
    if not 0 <= start < len(starts):
        raise UsageError(
            f"start: got {start}; {rollout_path} holds {len(starts)} starting frame(s), pass 0..{len(starts) - 1}"
        )
    s = int(starts[start])
    frames = ds.frames
    if not 0 <= s < len(frames):
        raise InputError(
            f"{rollout_path}: starts at frame {s}, but {data_name} has {len(frames)} frames; "
            "pass the trajectory the rollout was made from"
        )
    pred = traj[:, start]
    gap = float(np.max(np.abs(pred[0] - frames[s])))
    if not gap <= 1e-6 * max(1.0, float(np.max(np.abs(frames[s])))):
        raise InputError(
            f"{rollout_path}: its starting frame differs from frame {s} of {data_name} by up to {gap:.3g}; "
            "pass the trajectory the rollout was made from"
        )
    every = int(r["every"]) if "every" in r and r["every"].shape == () else 1  # a thinned rollout (--every)
    true = frames[s : s + every * (len(pred) - 1) + 1 : every]
    note = ""
    complete = r.get("complete")
    if complete is not None and complete.shape == () and not bool(complete):
        note = f"rollout stopped early: {len(pred) - 1} of {int(r.get('steps_requested', len(pred) - 1))} steps"
    if len(true) < len(pred):
        note = (note + "; " if note else "") + f"data ends after {len(true) - 1} steps"
    if label is None:
        sha = _str_field(r, "bundle_sha256")
        label = f"bundle {sha[:8]}" if sha else "model"
    plot_trajectory(true, pred, out, start=s, source=data_name, kind=label, note=note, full_view=full_view)
    return f"true frames {s}..{s + len(true) - 1} vs {len(pred) - 1} predicted steps"


def _parity(b, label: str, ds, data_name: str, out: Path) -> str:
    from ._data import split_pairs
    from ._plot import plot_parity
    from ._plot_data import r2_score
    from ._predictors import validation_windows

    if ds.segments:
        raise UsageError("plot: pass one trajectory as --data")
    split = split_pairs(ds.frames)
    x, past, y = validation_windows(split, b.history)
    with np.errstate(all="ignore"):
        pred = b.step(x, past) if b.history else b.step(x)
        pred_d, true_d = pred - x, y - x
    note = ""
    if np.all(ds.frames[..., 2] == 0.0):  # planar data: z is 0 and carries nothing
        z = np.abs(pred_d[..., 2])
        zmax = float(np.max(z)) if np.isfinite(z).all() else float("inf")
        if zmax > 0:
            note = f"z left out (data planar); max |predicted z| {zmax:.2g}"
        pred_d, true_d = pred_d[..., :2], true_d[..., :2]
    plot_parity(
        true_d,
        pred_d,
        out,
        title=f"Parity: {label} one-step displacements\n({data_name}, validation, {len(x)} pairs)",
        note=note,
    )
    ok = np.isfinite(pred_d)
    return f"R² = {r2_score(pred_d[ok], true_d[ok]):.4f} over {int(ok.sum())} coordinates of {len(x)} validation pairs"


def _rmsd(b, label: str, ds, data_name: str, n_starts: int, horizon: int, out: Path) -> str:
    from ._data import split_pairs
    from ._metrics import rollout_starts
    from ._plot import plot_rmsd
    from ._plot_data import rollout_rmsd_curves
    from ._predictors import predictor_suite

    if ds.segments:
        raise UsageError("plot: pass one trajectory as --data")
    split = split_pairs(ds.frames)
    n_val = len(split.frames) - 1 - split.val_start
    capped = min(horizon, n_val)
    suite = predictor_suite(split)
    h = max([b.history] + [p.history for p in suite.values()])
    starts = rollout_starts(split, capped, n_starts, history=h)
    curves = rollout_rmsd_curves({"model": b, **suite}, split.frames, starts, capped)
    cap = f", capped from {horizon} to fit the validation part" if capped < horizon else ""
    plot_rmsd(
        curves,
        out,
        title=f"Rollout RMSD: {label} vs trivial predictors\n({data_name}, {len(starts)} validation starts{cap})",
        labels={"model": f"model ({label})", "ar": f"AR({suite['ar'].order}), fitted"},
    )
    last = {k: float(np.nanmean(v[-1])) if np.isfinite(v[-1]).any() else float("nan") for k, v in curves.items()}
    names = {"ar": f"AR({suite['ar'].order})", "constant_velocity": "constant velocity"}
    names["constant_acceleration"] = "constant acceleration"
    return f"mean RMSD after {capped} steps from {len(starts)} starts: " + ", ".join(
        f"{names.get(k, k)} {v:.3g}" for k, v in last.items()
    )


def _equivariance(bundles, labels, trials: int, seed: int, tolerance: float, out: Path) -> str:
    from ._equivariance import check_bundle
    from ._plot_reports import plot_equivariance

    reports = [
        (lab, check_bundle(b, trials=trials, seed=seed, tolerance=tolerance).to_dict())
        for b, lab in zip(bundles, labels, strict=True)
    ]
    plot_equivariance(reports, out)
    parts = []
    for lab, rep in reports:
        failed = [c["case"] for c in rep["cases"] if not c["passed"]]
        parts.append(f"{lab}: {'PASS' if not failed else 'FAIL ' + ','.join(failed)}")
    return "; ".join(parts)


def _training(curves, manifests, out: Path) -> str:
    from ._plot_reports import plot_training

    sources = {str((m.get("training") or {}).get("data_source")) for m in manifests}
    data = f" (data: {sources.pop()})" if len(sources) == 1 and "None" not in sources else ""
    plot_training(curves, out, title=f"Training: validation MSE vs wall time{data}")
    return ", ".join(f"{c.label}: {len(c.time)} epochs" for c in curves)


def _fidelity(
    b, label: str, ds, data_name: str, steps: int, n_starts: int, seed: int, out: Path, *, simulated: bool
) -> str:
    from ._fidelity import fidelity_report
    from ._plot_fidelity import plot_fidelity

    rep = fidelity_report(b, ds, steps=steps, n_starts=n_starts, seed=seed, simulated=simulated, keep=True)
    plot_fidelity(
        rep["rows"],
        rep["_trajs"],
        rep["_reference"],
        out,
        title=f"Long rollouts: {label} vs the predictor suite ({data_name}, {steps} steps, "
        f"{len(rep['starts'])} starts; reference: {rep['reference']})",
    )
    return "stable to the end: " + ", ".join(f"{r['name']} {r['stable_fraction']:.0%}" for r in rep["rows"])
