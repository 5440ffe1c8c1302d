"""The bundle contract (runtime/_contract.py): names, meanings and the next-frame rule, written once."""

from __future__ import annotations

import numpy as np
import pytest

from e3traj.runtime import contract as C


def test_meanings_and_names():
    assert C.INPUT_MEANINGS == ("positions", "previous_displacement")
    assert C.OUTPUT_MEANINGS == ("displacement", "next_positions", "velocity_correction")
    assert C.OUTPUT_NAME == "prediction" and C.N_BEADS == 12


def test_next_frame_per_meaning():
    rng = np.random.default_rng(0)
    x, y, prev = (rng.normal(size=(4, 12, 3)) for _ in range(3))
    np.testing.assert_array_equal(C.next_frame(C.DISPLACEMENT, x, y), x + y)
    np.testing.assert_array_equal(C.next_frame(C.NEXT_POSITIONS, x, y), y)
    np.testing.assert_array_equal(C.next_frame(C.VELOCITY_CORRECTION, x, y, prev), x + (x - prev) + y)
    # with no correction the velocity rule is constant-velocity extrapolation
    np.testing.assert_allclose(C.next_frame(C.VELOCITY_CORRECTION, x, 0.0, prev), 2 * x - prev, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="needs the previous frame"):
        C.next_frame(C.VELOCITY_CORRECTION, x, y)
    with pytest.raises(ValueError, match="'jump'"):
        C.next_frame("jump", x, y)


def test_needs_previous():
    assert C.needs_previous(C.VELOCITY_CORRECTION)
    assert C.needs_previous(C.DISPLACEMENT, [C.POSITIONS, C.PREVIOUS_DISPLACEMENT])
    assert not C.needs_previous(C.DISPLACEMENT, [C.POSITIONS])
    assert not C.needs_previous(C.NEXT_POSITIONS)
