"""The report figures (runtime/_plot_reports.py): equivariance errors per case and training curves."""

from __future__ import annotations

import numpy as np
import pytest
from _plots import assert_svg

pytest.importorskip("matplotlib")

from e3traj.runtime._plot_data import TrainingCurve  # noqa: E402
from e3traj.runtime._plot_reports import plot_equivariance, plot_training  # noqa: E402


def test_training_and_equivariance_plots_draw_the_edge_cases(tmp_path):
    # (that these figures change with the data is checked through the CLI in test_figures.py)
    t = tmp_path / "t.svg"
    curve = TrainingCurve("e3nn", np.arange(1.0, 6.0), np.array([1e-3, 5e-4, 2e-4, np.nan, 1e-4]), 2e-3, 3e-5)
    other = TrainingCurve("baseline", np.arange(1.0, 4.0), np.array([3e-3, 2e-3, 1e-3]), 1e-3, 3e-5)
    plot_training([curve, other], t)
    text = t.read_text()
    assert assert_svg(t) and "e3nn (best 0.0001)" in text and "baseline (best 0.001)" in text
    # different persistence MSE per model: one line each; the shared constant-velocity MSE: one grey line
    assert "persistence (e3nn) 0.002" in text and "persistence (baseline) 0.001" in text
    assert "constant velocity MSE 3e-05" in text

    def report(rel: float, passed: bool) -> dict:
        cases = [
            {"case": c, "max_abs_error": rel, "max_rel_error": rel, "passed": passed, "trials": 3, "threshold": 1e-4}
            for c in ("rotation", "translation")
        ]
        cases.append({"case": "planar", "max_abs_error": 0.0, "max_rel_error": 0.0, "passed": True})
        return {"passed": passed, "tolerance": 1e-4, "trials": 3, "seed": 0, "cases": cases}

    e = tmp_path / "e.svg"
    plot_equivariance([("e3nn", report(1e-7, True)), ("baseline", report(float("inf"), False))], e)
    text = e.read_text()
    assert assert_svg(e) and "FAIL" in text and "inf" in text and "tolerance 0.0001" in text
    assert "<!-- 0 -->" in text  # the exact-zero planar errors are labelled "0"
