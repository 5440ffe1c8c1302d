"""Scoring a model against the trivial predictors, as data and as text (numpy only; bundles need no torch)."""

from __future__ import annotations

from pathlib import Path

from ._data import split_pairs
from ._metrics import evaluate_predictor
from ._sources import DataSource

__all__ = ["is_bundle_path", "evaluate_bundle", "format_evaluation"]


def is_bundle_path(path: str | Path) -> bool:
    """A bundle is a directory or a packed ``.tar.gz``/``.tgz``; anything else is taken for a checkpoint."""
    p = Path(path)
    return p.is_dir() or p.name.endswith((".tar.gz", ".tgz"))


def evaluate_bundle(path: str | Path, data: DataSource, *, n_starts: int = 8, threads: int | None = None) -> dict:
    """One-step metrics and k-step rollout RMSD of a bundle on the validation part of ``data``."""
    from ._bundle import Bundle

    with Bundle.open(path, threads=threads) as bundle:
        report = evaluate_predictor(bundle.step, split_pairs(data.frames, 0.8), n_starts=n_starts)
        report["model"] = {"path": str(path), "kind": bundle.kind, "bundle_sha256": bundle.sha256}
    report["data"] = {"source": data.source, "sha256": data.sha256}
    return report


def format_evaluation(name: str, report: dict) -> str:
    """Human-readable table of :func:`e3traj.runtime._metrics.evaluate_predictor` output."""
    one = report["one_step"]
    lines = [
        f"{name}: {one['n_val_pairs']} validation pairs",
        "one-step validation MSE:",
        f"  model              {one['val_mse']:.4g}   (RMSE {one['val_rmse']:.4g})",
        f"  persistence        {one['persistence_mse']:.4g}",
        f"  constant velocity  {one['constant_velocity_mse']:.4g}",
        f"  skill vs persistence {one['skill']:+.4f}; vs constant velocity {one['skill_vs_constant_velocity']:+.4f}",
    ]
    roll = report["rollout_rmsd"]
    ks = list(next(iter(roll.values())).keys()) if roll else []
    if ks:
        lines.append(f"rollout RMSD from {len(report['rollout_starts'])} validation starts:")
        lines.append("  " + " " * 19 + "".join(f"{k:>12}" for k in ks))
        for label, key in (
            ("model", "model"),
            ("persistence", "persistence"),
            ("constant velocity", "constant_velocity"),
        ):
            lines.append(f"  {label:<19}" + "".join(f"{roll[key][k]:>12.4g}" for k in ks))
    return "\n".join(lines)
