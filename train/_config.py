"""The e3nn network's configuration, e3nn's own reference ``Network`` built from it, and weight transfer to it.

Importing this module sets e3nn's optimisation defaults once (eager mode, no TorchScript codegen): every other
module of the network imports e3nn through here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import e3nn
import torch

e3nn.set_optimization_defaults(jit_mode="eager")

from e3nn import o3  # noqa: E402  (after set_optimization_defaults, before any e3nn module is built)
from e3nn.nn.models.gate_points_2101 import Network  # noqa: E402

__all__ = ["E3nnConfig", "build_reference_network", "load_reference_weights", "training_config"]


@dataclass(frozen=True)
class E3nnConfig:
    """Hyper-parameters of e3nn's ``gate_points_2101.Network`` as used by the chapter.

    ``irreps_in`` is None for e3nn's default node input (a constant scalar 1 per node) or e.g. ``"1x1o"`` for a
    velocity-aware model fed the previous displacement. The edge attributes are the spherical harmonics up to
    ``lmax``; node attributes are always e3nn's default (the constant scalar 1).
    """

    irreps_in: str | None = None
    irreps_hidden: str = "5x0e + 5x0o + 5x1e + 5x1o"
    irreps_out: str = "1x1o"
    lmax: int = 3
    layers: int = 3
    max_radius: float = 3.5
    number_of_basis: int = 10
    radial_layers: int = 1
    radial_neurons: int = 128
    num_neighbors: float | None = None  # None: num_nodes - 1 (the complete graph's neighbours per node)
    num_nodes: int = 12

    def __post_init__(self) -> None:
        for name in ("irreps_hidden", "irreps_out") + (("irreps_in",) if self.irreps_in is not None else ()):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"E3nnConfig.{name} must be an irreps string, got {value!r}")
            try:
                o3.Irreps(value)
            except Exception as exc:  # e3nn raises ValueError/AssertionError on a bad string
                raise ValueError(f"E3nnConfig.{name}={value!r} is not a valid irreps string ({exc})") from None
        ints = {
            "lmax": 0,
            "layers": 0,
            "number_of_basis": 2,
            "radial_layers": 0,
            "radial_neurons": 1,
            "num_nodes": 3,
        }
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"E3nnConfig.{name} must be an integer >= {low}, got {value!r}")
        if self.num_neighbors is None:
            object.__setattr__(self, "num_neighbors", float(self.num_nodes - 1))
        for name in ("max_radius", "num_neighbors"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"E3nnConfig.{name} must be a finite number > 0, got {value!r}")
            object.__setattr__(self, name, float(value))

    def to_dict(self) -> dict:
        """Plain JSON-compatible dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> E3nnConfig:
        """Inverse of :meth:`to_dict`; missing keys take the defaults, unknown keys raise ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"E3nnConfig.from_dict expects a dict, got {type(data).__name__}: {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown E3nnConfig key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**data)


def training_config(kind, overrides: dict, history: int, n_beads: int) -> E3nnConfig:
    """The network's config for a kind (its ``e3nn_defaults``, the node features of ``history``, ``n_beads``
    nodes with ``n_beads - 1`` neighbours each) under the user's ``overrides``; UsageError names a bad value."""
    from e3traj.runtime import UsageError

    merged = {**dict(kind.e3nn_defaults), "num_nodes": n_beads, "num_neighbors": n_beads - 1, **overrides}
    if merged["num_nodes"] != n_beads:
        raise UsageError(f"e3nn num_nodes {merged['num_nodes']!r}: the data has {n_beads} beads per frame")
    irreps_in = kind.irreps_in(history)
    if irreps_in is not None:
        merged["irreps_in"] = irreps_in
    try:
        return E3nnConfig.from_dict({**E3nnConfig().to_dict(), **merged})
    except (TypeError, ValueError) as exc:
        raise UsageError(f"e3nn hyperparameters: {exc}") from None


def build_reference_network(config: E3nnConfig) -> Network:
    """e3nn's own ``gate_points_2101.Network`` for ``config`` (``reduce_output=False``)."""
    return Network(
        irreps_in=config.irreps_in,
        irreps_hidden=config.irreps_hidden,
        irreps_out=config.irreps_out,
        irreps_node_attr=None,
        irreps_edge_attr=o3.Irreps.spherical_harmonics(config.lmax),
        layers=config.layers,
        max_radius=config.max_radius,
        number_of_basis=config.number_of_basis,
        radial_layers=config.radial_layers,
        radial_neurons=config.radial_neurons,
        num_neighbors=config.num_neighbors,
        num_nodes=config.num_nodes,
        reduce_output=False,
    )


def load_reference_weights(fixed: torch.nn.Module) -> Network:
    """A fresh e3nn ``Network`` (same config) holding ``fixed``'s weights, for parity checks."""
    net = build_reference_network(fixed.config)
    net.load_state_dict(fixed.network.state_dict())
    return net.to(next(fixed.network.parameters()).dtype)
