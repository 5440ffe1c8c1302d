"""The one-frame model: the fixed-graph network's displacement, scaled to data units."""

from __future__ import annotations

import math

import torch

from ._config import E3nnConfig, o3
from ._network import FixedGraphNetwork

__all__ = ["DisplacementModel"]


class DisplacementModel(torch.nn.Module):
    """Next-frame displacement in data units: ``net(pos) * scale`` (a scalar scale keeps equivariance).

    ``config.irreps_out`` must be ``1x1o`` and ``config.irreps_in`` None (node features are the velocity model's,
    :class:`~e3traj.train._velocity.VelocityModel`). This wrapper is what export traces.

    Shapes: pos ``(B, 12, 3)`` -> ``(B, 12, 3)``.
    """

    def __init__(self, config: E3nnConfig, scale: float) -> None:
        super().__init__()
        if o3.Irreps(config.irreps_out) != o3.Irreps("1x1o"):
            raise ValueError(f"DisplacementModel needs irreps_out '1x1o', got {config.irreps_out!r}")
        if config.irreps_in is not None:
            raise ValueError(f"DisplacementModel takes no node features (irreps_in None), got {config.irreps_in!r}")
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.config = config
        self.net = FixedGraphNetwork(config)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.get_default_dtype()))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        """Predicted displacement to the next frame. Shapes: ``(B, 12, 3)`` in, ``(B, 12, 3)`` out."""
        return self.net(pos) * self.scale

    def single_frame_form(self) -> torch.nn.Module:
        """The same function for one frame in few operations (:class:`~e3traj.train._single.SingleFrameGraph`),
        scaled as :meth:`forward`; needs the radial table (:func:`~e3traj.train.tabulate_radial`'s copy).

        Shapes: ``(1, N, 3)`` in, ``(1, N, 3)`` out."""
        from ._single import SingleFrameGraph

        return SingleFrameGraph(self.net, scale=float(self.scale))
