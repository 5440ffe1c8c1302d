"""Scoring a model against the trivial predictors, as data and as text (numpy only; bundles need no torch)."""

from __future__ import annotations

from pathlib import Path

from ._data import check_beads
from ._metrics import SUITE_LABELS, evaluate_predictor
from ._sources import DataSource

__all__ = ["is_bundle_path", "evaluate_bundle", "format_evaluation", "format_one_step"]


def is_bundle_path(path: str | Path) -> bool:
    """A bundle is a directory or a packed ``.tar.gz``/``.tgz``; anything else is taken for a checkpoint."""
    p = Path(path)
    return p.is_dir() or p.name.endswith((".tar.gz", ".tgz"))


def evaluate_bundle(path: str | Path, data: DataSource, *, n_starts: int = 8, threads: int | None = None) -> dict:
    """One-step metrics and k-step rollout RMSD of a bundle on the validation part of ``data``."""
    from ._bundle import Bundle

    with Bundle.open(path, threads=threads) as bundle:
        check_beads(data.frames.shape[1], data.path or data.source, bundle.n_beads)
        report = evaluate_predictor(bundle, data.split(0.8), n_starts=n_starts)
        report["model"] = {"path": str(path), "kind": bundle.kind, "bundle_sha256": bundle.sha256}
    report["data"] = {"source": data.source, "sha256": data.sha256}
    return report


def _label(name: str, one: dict) -> str:
    if name == "ar" and "ar_order" in one:
        return f"AR({one['ar_order']}), fitted"
    return SUITE_LABELS.get(name, name)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")  # a best RMSD of 0 (frames that never move) has no ratio


def format_one_step(one: dict) -> str:
    """One line: the model's validation MSE, the suite's, and the ratio to the best of the suite."""
    suite = [n for n in SUITE_LABELS if f"{n}_mse" in one]
    parts = "; ".join(f"{_label(n, one)} {one[f'{n}_mse']:.4g}" for n in suite)
    best = one.get("best_baseline")
    tail = f"; model / best ({_label(best, one)}) = {one['ratio_to_best']:.3f}" if best else ""
    return f"validation MSE {one['val_mse']:.4g} (RMSE {one['val_rmse']:.4g}); {parts}{tail}"


def format_evaluation(name: str, report: dict) -> str:
    """Human-readable table of :func:`e3traj.runtime._metrics.evaluate_predictor` output: the model beside every
    member of the predictor suite, the best of them named."""
    one = report["one_step"]
    suite = [n for n in SUITE_LABELS if f"{n}_mse" in one]
    best = one.get("best_baseline")
    lines = [f"{name}: {one['n_val_pairs']} validation pairs", "one-step validation MSE:"]
    lines.append(f"  {'model':<24} {one['val_mse']:.4g}   (RMSE {one['val_rmse']:.4g})")
    for n in suite:
        mark = "   <- best trivial predictor" if n == best else ""
        lines.append(f"  {_label(n, one):<24} {one[f'{n}_mse']:.4g}{mark}")
    if best:
        lines.append(
            f"  model / best ({_label(best, one)}) = {one['ratio_to_best']:.3f}; "
            f"skill vs persistence {one['skill']:+.4f}"
        )
    roll = report["rollout_rmsd"]
    ks = list(roll.get("model", {}).keys()) if roll else []
    if ks:
        lines.append(f"rollout RMSD from {len(report['rollout_starts'])} validation starts:")
        lines.append("  " + " " * 24 + "".join(f"{k:>12}" for k in ks))
        for key in ["model"] + [n for n in suite if n in roll]:
            label = "model" if key == "model" else _label(key, one)
            lines.append(f"  {label:<24}" + "".join(f"{roll[key][k]:>12.4g}" for k in ks))
        best_k = report.get("rollout_best", {})
        if best_k:
            lines.append(
                "  model / best:"
                + " " * 11
                + "".join(
                    f"{_ratio(roll['model'][k], roll[best_k[k]][k]) if k in best_k else float('nan'):>12.3f}"
                    for k in ks
                )
            )
    return "\n".join(lines)
