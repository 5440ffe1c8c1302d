"""The report figures, drawn with matplotlib: equivariance errors per case, and training curves.

The shared drawing helpers (matplotlib import, style, atomic save) are :mod:`e3traj.runtime._plot`'s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ._errors import UsageError
from ._plot import _RC, _mpl, _new_figure, _save
from ._plot_data import TrainingCurve

__all__ = ["plot_equivariance", "plot_training"]


#: Lowest floor of the equivariance axis (errors of exactly 0 are drawn on the floor, labelled "0").
_ERROR_FLOOR = 1e-17


def plot_equivariance(
    reports: Sequence[tuple[str, Mapping]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Grouped bars of the max relative error per case for each bundle, log scale, with the tolerance line.

    Args:
        reports: ``(label, EquivarianceReport.to_dict())`` per bundle. The axis starts two decades below the
            smallest non-zero error (errors of exactly 0 are labelled "0" on it); infinite or NaN errors are bars
            to the top of the axis marked "inf"; failed cases are hatched.
        title: default "Equivariance: max relative error per case (N trials)".
    """
    matplotlib, _ = _mpl()
    if not reports:
        raise UsageError("reports: empty; pass at least one (label, report dict)")
    cases: list[str] = []
    for _, rep in reports:
        for c in rep.get("cases", []):
            if c["case"] not in cases:
                cases.append(c["case"])
    finite = [
        float(c["max_rel_error"])
        for _, rep in reports
        for c in rep.get("cases", [])
        if np.isfinite(c["max_rel_error"]) and c["max_rel_error"] > 0
    ]
    tolerances = sorted({float(rep["tolerance"]) for _, rep in reports if "tolerance" in rep})
    top = max(finite + tolerances + [1.0]) * 30.0
    # the axis starts two decades below the smallest error; exact zeros sit on that floor, labelled "0"
    floor = max(10.0 ** (math.floor(math.log10(min(finite + tolerances + [1.0]))) - 2), _ERROR_FLOOR)
    n = len(reports)
    width = 0.8 / n
    x = np.arange(len(cases))
    with matplotlib.rc_context(_RC):
        from matplotlib.patches import Patch

        fig, ax = _new_figure((max(8.0, 1.1 * len(cases) + 3.0), 5.2))
        any_failed = False
        for j, (label, rep) in enumerate(reports):
            by_case = {c["case"]: c for c in rep.get("cases", [])}
            heights, hatches, marks = [], [], []
            for name in cases:
                c = by_case.get(name)
                v = float("nan") if c is None else float(c["max_rel_error"])
                mark = ""
                if c is None:
                    heights.append(0.0)
                    mark = "n/a"
                elif not np.isfinite(v):
                    heights.append(top - floor)
                    mark = "inf"
                elif v <= floor:
                    heights.append(0.0)
                    mark = "0" if v == 0 else ""
                else:
                    heights.append(v - floor)
                failed = c is not None and not c.get("passed", True)
                any_failed |= failed
                hatches.append("//" if failed else "")
                marks.append(mark)
            pos = x - 0.4 + width * (j + 0.5)
            bars = ax.bar(pos, heights, width, bottom=floor, color=f"C{j}", label=label, edgecolor="black", lw=0.6)
            for bar, hatch, mark in zip(bars, hatches, marks, strict=True):
                bar.set_hatch(hatch)
                if mark:
                    y = top / 3 if mark == "inf" else floor * 1.5
                    va = "top" if mark == "inf" else "bottom"
                    ax.text(bar.get_x() + bar.get_width() / 2, y, mark, ha="center", va=va, fontsize=10)
        for tol in tolerances:
            ax.axhline(tol, color="red", ls="--", lw=1.2, label=f"tolerance {tol:g}")
        handles, _labels = ax.get_legend_handles_labels()
        if any_failed:
            handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="FAIL"))
        ax.set_yscale("log")
        ax.set_ylim(floor, top)
        ax.set_xticks(x, cases)
        ax.set_ylabel("max relative error")
        trials = sorted({int(rep.get("trials", 0)) for _, rep in reports})
        ax.set_title(
            title
            or f"Equivariance: max relative error per case ({'/'.join(map(str, trials))} trial(s); example: vs export)"
        )
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        ax.grid(True, axis="y", which="major", alpha=0.3)
        return _save(fig, path)


def plot_training(
    curves: Sequence[TrainingCurve], path: str | os.PathLike, *, title: str = "Training: validation MSE"
) -> Path:
    """Validation MSE (log scale) against wall time, one line per model, with the persistence, constant-velocity
    and fitted AR(k) MSE as horizontal lines (one grey line each when every curve shares the same values).
    """
    matplotlib, _ = _mpl()
    if not curves:
        raise UsageError("curves: empty; pass at least one TrainingCurve")
    with matplotlib.rc_context(_RC):
        fig, ax = _new_figure((7.5, 5.2))
        for j, c in enumerate(curves):
            t = np.asarray(c.time, dtype=np.float64)
            v = np.asarray(c.val_mse, dtype=np.float64)
            if t.shape != v.shape or t.ndim != 1:
                raise UsageError(f"{c.label}: time {t.shape} and val_mse {v.shape} need the same (E,) shape")
            v = np.where(np.isfinite(v) & (v > 0), v, np.nan)
            best = np.nanmin(v) if np.isfinite(v).any() else float("nan")
            ax.plot(t, v, "-o", color=f"C{j}", ms=3.5, lw=1.6, label=f"{c.label} (best {best:.3g})")
        for attr, style, name in (
            ("persistence_mse", "--", "persistence"),
            ("constant_velocity_mse", ":", "constant velocity"),
            ("ar_mse", "-.", "fitted AR" + (f"({curves[0].ar_order})" if curves[0].ar_order else "(k)")),
        ):
            values = [(j, getattr(c, attr)) for j, c in enumerate(curves) if getattr(c, attr) is not None]
            values = [(j, v) for j, v in values if np.isfinite(v) and v > 0]
            if not values:
                continue
            distinct = {round(v, 12) for _, v in values}
            if len(distinct) == 1:
                v = values[0][1]
                ax.axhline(v, color="grey", ls=style, lw=1.4, label=f"{name} MSE {v:.3g}")
            else:
                for j, v in values:
                    ax.axhline(v, color=f"C{j}", ls=style, lw=1.2, label=f"{name} ({curves[j].label}) {v:.3g}")
        ax.set_yscale("log")
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("validation MSE (one step)")
        ax.set_title(title)
        ax.legend(loc="best", framealpha=0.85)
        ax.grid(True, which="major", alpha=0.3)
        return _save(fig, path)
