"""The registry of model kinds: what each kind takes, what it outputs, how it is built and what it regresses.

Every other place (checkpoints, the training loop, the CLI, export) reads a kind's entry instead of testing its
name. Adding a kind means an entry here, its model module and its tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from e3traj.runtime import contract as C

if TYPE_CHECKING:  # torch loads with the models, not with the registry (the CLI reads it for --model)
    import torch

__all__ = ["ModelKind", "KINDS", "get_kind"]


@dataclass(frozen=True)
class ModelKind:
    """One model kind.

    Attributes:
        name: the kind's name (``--model``, checkpoint ``kind``, manifest ``model.kind``).
        help: one line for ``--help``.
        inputs: input meanings in graph order (the graph's input names are the meanings).
        output: output meaning: how the next frame follows from the output (:func:`contract.next_frame`).
        equivariant: False only for the negative control (the chapter's baseline).
        learning_rate: the default Adam learning rate.
        e3nn: True when the kind wraps the e3nn gate network (hyperparameters, radial table, reference FLOPs).
        node_features: the network's ``irreps_in`` (``"1x1o"``: the previous displacement), or None.
        scaled_labels: True: the loss sees ``target / scale`` (scalars keep equivariance); False: the next
            positions themselves (the baseline, as in the chapter).
        build: ``build(config, scale, input_scale, seed) -> torch.nn.Module``.
        raw: ``raw(model, x, v) -> output`` before the output scale: what training regresses (float32).
        target: ``target(x, y, prev) -> tensor`` (float64): what the output stands for, before scaling.
    """

    name: str
    help: str
    inputs: tuple[str, ...]
    output: str
    equivariant: bool
    learning_rate: float
    e3nn: bool
    node_features: str | None
    scaled_labels: bool
    build: Callable[[Any, float, float, int], torch.nn.Module]
    raw: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    target: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

    @property
    def needs_previous(self) -> bool:
        """True when a step needs the frame before (for an input or for the next-frame rule)."""
        return C.needs_previous(self.output, self.inputs)

    @property
    def uses_input_scale(self) -> bool:
        return C.PREVIOUS_DISPLACEMENT in self.inputs


def _baseline(config, scale, input_scale, seed):
    from ._baseline import LinearBaseline

    return LinearBaseline(seed=seed)


def _displacement(config, scale, input_scale, seed):
    from ._model import DisplacementModel

    return DisplacementModel(config, scale=scale)


def _velocity(config, scale, input_scale, seed):
    from ._velocity import VelocityModel

    return VelocityModel(config, scale=scale, input_scale=input_scale)


KINDS: dict[str, ModelKind] = {
    k.name: k
    for k in (
        ModelKind(
            name="baseline",
            help="the chapter's linear baseline, pos @ W + b (not equivariant: the negative control)",
            inputs=(C.POSITIONS,),
            output=C.NEXT_POSITIONS,
            equivariant=False,
            learning_rate=1e-2,
            e3nn=False,
            node_features=None,
            scaled_labels=False,
            build=_baseline,
            raw=lambda model, x, v: model(x),
            target=lambda x, y, prev: y - x,  # only its RMS is recorded (the scale); the labels are y
        ),
        ModelKind(
            name="e3nn",
            help="the chapter's e3nn gate network on one frame, predicting the displacement",
            inputs=(C.POSITIONS,),
            output=C.DISPLACEMENT,
            equivariant=True,
            learning_rate=1e-3,
            e3nn=True,
            node_features=None,
            scaled_labels=True,
            build=_displacement,
            raw=lambda model, x, v: model.net(x),
            target=lambda x, y, prev: y - x,
        ),
        ModelKind(
            name="e3nn-velocity",
            help="the gate network given the previous displacement, predicting the correction to constant velocity",
            inputs=(C.POSITIONS, C.PREVIOUS_DISPLACEMENT),
            output=C.VELOCITY_CORRECTION,
            equivariant=True,
            learning_rate=3e-3,
            e3nn=True,
            node_features="1x1o",
            scaled_labels=True,
            build=_velocity,
            raw=lambda model, x, v: model.raw(x, v),
            target=lambda x, y, prev: y - 2 * x + prev,  # the correction to constant velocity (the acceleration)
        ),
    )
}


def get_kind(name: Any, *, error: type[Exception] = ValueError, where: str = "model kind") -> ModelKind:
    """The registry entry of ``name``; ``error`` (a project error type) when there is none."""
    if isinstance(name, str) and name in KINDS:
        return KINDS[name]
    raise error(f"{where} {name!r} is unknown; use one of {', '.join(KINDS)}")


def positive_float(value: Any) -> bool:
    """A finite float > 0 (the checkpoint's scales)."""
    return isinstance(value, float) and math.isfinite(value) and value > 0
