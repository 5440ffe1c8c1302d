"""The network's constant structure (train/_plan.py): Clebsch-Gordan patterns and product classes."""

from __future__ import annotations

from e3traj.train._plan import _path_classes, _path_pattern

# ---------------------------------------------------------------------------------------------------------------


def test_path_patterns_and_product_classes():
    """Which (m, a) terms of Q the sparse products multiply, and when a group is split into two products."""
    assert _path_pattern(1, 0, 1) == [[0], [1], [2]]  # diagonal
    assert _path_pattern(1, 1, 0) == [[0], [0], [0]]  # dot product
    assert _path_pattern(1, 1, 1) == [[1, 2], [0, 2], [0, 1]]  # cross product: never m == a
    assert _path_pattern(1, 2, 1) == [[0, 1, 2]] * 3
    combos = ((0, 1), (1, 0), (1, 1), (2, 1))
    # 10 channels: 4 x 3 x 3 = 36 terms per channel padded, (1 + 1 + 2 + 3) x 3 = 21 split
    assert _path_classes(1, combos, 10) == [(((0, 1), (1, 0)), 1), (((1, 1),), 2), (((2, 1),), 3)]
    # one channel saves 12 multiplications per edge: not worth three more nodes
    assert _path_classes(1, combos, 1) == [(combos, 3)]
    assert _path_classes(1, ((1, 1),), 10) == [(((1, 1),), 2)]
