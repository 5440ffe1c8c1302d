"""The bundle contract (runtime/_contract.py): names, meanings and the next-frame rule, written once."""

from __future__ import annotations

import numpy as np
import pytest

from e3traj.runtime import contract as C


def test_meanings_and_names():
    assert C.INPUT_MEANINGS == ("positions", "previous_displacement", "previous_displacements")
    assert C.OUTPUT_MEANINGS == ("displacement", "next_positions", "velocity_correction", "ar_correction")
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


def test_ar_rule_is_the_linear_extrapolation_over_the_window():
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(4, 5, 12, 3))  # (B, x_{t-4} .. x_t)
    x, past = frames[:, -1], frames[:, :-1]
    b = (2.4, -2.0, 0.85, -0.2)
    got = C.next_frame(C.AR_CORRECTION, x, 0.0, past, b)
    # the same as sum_i c_i x_{t-i} with c_0 = 1 + b_1, c_i = b_{i+1} - b_i, c_4 = -b_4 (sum c = 1)
    c = [1 + b[0], b[1] - b[0], b[2] - b[1], b[3] - b[2], -b[3]]
    want = sum(ci * frames[:, 4 - i] for i, ci in enumerate(c))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert abs(sum(c) - 1) < 1e-12
    # constant velocity is the AR rule with b = (1,)
    np.testing.assert_array_equal(C.ar_extrapolate(x, past, (1.0,)), x + 1.0 * (x - past[:, -1]))
    with pytest.raises(ValueError, match="coefficients"):
        C.next_frame(C.AR_CORRECTION, x, 0.0, past)


def test_history_length_and_past_shapes():
    assert C.history_length(C.DISPLACEMENT, (C.POSITIONS,)) == 0
    assert C.history_length(C.VELOCITY_CORRECTION, (C.POSITIONS, C.PREVIOUS_DISPLACEMENT)) == 1
    assert C.history_length(C.AR_CORRECTION, (C.POSITIONS, C.PREVIOUS_DISPLACEMENTS), (1, 2, 3), 3) == 3
    x = np.zeros((2, 12, 3))
    assert C.as_past(np.ones((2, 12, 3)), 1, x.shape).shape == (2, 1, 12, 3)
    assert C.as_past(np.ones((2, 6, 12, 3)), 4, x.shape).shape == (2, 4, 12, 3)
    with pytest.raises(ValueError, match=r"\(2, 3, 12, 3\)"):
        C.as_past(np.ones((2, 3, 12, 3)), 4, x.shape)
    with pytest.raises(ValueError, match="needs the 2 frame"):
        C.as_past(None, 2, x.shape)
