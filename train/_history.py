"""The history model: the fitted AR(K) extrapolation, a linear head on the chain's topology, and the gate network
on the K - 1 previous displacements, predicting what the extrapolation misses.

    x_{t+1} = AR(K)(x_t .. x_{t-K+1}) + head(x_t) + net(x_t, [d_1 .. d_H, head(x_t)]) * scale,   H = K - 1

- AR(K): ``x_t + sum_j b_j d_j``, ``d_j = x_{t-j+1} - x_{t-j}``, least squares on the training pairs (the runtime's
  :func:`~e3traj.runtime.fit_ar`); accumulated in float64 on the host (the bundle's output is the correction).
- head: ``sum_f w_f F_f``, ridge regression on :class:`ChainFeatures`: for each chain offset s = 1, 2, 3 and radial
  basis function phi_m, ``F_i = sum_{o = +s, -s} phi_m(|u| / L) u / L`` with ``u = x_{i+o} - x_i`` (L: the mean
  bond length); the last displacement relative to the neighbours', ``sum_{o = +s, -s} (d_{i+o} - d_i) / L``;
  and the bend, ``c_i = (x_{i+1} + x_{i-1} - 2 x_i) / L`` times ``exp(-(|c_i| / w)^2)`` for w = 0.5, 1, 2.
  The sums over both directions make the features invariant under the chain's reversal.
- net: the chapter's gate network (e3nn's ``Network`` on the fixed complete graph) given the previous displacements
  and the head's vector as (H + 1)x1o node features, trained on the rest.

Every term is a vector built from differences of positions with scalar weights: exactly E(3)-equivariant, and
equivariant under the relabellings that carry the chain along (the identity and the reversal) — not under an
arbitrary permutation of the beads, since the head knows which beads are bonded (``permutation: chain_reversal``).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from ._config import E3nnConfig
from ._network import FixedGraphNetwork

__all__ = ["ChainFeatures", "ChainHead", "HistoryModel", "fit_head", "OFFSETS", "N_BASIS", "RIDGE"]

#: Chain offsets of the head's features, and radial basis functions per offset.
OFFSETS = (1, 2, 3)
N_BASIS = 8
#: Ridge strength, relative to the mean diagonal of the features' Gram matrix.
RIDGE = 1e-4
_CENTERS = (0.55, 4.4)  # in units of the mean bond length
_WIDTH = 0.55
_BEND_WIDTHS = (0.5, 1.0, 2.0)


class ChainFeatures(torch.nn.Module):
    """Equivariant features of the chain's topology (see the module docstring).

    Shapes: pos, d ``(B, N, 3)`` -> ``(B, N, 3, n_features)``, in units of ``length_scale``.
    """

    def __init__(self, n_beads: int, length_scale: float) -> None:
        super().__init__()
        if not math.isfinite(float(length_scale)) or float(length_scale) <= 0:
            raise ValueError(f"length_scale must be a finite number > 0, got {length_scale!r}")
        self.register_buffer("length_scale", torch.tensor(float(length_scale)))
        self.register_buffer("centers", torch.linspace(_CENTERS[0], _CENTERS[1], N_BASIS))
        i = torch.arange(n_beads)
        idx, mask = [], []
        for s in OFFSETS:
            for o in (s, -s):
                j = i + o
                ok = (j >= 0) & (j < n_beads)
                idx.append(torch.where(ok, j, i))  # out of the chain: the bead itself (u = 0, masked)
                mask.append(ok)
        self.register_buffer("index", torch.stack(idx))  # (2 * len(OFFSETS), N)
        self.register_buffer("mask", torch.stack(mask).to(torch.get_default_dtype())[..., None])  # (2S, N, 1)

    @property
    def n_features(self) -> int:
        return len(OFFSETS) * (N_BASIS + 1) + len(_BEND_WIDTHS)

    def forward(self, pos: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        p = pos / self.length_scale.to(pos.dtype)
        v = d / self.length_scale.to(d.dtype)
        feats = []
        for k in range(0, self.index.shape[0], 2):
            acc = None
            for kk in (k, k + 1):  # +s and -s: summed, so the chain's reversal leaves the features alone
                u = (p[:, self.index[kk]] - p) * self.mask[kk].to(pos.dtype)  # (B, N, 3)
                r = torch.sqrt((u * u).sum(-1, keepdim=True) + 1e-12)  # (B, N, 1)
                phi = torch.exp(-(((r - self.centers.to(pos.dtype)) / _WIDTH) ** 2))  # (B, N, M)
                term = u[..., :, None] * phi[..., None, :]  # (B, N, 3, M)
                acc = term if acc is None else acc + term
            feats.append(acc)
        for k in range(0, self.index.shape[0], 2):  # relative motion: sum_{+s, -s} (d_{i+o} - d_i)
            rel = sum((v[:, self.index[kk]] - v) * self.mask[kk].to(d.dtype) for kk in (k, k + 1))
            feats.append(rel[..., None])
        # the bend: +1 and -1 neighbours (both inside the chain), symmetric under the reversal
        both = (self.mask[0] * self.mask[1]).to(pos.dtype)
        c = (p[:, self.index[0]] + p[:, self.index[1]] - 2 * p) * both
        c2 = (c * c).sum(-1, keepdim=True)
        for w in _BEND_WIDTHS:
            feats.append((c * torch.exp(-c2 / (w * w)))[..., None])
        return torch.cat(feats, dim=-1)


def fit_head(features: torch.Tensor, residual: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """Ridge regression of ``residual`` on ``features`` (one weight per feature, shared by beads and coordinates).

    Shapes: features ``(n, N, 3, F)``, residual ``(n, N, 3)`` (float64) -> ``(F,)`` float64.
    """
    a = features.reshape(-1, features.shape[-1]).double()
    return solve_ridge(a.T @ a / len(a), a.T @ residual.reshape(-1).double() / len(a), ridge)


def solve_ridge(g: torch.Tensor, rhs: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """``(g + lam I)^-1 rhs`` with ``lam = ridge x`` the mean diagonal of the Gram matrix ``g``."""
    lam = ridge * torch.trace(g) / g.shape[0]
    return torch.linalg.solve(g + lam * torch.eye(g.shape[0], dtype=g.dtype), rhs)


def register_fit(module: torch.nn.Module, history: int, n_features: int, ar_coefficients, head_weights) -> None:
    """The closed-form fit's buffers: ``ar_coefficients`` ``(history,)`` (float64: read by export and the next-frame
    rule) and ``head_weights`` ``(n_features,)`` (zeros when None); ValueError when their shapes do not fit."""
    ar = torch.zeros(history, dtype=torch.float64) if ar_coefficients is None else torch.as_tensor(ar_coefficients)
    head = torch.zeros(n_features) if head_weights is None else torch.as_tensor(head_weights)
    if ar.shape != (history,) or head.shape != (n_features,):
        raise ValueError(f"ar_coefficients {tuple(ar.shape)} / head_weights {tuple(head.shape)} do not fit")
    module.register_buffer("ar_coefficients", ar.to(torch.float64))
    module.register_buffer("head_weights", head.to(torch.get_default_dtype()))


def head_as_trained(features: torch.Tensor, head_weights) -> torch.Tensor:
    """``features @ head_weights`` in float64, rounded as the float32 model holds it (what a target subtracts).

    Shapes: ``(n, N, 3, F)``, ``(F,)`` -> ``(n, N, 3)``.
    """
    w = torch.as_tensor(head_weights, dtype=torch.float64)
    return (features @ w).to(torch.float32).double()


class HistoryModel(torch.nn.Module):
    """``head(pos) + gain * net(pos, [d / input_scale, head(pos) / scale]) * scale``: the correction to AR(K).

    ``gain`` (a learned scalar) starts at 0, so training starts from AR(K) + head.

    Buffers: ``ar_coefficients`` ``(H,)`` (float64, read by export and the next-frame rule), ``head_weights``
    ``(F,)``, ``scale``, ``input_scale``.

    Shapes: pos ``(B, 12, 3)``, previous_displacements ``(B, H, 12, 3)`` (the most recent first) -> ``(B, 12, 3)``.
    """

    def __init__(
        self,
        config: E3nnConfig,
        *,
        history: int,
        scale: float,
        input_scale: float,
        length_scale: float,
        ar_coefficients=None,
        head_weights=None,
    ) -> None:
        super().__init__()
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be an integer >= 1 (previous displacements), got {history!r}")
        want = f"{history + 1}x1o"
        if config.irreps_in is None or str(config.irreps_in).replace(" ", "") != want:
            raise ValueError(f"HistoryModel needs config.irreps_in {want!r}, got {config.irreps_in!r}")
        for name, value in (("scale", scale), ("input_scale", input_scale)):
            if not math.isfinite(float(value)) or float(value) <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.config = config
        self.history = history
        self.features = ChainFeatures(config.num_nodes, length_scale)
        self.net = FixedGraphNetwork(config)
        register_fit(self, history, self.features.n_features, ar_coefficients, head_weights)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("input_scale", torch.tensor(float(input_scale)))
        # the network's share starts at 0: an untrained model is AR(K) + head, and training moves from there
        self.gain = torch.nn.Parameter(torch.zeros(()))

    def head(self, pos: torch.Tensor, previous_displacements: torch.Tensor) -> torch.Tensor:
        """The linear head's vector per bead. Shapes: ``(B, N, 3)``, ``(B, H, N, 3)`` -> ``(B, N, 3)``."""
        return self.features(pos, previous_displacements[:, 0]) @ self.head_weights.to(pos.dtype)

    def raw(self, pos: torch.Tensor, previous_displacements: torch.Tensor, head: torch.Tensor | None = None):
        """The network's output before the output scale (what training regresses)."""
        b, h, n, _ = previous_displacements.shape
        h_vec = self.head(pos, previous_displacements) if head is None else head
        d = (previous_displacements / self.input_scale).permute(0, 2, 1, 3).reshape(b, n, 3 * h)
        return self.gain * self.net(pos, torch.cat([d, h_vec / self.scale], dim=-1))

    def forward(self, pos: torch.Tensor, previous_displacements: torch.Tensor) -> torch.Tensor:
        h_vec = self.head(pos, previous_displacements)
        return h_vec + self.raw(pos, previous_displacements, h_vec) * self.scale

    def graph_form(self) -> torch.nn.Module:
        """The same function with the head's weights folded into it (:class:`ChainHead`): what export writes."""
        return _HistoryGraph(self)


class ChainHead(torch.nn.Module):
    """``ChainFeatures(pos, d) @ w`` with ``w`` folded in, all offsets at once: one gather of the neighbours, one
    scalar per neighbour from the radial basis, the relative motion and the bend, instead of a feature per basis
    function (export: a sixth of the nodes). Equal to the features' product up to rounding.

    Shapes: pos ``(B, N, 3)``, d ``(B, N, 3)`` -> ``(B, N, 3)``.
    """

    def __init__(self, features: ChainFeatures, head_weights) -> None:
        super().__init__()
        w = torch.as_tensor(head_weights).detach().double()
        dtype = features.centers.dtype
        s, m = len(OFFSETS), N_BASIS
        self.pairs, self.n = features.index.shape[0], features.index.shape[1]
        self.register_buffer("index", features.index.reshape(-1).clone())  # (2S N,): the +s, -s neighbours
        self.register_buffer("mask", features.mask.clone())  # (2S, N, 1)
        self.register_buffer("centers", features.centers.clone())
        self.register_buffer("length_scale", features.length_scale.clone())
        both = lambda a: a.repeat_interleave(2, dim=0).to(dtype)  # noqa: E731 - +s and -s share a weight
        self.register_buffer("w_basis", both(w[: s * m].reshape(s, 1, m)))  # (2S, 1, M)
        self.register_buffer("w_rel", both(w[s * m : s * m + s].reshape(s, 1, 1)))  # (2S, 1, 1)
        self.register_buffer("w_bend", w[s * m + s :].to(dtype))  # (widths,)
        self.register_buffer("bend_width2", torch.tensor([b * b for b in _BEND_WIDTHS], dtype=dtype))

    def forward(self, pos: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        p = pos / self.length_scale
        v = d / self.length_scale
        near = p[:, self.index].reshape(-1, self.pairs, self.n, 3)  # (B, 2S, N, 3)
        u = (near - p[:, None]) * self.mask
        r = torch.sqrt((u * u).sum(-1, keepdim=True) + 1e-12)
        g = (torch.exp(-(((r - self.centers) / _WIDTH) ** 2)) * self.w_basis).sum(-1, keepdim=True)
        rel = (v[:, self.index].reshape(-1, self.pairs, self.n, 3) - v[:, None]) * self.mask * self.w_rel
        out = (u * g + rel).sum(1)
        c = (near[:, 0] + near[:, 1] - 2 * p) * (self.mask[0] * self.mask[1])
        c2 = (c * c).sum(-1, keepdim=True)
        return out + c * (torch.exp(-c2 / self.bend_width2) * self.w_bend).sum(-1, keepdim=True)


class _HistoryGraph(torch.nn.Module):
    """:class:`HistoryModel`'s forward with :class:`ChainHead` for the head and static reshapes (export)."""

    def __init__(self, model: HistoryModel) -> None:
        super().__init__()
        self.head = ChainHead(model.features, model.head_weights)
        self.net, self.gain, self.history, self.n = model.net, model.gain, model.history, model.config.num_nodes
        self.register_buffer("scale", model.scale.clone())
        self.register_buffer("input_scale", model.input_scale.clone())

    def forward(self, pos: torch.Tensor, previous_displacements: torch.Tensor) -> torch.Tensor:
        h_vec = self.head(pos, previous_displacements[:, 0])
        d = (previous_displacements / self.input_scale).permute(0, 2, 1, 3).reshape(-1, self.n, 3 * self.history)
        return h_vec + self.gain * self.net(pos, torch.cat([d, h_vec / self.scale], dim=-1)) * self.scale

    def single_frame_form(self) -> torch.nn.Module:
        """The same function for one frame: the network as :class:`~e3traj.train._single.SingleFrameGraph` (needs
        the radial table, as export holds it), the head as here. Shapes: ``(1, N, 3)``, ``(1, H, N, 3)``."""
        from ._single import SingleFrameGraph

        form = copy.deepcopy(self)
        form.net = SingleFrameGraph(self.net)
        return form


def mean_bond_length(frames: np.ndarray | torch.Tensor) -> float:
    """Mean distance between consecutive beads. Shapes: ``(T, N, 3)``."""
    f = torch.as_tensor(frames, dtype=torch.float64)
    return float(torch.linalg.norm(f[:, 1:] - f[:, :-1], dim=-1).mean())
