"""The fidelity figure (runtime/_plot_fidelity.py): its four panels and what each one draws."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")


def test_the_motion_panel_draws_the_reference_and_every_moving_rollout_but_not_a_frozen_one(tmp_path, monkeypatch):
    from e3traj.runtime import _plot_fidelity

    rng = np.random.default_rng(0)
    reference = np.cumsum(rng.normal(scale=0.01, size=(400, 12, 3)), axis=0)
    moving = reference[:51, None].repeat(2, axis=1) + rng.normal(scale=0.01, size=(51, 2, 12, 3))
    frozen = np.repeat(reference[:1, None], 51, axis=0).repeat(2, axis=1)
    rows = [
        {"name": "model, sampled", "steps": 50, "stable_steps": [50, 50]},
        {"name": "persistence", "steps": 50, "stable_steps": [50, 50]},
    ]
    seen = {}

    def keep(fig, path):
        seen["fig"] = fig
        return path

    monkeypatch.setattr(_plot_fidelity, "_save", keep)
    _plot_fidelity.plot_fidelity(rows, {"model, sampled": moving, "persistence": frozen}, reference, tmp_path / "f.png")
    axes = seen["fig"].axes
    assert len(axes) == 4
    motion = axes[3]
    assert motion.get_xlabel() == "lag (steps)" and motion.get_xscale() == "log"
    assert len(motion.get_lines()) == 2  # the reference and the sampled model; the frozen one has nothing to draw
    assert [t.get_text() for t in motion.get_legend().get_texts()] == ["reference"]
