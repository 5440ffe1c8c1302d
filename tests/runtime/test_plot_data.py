"""What the figures show, computed without matplotlib (runtime/_plot_data.py): R², RMSD curves, training curves."""

from __future__ import annotations

import numpy as np
import pytest
from _plots import history, training_section

pytest.importorskip("matplotlib")

from e3traj.runtime._errors import InputError, UsageError  # noqa: E402
from e3traj.runtime._metrics import constant_velocity_step, persistence_step, rmsd  # noqa: E402
from e3traj.runtime._plot_data import r2_score, rollout_rmsd_curves, training_curve  # noqa: E402


def test_r2_score():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    assert r2_score(t, t) == 1.0
    assert r2_score(np.full(4, t.mean()), t) == pytest.approx(0.0)
    assert r2_score(t[::-1], t) == pytest.approx(1 - np.sum((t[::-1] - t) ** 2) / np.sum((t - t.mean()) ** 2))
    assert np.isnan(r2_score(t, np.ones(4)))
    with pytest.raises(UsageError):
        r2_score(t, t[:3])


def test_rollout_rmsd_curves_match_a_direct_computation(frames):
    starts = np.array([10, 20, 30])
    curves = rollout_rmsd_curves(
        {"persistence": persistence_step, "constant_velocity": constant_velocity_step}, frames, starts, 5
    )
    assert curves["persistence"].shape == (5, 3)
    for k in range(1, 6):
        np.testing.assert_allclose(curves["persistence"][k - 1], rmsd(frames[starts], frames[starts + k]))
    cv1 = 2 * frames[starts] - frames[starts - 1]
    np.testing.assert_allclose(curves["constant_velocity"][0], rmsd(cv1, frames[starts + 1]))

    calls = []

    def explode(x, prev):  # one good step, then NaN
        calls.append(1)
        return x + 0.01 if len(calls) == 1 else np.full_like(x, np.nan)

    bad = rollout_rmsd_curves({"model": explode}, frames, starts, 5)["model"]
    assert np.isfinite(bad[0]).all() and np.isnan(bad[-1]).all()  # NaN once the rollout diverged
    with pytest.raises(UsageError, match="start"):
        rollout_rmsd_curves({"p": persistence_step}, frames, np.array([0]), 5)
    with pytest.raises(UsageError, match="start"):
        rollout_rmsd_curves({"p": persistence_step}, frames, np.array([38]), 5)


def test_training_curve_reads_the_manifest():
    m = training_section(history(4))
    c = training_curve(m, "e3nn", "b/manifest.json")
    np.testing.assert_allclose(c.time, [1.5, 3.0, 4.5, 6.0])
    np.testing.assert_allclose(c.val_mse, [1e-3 / i for i in range(1, 5)])
    assert c.persistence_mse == 2e-3 and c.constant_velocity_mse == 3e-5
    with pytest.raises(InputError, match=r"b/manifest.json: training.history is empty"):
        training_curve(training_section([]), "x", "b/manifest.json")
    with pytest.raises(InputError, match="training.history is missing"):
        training_curve(training_section(None), "x", "b/manifest.json")
    with pytest.raises(InputError, match=r"training.history\[1\]"):
        training_curve(training_section([history(1)[0], {"epoch": 2, "time": "soon"}]), "x", "b/manifest.json")
