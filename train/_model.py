"""The one-frame model: the fixed-graph network's displacement, scaled to data units."""

from __future__ import annotations

import math

import torch

from ._config import E3nnConfig, o3
from ._network import FixedGraphNetwork

__all__ = ["DisplacementModel"]


class DisplacementModel(torch.nn.Module):
    """Next-frame displacement in data units: ``net(pos[, previous_displacement / scale]) * scale``.

    ``config.irreps_out`` must be ``1x1o``; with ``config.irreps_in == "1x1o"`` the previous displacement (data
    units) is the node feature. This wrapper is what export traces.

    Shapes: pos ``(B, 12, 3)``, previous_displacement ``(B, 12, 3)``, returns ``(B, 12, 3)``.
    """

    def __init__(self, config: E3nnConfig, scale: float) -> None:
        super().__init__()
        if o3.Irreps(config.irreps_out) != o3.Irreps("1x1o"):
            raise ValueError(f"DisplacementModel needs irreps_out '1x1o', got {config.irreps_out!r}")
        if config.irreps_in is not None and o3.Irreps(config.irreps_in) != o3.Irreps("1x1o"):
            raise ValueError(f"DisplacementModel supports irreps_in None or '1x1o', got {config.irreps_in!r}")
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.config = config
        self.uses_previous_displacement = config.irreps_in is not None
        self.net = FixedGraphNetwork(config)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.get_default_dtype()))

    def forward(self, pos: torch.Tensor, previous_displacement: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted displacement to the next frame. Shapes: ``(B, 12, 3)`` in, ``(B, 12, 3)`` out."""
        if self.uses_previous_displacement:
            if previous_displacement is None:
                raise ValueError("this model needs previous_displacement (config.irreps_in is '1x1o')")
            return self.net(pos, previous_displacement / self.scale) * self.scale
        if previous_displacement is not None:
            raise ValueError("this model takes no previous_displacement (config.irreps_in is None)")
        return self.net(pos) * self.scale
