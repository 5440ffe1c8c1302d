"""The fidelity figure: stability against steps, and the distributions of bond length and radius of gyration of
the rollouts' stable parts against the reference's (matplotlib only when drawn)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ._fidelity import observables
from ._noise import internal_msd
from ._plot import _RC, _mpl, _new_figure, _save

__all__ = ["plot_fidelity"]

_STYLE = {
    "persistence": ("grey", "--"),
    "constant velocity": ("C1", ":"),
    "constant acceleration": ("C8", ":"),
}


def _style(name: str, j: int) -> tuple[str, str]:
    if name.startswith("AR("):
        return "k", "-."
    return _STYLE.get(name, (f"C{[0, 2, 3, 4, 5][j % 5]}", "-"))


def plot_fidelity(
    rows: Sequence[Mapping],
    trajs: Mapping[str, np.ndarray],
    reference: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str = "Long rollouts",
) -> Path:
    """Four panels: the share of starts still stable after k steps; bond-length and radius-of-gyration
    densities over every start's stable part, each predictor against the reference (filled); and internal
    motion (mean squared displacement relative to the centre of mass) against the lag, over the starts stable to
    the end, against the reference's (a frozen rollout sits far below it, a heated one above).

    Args:
        rows: ``FidelityRow.to_dict()`` per predictor (``name``, ``steps``, ``stable_steps``).
        trajs: name -> trajectory ``(steps + 1, S, N, 3)``.
        reference: reference frames ``(T, N, 3)``.
    """
    matplotlib, _ = _mpl()
    ref = observables(reference)
    with matplotlib.rc_context(_RC):
        fig, (ax_s, ax_b, ax_r, ax_m) = _new_figure((19, 4.6), ncols=4)
        for key, ax, label in (
            ("bond_length", ax_b, "bond length"),
            ("radius_of_gyration", ax_r, "radius of gyration"),
        ):
            v = ref[key][np.isfinite(ref[key])]
            lo, hi = np.quantile(v, [0.001, 0.999])
            span = hi - lo
            bins = np.linspace(max(0.0, lo - 0.5 * span), hi + 0.5 * span, 80)  # lengths: never below 0
            ref_density, _, _ = ax.hist(v, bins=bins, density=True, color="0.85", label="reference")
            for j, r in enumerate(rows):
                t, stable = trajs[r["name"]], r["stable_steps"]
                parts = [t[1 : s + 1, i] for i, s in enumerate(stable) if s > 0]
                if not parts:
                    continue
                o = observables(np.concatenate(parts))[key]
                color, ls = _style(r["name"], j)
                ax.hist(o[np.isfinite(o)], bins=bins, density=True, histtype="step", color=color, ls=ls, lw=1.6)
            ax.set_xlabel(label)
            ax.set_ylabel("density (stable parts)")
            # a frozen rollout is a spike: clip there so the reference's shape stays readable
            ax.set_ylim(0, 2.5 * float(np.max(ref_density)))
        for j, r in enumerate(rows):
            steps = int(r["steps"])
            k = np.arange(steps + 1)
            stable = np.asarray(r["stable_steps"])
            frac = (stable[None, :] >= k[:, None]).mean(axis=1)
            color, ls = _style(r["name"], j)
            ax_s.plot(k, frac, color=color, ls=ls, lw=1.8, label=r["name"])
        steps = max(int(r["steps"]) for r in rows)
        lags = np.unique(np.logspace(0, np.log10(max(1, min(steps, len(reference) - 1) // 2)), 14).astype(int))
        ax_m.loglog(
            lags, [internal_msd(reference[:, None], int(g)) for g in lags], color="0.6", lw=5, label="reference"
        )
        for j, r in enumerate(rows):
            fully = [i for i, s in enumerate(r["stable_steps"]) if s == int(r["steps"])]
            msd = [internal_msd(trajs[r["name"]][:, fully], int(g)) if fully else np.nan for g in lags]
            if fully and np.all(np.asarray(msd) > 0):  # a frozen rollout (persistence) has none to draw on log axes
                color, ls = _style(r["name"], j)
                ax_m.loglog(lags, msd, color=color, ls=ls, lw=1.6)
        ax_m.set_xlabel("lag (steps)")
        ax_m.set_ylabel("internal MSD (starts stable to the end)")
        ax_m.legend(loc="lower right", framealpha=0.85, fontsize=9)
        ax_s.set_ylim(-0.03, 1.03)
        ax_s.set_xlabel("steps k")
        ax_s.set_ylabel("share of starts still physical")
        ax_s.legend(loc="center right", framealpha=0.85, fontsize=9)
        ax_b.legend(loc="upper right", framealpha=0.85, fontsize=9)
        fig.suptitle(title)
        return _save(fig, path)
