"""The velocity-aware model: the gate network given the previous displacement, predicting the correction to
constant-velocity extrapolation (x_{t+1} = x_t + (x_t - x_{t-1}) + correction).

It stays exactly E(3)-equivariant: the previous displacement is a ``1x1o`` node feature, which rotates with the
frame and does not translate; the correction is a ``1x1o`` output.
"""

from __future__ import annotations

import math

import torch

from ._config import E3nnConfig
from ._network import FixedGraphNetwork

__all__ = ["VelocityModel"]


class VelocityModel(torch.nn.Module):
    """``net(pos, previous_displacement / input_scale) * scale``: the correction to constant velocity, data units.

    Two scalars scale the input (RMS previous displacement) and the output (RMS correction); scalars keep
    equivariance.

    Shapes: pos ``(B, 12, 3)``, previous_displacement ``(B, 12, 3)`` -> ``(B, 12, 3)``.
    """

    def __init__(self, config: E3nnConfig, scale: float, input_scale: float) -> None:
        super().__init__()
        if config.irreps_in is None:
            raise ValueError("VelocityModel needs config.irreps_in '1x1o' (the previous displacement), got None")
        for name, value in (("scale", scale), ("input_scale", input_scale)):
            if not math.isfinite(float(value)) or float(value) <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.config = config
        self.net = FixedGraphNetwork(config)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("input_scale", torch.tensor(float(input_scale)))

    def raw(self, pos: torch.Tensor, previous_displacement: torch.Tensor) -> torch.Tensor:
        """The network's output before the output scale (what training regresses)."""
        return self.net(pos, previous_displacement / self.input_scale)

    def forward(self, pos: torch.Tensor, previous_displacement: torch.Tensor) -> torch.Tensor:
        return self.raw(pos, previous_displacement) * self.scale

    def single_frame_form(self) -> torch.nn.Module:
        """The same function for one frame in few operations (:class:`~e3traj.train._single.SingleFrameGraph`);
        needs the radial table. Shapes: ``(1, 12, 3)`` twice in, ``(1, 12, 3)`` out."""
        from ._single import SingleFrameGraph

        return SingleFrameGraph(self.net, scale=float(self.scale), input_scale=float(self.input_scale))
