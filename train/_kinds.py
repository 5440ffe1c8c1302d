"""The registry of model kinds: what each kind takes, what it outputs, how it is built and what it regresses.

Every other place (checkpoints, the training loop, the CLI, export) reads a kind's entry instead of testing its
name. Adding a kind means an entry here, its model module and its tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

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
        node_features: the network's ``irreps_in`` (``"1x1o"``: the previous displacement), a function of H
            (the previous displacements of a history kind), or None.
        scaled_labels: True: the loss sees ``target / scale`` (scalars keep equivariance); False: the next
            positions themselves (the baseline, as in the chapter).
        build: ``build(config, scale, input_scale, seed, spec) -> torch.nn.Module`` (``spec``: what
            ``prepare`` fitted, also stored in the checkpoint).
        raw: ``raw(model, inputs) -> output`` before the output scale: what training regresses (float32);
            ``inputs`` are the model's inputs in the order of ``inputs``.
        target: ``target(x, y, past, spec) -> tensor`` (float64): what the output stands for, before scaling;
            ``past`` ``(B, H, 12, 3)`` the frames before ``x``, chronological.
        window: True when the kind takes ``--history K`` frames (H = K - 1 previous displacements).
        prepare: ``prepare(split, x, past, y, history) -> spec``: fits done before training (AR coefficients...).
        permutation: the relabellings the model commutes with (``any`` or ``chain_reversal``).
        e3nn_defaults: E3nnConfig fields this kind sets before the user's overrides.
        default_history: the window kinds' ``--history`` when none is given (None: the suite's AR order).
        noise_rule: how training fits the sampled rollouts' ``noise_scale`` (:data:`contract.NOISE_RULES`):
            ``residual`` (the RMS one-step residual) or ``thermostat`` (fluctuation-dissipation with the fitted
            damping, :func:`e3traj.runtime.thermostat_scale`).
    """

    name: str
    help: str
    inputs: tuple[str, ...]
    output: str
    equivariant: bool
    learning_rate: float
    e3nn: bool
    node_features: str | Callable[[int], str] | None
    scaled_labels: bool
    build: Callable[[Any, float, float, int, dict], torch.nn.Module]
    raw: Callable[[torch.nn.Module, list], torch.Tensor]
    target: Callable[[torch.Tensor, torch.Tensor, Any, dict], torch.Tensor]
    window: bool = False
    prepare: Callable[..., dict] | None = None
    permutation: str = "any"
    e3nn_defaults: tuple[tuple[str, Any], ...] = ()
    default_history: int | None = None
    noise_rule: str = "residual"

    def past_frames(self, history: int) -> int:
        """Frames before the current one a step needs, for ``--history`` ``history`` (window kinds only)."""
        if self.window:
            return int(history) - 1
        return 1 if C.needs_previous(self.output, self.inputs) else 0

    @property
    def needs_previous(self) -> bool:
        """True when a step needs the frame before (for an input or for the next-frame rule)."""
        return self.window or C.needs_previous(self.output, self.inputs)

    @property
    def uses_input_scale(self) -> bool:
        return C.PREVIOUS_DISPLACEMENT in self.inputs or C.PREVIOUS_DISPLACEMENTS in self.inputs

    def noise_scale(self, predictor, spec: dict, split) -> float:
        """The sampled rollouts' noise per coordinate by :attr:`noise_rule`, on the training part of ``split``."""
        from e3traj.runtime import InputError, residual_scale, thermostat_scale

        if self.noise_rule == "thermostat":
            try:
                return thermostat_scale(spec["ar_coefficients"], split.frames, split.train_index())
            except ValueError as exc:
                raise InputError(f"training data: {exc}; pass --history 2 or more frames") from None
        return residual_scale(predictor, split.frames, split.train_index(int(predictor.history)))

    def irreps_in(self, history: int) -> str | None:
        """The network's node input irreps for ``--history`` ``history``."""
        f = self.node_features
        return f(self.past_frames(history)) if callable(f) else f


def _baseline(config, scale, input_scale, seed, spec):
    from ._baseline import LinearBaseline

    return LinearBaseline(seed=seed)


def _displacement(config, scale, input_scale, seed, spec):
    from ._model import DisplacementModel

    return DisplacementModel(config, scale=scale)


def _velocity(config, scale, input_scale, seed, spec):
    from ._velocity import VelocityModel

    return VelocityModel(config, scale=scale, input_scale=input_scale)


def _history(config, scale, input_scale, seed, spec):
    from ._history import HistoryModel

    return HistoryModel(
        config,
        history=int(spec["history"]),
        scale=scale,
        input_scale=input_scale,
        length_scale=float(spec["length_scale"]),
        ar_coefficients=spec.get("ar_coefficients"),
        head_weights=spec.get("head_weights"),
    )


def _history_prepare(split, x, past, y, history):
    """Fit AR(K) (the runtime's fit, so the model corrects the very AR(K) of the reports) and the linear head."""

    from e3traj.runtime import InputError, fit_ar

    from ._history import ChainFeatures, fit_head, mean_bond_length

    try:
        ar = fit_ar(split, int(history))
    except ValueError as exc:  # too few training frames for this window
        raise InputError(f"training data: {exc}; pass a smaller --history or more frames") from None
    length = mean_bond_length(split.train_x)
    feats = ChainFeatures(x.shape[1], length).double()(x, x - past[:, -1])
    residual = y - C.ar_extrapolate(x, past, ar.coefficients)
    w = fit_head(feats, residual)
    return {
        "history": int(history) - 1,
        "length_scale": length,
        "ar_coefficients": [float(c) for c in ar.coefficients],
        "head_weights": [float(v) for v in w],
    }


def _history_target(x, y, past, spec):
    """The correction to AR(K) left after the linear head: what the network regresses (times its scale)."""

    from ._history import ChainFeatures, head_as_trained

    feats = ChainFeatures(x.shape[1], spec["length_scale"]).double()(x, x - past[:, -1])
    head = head_as_trained(feats, spec["head_weights"])
    return y - C.ar_extrapolate(x, past, spec["ar_coefficients"]) - head


def _langevin(config, scale, input_scale, seed, spec):
    from ._langevin import LangevinModel

    return LangevinModel(
        int(spec["n_beads"]),
        history=int(spec["history"]),
        scale=scale,
        length_scale=float(spec["length_scale"]),
        ar_coefficients=spec.get("ar_coefficients"),
        head_weights=spec.get("head_weights"),
        wall_low=spec["wall_low"],
        wall_high=spec["wall_high"],
        wall_core=spec.get("wall_core"),
    )


#: The langevin fit's feature blocks (bytes of their pair terms); 12-bead training sets fit in one.
FIT_BLOCK_BYTES = 1 << 28


def _langevin_prepare(split, x, past, y, history):
    """Fit the damping and the pair forces jointly (ridge), and find the walls from the training frames."""
    import torch

    from ._history import fit_head, mean_bond_length, solve_ridge
    from ._langevin import JOINT_RIDGE, ChainForces, distance_range

    h = int(history) - 1
    length = mean_bond_length(split.train_x)
    disp = torch.stack(C.past_displacements(x, past, h), dim=-1)  # (n, N, 3, H), the most recent first
    forces = ChainForces(x.shape[1], length).double()
    # the features hold (n, N, 3, F) and their pairs (n, N, N, F): blocks of frames under 256 MB (12 beads: one)
    block = max(1, FIT_BLOCK_BYTES // (8 * x.shape[1] ** 2 * (h + forces.n_features)))
    if len(x) <= block:
        w = fit_head(torch.cat([disp, forces(x)], dim=-1), y - x, ridge=JOINT_RIDGE)
    else:
        g = rhs = 0.0
        for lo in range(0, len(x), block):
            a = torch.cat([disp[lo : lo + block], forces(x[lo : lo + block])], dim=-1).reshape(
                -1, h + forces.n_features
            )
            g, rhs = g + a.T @ a, rhs + a.T @ (y - x)[lo : lo + block].reshape(-1)
        n = x[..., 0].numel() * 3
        w = solve_ridge(g / n, rhs / n, JOINT_RIDGE)
    ts = split.train_index()
    walls = distance_range(split.frames[np.union1d(ts, ts + 1)])  # every frame of a training pair
    return {
        "history": h,
        "length_scale": length,
        "ar_coefficients": [float(c) for c in w[:h]],
        "head_weights": [float(v) for v in w[h:]],
        **walls,
        "n_beads": int(x.shape[1]),
    }


def _langevin_target(x, y, past, spec):
    """The pair forces and the wall (the whole model: nothing is left to train; the scale is their RMS)."""

    from ._history import head_as_trained
    from ._langevin import ChainForces, Wall

    head = head_as_trained(ChainForces(x.shape[1], spec["length_scale"]).double()(x), spec["head_weights"])
    head = head + Wall(x.shape[1], spec["wall_low"], spec["wall_high"], spec.get("wall_core")).double()(x)
    return head


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
            raw=lambda model, a: model(a[0]),
            target=lambda x, y, past, spec: y - x,  # only its RMS is recorded (the scale); the labels are y
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
            raw=lambda model, a: model.net(a[0]),
            target=lambda x, y, past, spec: y - x,
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
            raw=lambda model, a: model.raw(a[0], a[1]),
            target=lambda x, y, past, spec: y - 2 * x + past[:, -1],  # the correction to constant velocity
        ),
        ModelKind(
            name="e3nn-history",
            help="AR(K) fitted on the K last frames, a linear head on the chain's bonds, and the gate network given "
            "the K-1 previous displacements, predicting the correction to AR(K)",
            inputs=(C.POSITIONS, C.PREVIOUS_DISPLACEMENTS),
            output=C.AR_CORRECTION,
            equivariant=True,
            learning_rate=3e-3,
            e3nn=True,
            node_features=lambda h: f"{h + 1}x1o",
            scaled_labels=True,
            build=_history,
            raw=lambda model, a: model.raw(a[0], a[1]),
            target=_history_target,
            window=True,
            prepare=_history_prepare,
            permutation="chain_reversal",
            # 2 gate layers: node features make the first layer as costly as the others (the one-frame network's
            # constant input is folded away), and 2 layers train as well (0.863 vs 0.869 x AR(5) on the chapter's
            # data, 0.933 vs 0.943 x AR(8) on the simulator's) at 1.4x the e3nn bundle's time per frame
            e3nn_defaults=(("layers", 2),),
        ),
        ModelKind(
            name="langevin",
            help="a learned Langevin integrator for long rollouts: fitted damping, central pair forces by chain "
            "separation and walls outside the training distances, all in closed form (no network); sampled with "
            "a thermostat's noise",
            inputs=(C.POSITIONS,),  # the damping needs the frames before; the host applies it (ar_correction)
            output=C.AR_CORRECTION,
            equivariant=True,
            learning_rate=1e-3,  # unused: nothing is trained by gradient descent
            e3nn=False,
            node_features=None,
            scaled_labels=True,
            build=_langevin,
            raw=lambda model, a: model(a[0]) / model.scale,
            target=_langevin_target,
            window=True,
            prepare=_langevin_prepare,
            permutation="chain_reversal",
            default_history=2,
            noise_rule="thermostat",
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
