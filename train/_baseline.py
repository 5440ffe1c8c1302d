"""The chapter's linear baseline: next positions = pos @ W + b (W 3x3, b one scalar). Not equivariant."""

from __future__ import annotations

import torch

__all__ = ["LinearBaseline"]


class LinearBaseline(torch.nn.Module):
    """``pos @ W + b`` predicting the next frame, as in the dmol-book chapter.

    It is neither rotation- nor translation-equivariant (b is added to every coordinate), which is why
    its equivariance check is expected to fail: it is the negative control of every checker.

    Shapes: ``(B, 12, 3)`` -> ``(B, 12, 3)`` next positions.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        # the chapter draws W from a standard normal and starts b at zero
        self.w = torch.nn.Parameter(torch.randn(3, 3, generator=g))
        self.b = torch.nn.Parameter(torch.zeros(()))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return pos @ self.w + self.b
