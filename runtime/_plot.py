"""The chapter's figures, drawn with matplotlib (the ``plot`` extra) from plain arrays and dicts.

Trajectory, parity and rollout RMSD are drawn here; equivariance and training in
:mod:`e3traj.runtime._plot_reports`; what they show is computed in :mod:`e3traj.runtime._plot_data`.

Every function takes numpy arrays (or the dicts the rest of the runtime produces) and writes one figure,
atomically, as PNG (150 dpi) or SVG chosen by the output's suffix. matplotlib is imported only when a figure is
drawn, through its object API (``Figure``; pyplot and the global backend are never touched), so importing this
module costs nothing on a host without the extra.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._errors import MissingExtra, UsageError
from ._io import atomic_output
from ._plot_data import _frames, r2_score

__all__ = [
    "DPI",
    "FIGURE_FORMATS",
    "figure_format",
    "plot_trajectory",
    "plot_parity",
    "plot_rmsd",
]

#: Resolution of PNG output.
DPI = 150

#: Output suffix -> matplotlib format.
FIGURE_FORMATS = {".png": "png", ".svg": "svg"}

_RC = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "figure.titlesize": 13,
    "svg.hashsalt": "e3traj",  # stable element ids: the same data gives the same SVG
}


def _mpl():
    """Import matplotlib (the plot extra) or raise a one-line MissingExtra with the install hint."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ModuleNotFoundError as exc:
        raise MissingExtra(
            f"plotting needs the plot extra ({exc.name or 'matplotlib'} not installed): pip install 'e3traj[plot]'"
        ) from None
    return matplotlib, Figure


def figure_format(path: str | os.PathLike) -> str:
    """The figure format named by the output's suffix (``png`` or ``svg``).

    Raises:
        UsageError: any other suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise UsageError(
            f"{path}: figure format {suffix or '(no suffix)'!r} is not supported; name the output .png or .svg"
        )
    return FIGURE_FORMATS[suffix]


def _new_figure(figsize: tuple[float, float], ncols: int = 1, **kw):
    _, Figure = _mpl()
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, ncols, **kw)
    return fig, axes


def _save(fig, path: str | os.PathLike) -> Path:
    fmt = figure_format(path)
    out = Path(path)
    metadata = {"Date": None} if fmt == "svg" else None
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI, metadata=metadata)
    return out


# --------------------------------------------------------------------------------------------- trajectory


def _draw_polymers(ax, frames: np.ndarray, t: np.ndarray, cmap, norm) -> None:
    from matplotlib.collections import LineCollection

    xy = frames[..., :2]
    segs = np.stack([xy[:, :-1], xy[:, 1:]], axis=2).reshape(-1, 2, 2)  # (n * 11, 2, 2)
    lines = LineCollection(segs, cmap=cmap, norm=norm, linewidths=0.9, alpha=0.6)
    lines.set_array(np.repeat(t, xy.shape[1] - 1))
    ax.add_collection(lines)
    ax.scatter(
        xy[..., 0].ravel(), xy[..., 1].ravel(), c=np.repeat(t, xy.shape[1]), cmap=cmap, norm=norm, s=7, linewidths=0
    )
    # the starting frame on top, outlined, so where the chain began stays visible under later frames
    ax.plot(xy[0, :, 0], xy[0, :, 1], "-o", color="black", lw=1.4, ms=3.5, mfc="white", label="starting frame")


def plot_trajectory(
    true_frames: np.ndarray,
    pred_frames: np.ndarray,
    path: str | os.PathLike,
    *,
    start: int | None = None,
    source: str = "",
    kind: str = "",
    note: str = "",
    max_frames: int = 500,
    full_view: bool = False,
) -> Path:
    """The chapter's "Trajectory" / "Predicted Trajectory" pair: each frame drawn as the polymer (beads and bonds,
    x-y projection), coloured by time, same axes limits and colour scale in both panels.

    Args:
        true_frames: the true frames from the starting frame on. Shapes: ``(T1, N, 3)``.
        pred_frames: the rollout from the same starting frame (frame 0 is the start). Shapes: ``(T2, N, 3)``.
        path: output ``.png`` or ``.svg``.
        start: index of the starting frame in the data (for the titles).
        source: where the true frames come from (for the titles).
        kind: the model kind (for the titles).
        note: an extra line under the predicted panel's title (e.g. an incomplete rollout).
        max_frames: draw at most about this many frames per panel (every k-th frame beyond it).
        full_view: make the shared limits hold every predicted frame. By default they stop 1.5 true extents
            beyond the true frames, so a rollout that drifts far away does not shrink the true trajectory to a
            dot; the predicted panel's title then says how far the prediction went.
    """
    matplotlib, _ = _mpl()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    true_frames = _frames(true_frames, "true_frames")
    pred_frames = _frames(pred_frames, "pred_frames")
    if max_frames < 2:
        raise UsageError(f"max_frames: got {max_frames!r}; pass 2 or more")
    longest = max(len(true_frames), len(pred_frames))
    stride = max(1, math.ceil(longest / max_frames))

    def pick(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.arange(0, len(frames), stride)
        if idx[-1] != len(frames) - 1:
            idx = np.append(idx, len(frames) - 1)
        keep = np.isfinite(frames[idx]).all(axis=(1, 2))
        return frames[idx[keep]], idx[keep].astype(np.float64)

    shown = [pick(true_frames), pick(pred_frames)]
    pts = np.concatenate([f[..., :2].reshape(-1, 2) for f, _ in shown if len(f)])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    true_xy = shown[0][0][..., :2].reshape(-1, 2)
    t_lo, t_hi = true_xy.min(axis=0), true_xy.max(axis=0)
    reach = 1.5 * max(float(np.max(t_hi - t_lo)), 1e-9)
    if not full_view and (np.any(lo < t_lo - reach) or np.any(hi > t_hi + reach)):
        lo, hi = np.maximum(lo, t_lo - reach), np.minimum(hi, t_hi + reach)
        centre = 0.5 * (t_lo + t_hi)
        far = float(np.max(np.linalg.norm(pts - centre, axis=1)))
        note = (note + "\n" if note else "") + f"prediction leaves the view (up to {far:.3g} from the true centre)"
    pad = 0.06 * max(float(np.max(hi - lo)), 1e-9)
    span = f"{len(true_frames)} frames" if start is None else f"frames {start}..{start + len(true_frames) - 1}"
    origin = "" if start is None else f" from frame {start}"
    with matplotlib.rc_context(_RC):
        fig, axes = _new_figure((10.5, 5.0), ncols=2, sharex=True, sharey=True)
        cmap = matplotlib.colormaps["viridis"]
        norm = Normalize(vmin=0, vmax=max(longest - 1, 1))
        titles = [
            f"Trajectory\n{source or 'data'}, {span}",
            f"Predicted Trajectory\n{kind or 'model'}, {len(pred_frames) - 1} steps{origin}",
        ]
        if note:
            titles[1] += f"\n{note}"
        for ax, (frames, t), title in zip(axes, shown, titles, strict=True):
            if len(frames):
                _draw_polymers(ax, frames, t, cmap, norm)
            ax.set_title(title)
            ax.set_xlabel("x")
            ax.set_xlim(lo[0] - pad, hi[0] + pad)
            ax.set_ylim(lo[1] - pad, hi[1] + pad)
            ax.set_aspect("equal", adjustable="box")
        axes[0].set_ylabel("y")
        axes[0].legend(loc="best", framealpha=0.8)
        mappable = ScalarMappable(norm=norm, cmap=cmap)
        label = "steps after the starting frame" + (f" (every {stride}th frame drawn)" if stride > 1 else "")
        fig.colorbar(mappable, ax=list(axes), label=label, shrink=0.85)
        return _save(fig, path)


# --------------------------------------------------------------------------------------------- parity


def plot_parity(
    true_disp: np.ndarray,
    pred_disp: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str = "Parity: one-step displacements",
    note: str = "",
) -> Path:
    """Predicted vs true displacements (every coordinate one point), the diagonal, and R² in the legend.

    Args:
        true_disp: ``y - x``. Shapes: any, e.g. ``(B, 12, 2)``.
        pred_disp: ``step(x) - x``. Shapes: as ``true_disp``.
        note: an extra legend line (e.g. what was left out).

    Returns the output path; R² is computed over the finite predictions (see :func:`r2_score`).
    """
    matplotlib, _ = _mpl()
    t = np.asarray(true_disp, dtype=np.float64).ravel()
    p = np.asarray(pred_disp, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise UsageError(f"pred_disp has {p.size} values, true_disp has {t.size}; pass arrays of the same shape")
    ok = np.isfinite(p) & np.isfinite(t)
    r2 = r2_score(p[ok], t[ok]) if ok.any() else float("nan")
    with matplotlib.rc_context(_RC):
        fig, ax = _new_figure((6.2, 6.0))
        if ok.any():
            ax.scatter(t[ok], p[ok], s=5, alpha=0.35, linewidths=0, color="C0", rasterized=len(t) > 20000)
            both = np.concatenate([t[ok], p[ok]])
            lo, hi = float(both.min()), float(both.max())
        else:
            lo, hi = (float(t.min()), float(t.max())) if t.size else (-1.0, 1.0)
        pad = 0.04 * max(hi - lo, 1e-12)
        lo, hi = lo - pad, hi + pad
        ax.plot([lo, hi], [lo, hi], "k--", lw=1.0, label="y = x")
        ax.plot([], [], " ", label=f"R² = {r2:.4f} ({int(ok.sum())} values)")
        if (~ok).any():
            ax.plot([], [], " ", label=f"{int((~ok).sum())} non-finite predictions left out")
        if note:
            ax.plot([], [], " ", label=note)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel("true displacement")
        ax.set_ylabel("predicted displacement")
        ax.set_title(title)
        ax.legend(loc="upper left", framealpha=0.85)
        return _save(fig, path)


# --------------------------------------------------------------------------------------------- rollout RMSD


_RMSD_STYLE = {
    "persistence": ("grey", "persistence (copy the frame)"),
    "constant_velocity": ("C1", "constant velocity"),
    "constant_acceleration": ("C8", "constant acceleration"),
    "ar": ("k", "fitted AR(k)"),
}


def plot_rmsd(
    curves: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    title: str = "Rollout RMSD",
    band: str = "minmax",
    labels: Mapping[str, str] | None = None,
) -> Path:
    """RMSD vs number of steps (log-log), the mean over starting frames and a band (min..max or mean ± std).

    Args:
        curves: name -> RMSD after k = 1..K steps per start. Shapes: each ``(K, S)``. ``persistence`` and
            ``constant_velocity`` get fixed colours; other names (the model) come first in the palette.
        band: ``minmax`` or ``std``.
        labels: legend text per name (default: the name).
    """
    matplotlib, _ = _mpl()
    if band not in ("minmax", "std"):
        raise UsageError(f"band: got {band!r}; pass 'minmax' or 'std'")
    if not curves:
        raise UsageError("curves: empty; pass at least one predictor's RMSD")
    labels = dict(labels or {})
    with matplotlib.rc_context(_RC):
        fig, ax = _new_figure((7.5, 5.2))
        palette = iter(["C0", "C2", "C3", "C4", "C5", "C6"])
        for name, arr in curves.items():
            a = np.asarray(arr, dtype=np.float64)
            if a.ndim == 1:
                a = a[:, None]
            if a.ndim != 2 or not a.size:
                raise UsageError(f"curves[{name!r}]: shape {a.shape}; expected (K, S)")
            a = np.where(np.isfinite(a) & (a > 0), a, np.nan)
            k = np.arange(1, len(a) + 1)
            color, default = _RMSD_STYLE.get(name, (None, name))
            color = color or next(palette, None)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps of a diverged predictor
                mean = np.nanmean(a, axis=1)
                if band == "minmax":
                    low, high = np.nanmin(a, axis=1), np.nanmax(a, axis=1)
                else:
                    sd = np.nanstd(a, axis=1)
                    low, high = mean - sd, mean + sd
            lw = 2.2 if name not in _RMSD_STYLE else 1.6
            ax.plot(
                k, mean, "-", color=color, lw=lw, marker="o" if len(k) == 1 else None, label=labels.get(name, default)
            )
            if a.shape[1] > 1:
                ax.fill_between(k, np.where(low > 0, low, np.nan), high, color=color, alpha=0.18, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("steps k")
        ax.set_ylabel("RMSD to the true frame")
        n = next(iter(curves.values()))
        n_starts = np.asarray(n).shape[1] if np.asarray(n).ndim == 2 else 1
        ax.set_title(title)
        shade = "min..max" if band == "minmax" else "mean ± std"
        ax.plot([], [], " ", label=f"lines: mean of {n_starts} starts; bands: {shade}")
        ax.legend(loc="best", framealpha=0.85)
        ax.grid(True, which="major", alpha=0.3)
        return _save(fig, path)


# --------------------------------------------------------------------------------------------- equivariance


# --------------------------------------------------------------------------------------------- training
