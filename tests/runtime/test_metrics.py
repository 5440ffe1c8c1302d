"""Metrics (runtime/_metrics.py): trajectory statistics against known figures and the chapter's data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from e3traj.runtime._data import load_trajectory
from e3traj.runtime._metrics import trajectory_stats


def test_trajectory_stats_on_a_chain_in_uniform_motion():
    # a straight chain, bond 0.5, moving by (0.01, 0) every frame: every figure is known exactly
    t = np.arange(20.0)[:, None, None]
    beads = np.stack([0.5 * np.arange(12.0), np.zeros(12)], axis=-1)[None]
    frames = beads + t * np.array([0.01, 0.0])
    s = trajectory_stats(frames)
    assert s["frames"] == 20
    assert s["bond_mean"] == pytest.approx(0.5) and s["bond_std"] == pytest.approx(0.0, abs=1e-12)
    assert s["rms_disp"] == pytest.approx(0.01 / math.sqrt(2))  # per moving coordinate (x and y)
    assert s["rms_second_diff"] == pytest.approx(0.0, abs=1e-12)
    assert s["max_pair"] == pytest.approx(5.5)
    assert s["cos_bond_mean"] == pytest.approx(1.0)
    assert s["vacf1"] == pytest.approx(1.0)
    assert s["persistence_mse"] == pytest.approx(0.01**2 / 3)  # averaged over x, y and the lifted z
    assert s["const_velocity_mse"] == pytest.approx(0.0, abs=1e-20)
    # lifting to 3D by hand changes nothing
    lifted = np.concatenate([frames, np.zeros(frames.shape[:2] + (1,))], axis=-1)
    assert trajectory_stats(lifted) == s


def test_trajectory_stats_matches_the_chapter_figures():
    """The brief's figures for paths.npz, reproduced on a copy when the shared data is here."""
    from e3traj.runtime import dmol_path
    from e3traj.runtime._errors import InputError

    try:
        path = dmol_path(download=False)
    except InputError:
        pytest.skip("the chapter's paths.npz is not available here")
    s = trajectory_stats(load_trajectory(path))
    assert s["bond_mean"] == pytest.approx(0.363, abs=1e-3)
    assert s["rms_disp"] == pytest.approx(0.0060, abs=1e-4)
    assert s["persistence_mse"] == pytest.approx(2.43e-5, rel=0.01)
    assert s["const_velocity_mse"] == pytest.approx(1.65e-7, rel=0.01)


def test_trajectory_stats_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(2, 12, 2\)"):
        trajectory_stats(np.zeros((2, 12, 2)))
    with pytest.raises(ValueError, match=r"\(5, 2, 3\)"):
        trajectory_stats(np.zeros((5, 2, 3)))
