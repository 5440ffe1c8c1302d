"""The constant structure of the fixed-graph network, built once per module from e3nn's instructions (numpy):
the graph's edges and pairs, the tensor products' Clebsch-Gordan patterns and product classes, gate segments."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ._config import o3

__all__ = ["LayerPlan", "PathGroup", "ProductClass"]


@dataclass
class ProductClass:
    """The paths of one group with the same number ``S`` of terms per input component, multiplied together.

    Attributes:
        combos: the paths ``(l2, l3)`` of the class.
        S: terms per input component ``a`` (``m = sigma[c][a][s]``).
        C: number of paths (``len(combos)``).
        d_start: first row of the class in the layer's D (edge-product) rows.
        w_start: first row of the class in the layer's radial weights.
        sigma: per path, per input component, the output components it reaches.
        q_off: first row of the class's product in the shared Q matrix (set once all layers are planned).
    """

    combos: tuple
    S: int
    C: int
    d_start: int
    w_start: int
    sigma: list = field(default_factory=list)
    q_off: int = -1


@dataclass
class PathGroup:
    """Input channels of one ``l1`` sharing the same set of paths (both parities when their paths agree).

    Attributes:
        l1: the input irrep's degree; U: channels in the group; x_start: first row of the group in the edge inputs;
        combos: the group's paths ``(l2, l3)``; classes: its products (:class:`ProductClass`).
    """

    l1: int
    U: int
    x_start: int
    combos: tuple
    classes: list = field(default_factory=list)


@dataclass
class LayerPlan:
    """What one layer's forward reads besides its constant tables.

    Attributes:
        d_in, d_out: node feature widths in and out; n_w: radial weight rows; groups: :class:`PathGroup` list;
        gate: whether a gate follows; n_s, n_g: scalar and gate channel counts; segs_s, segs_g: activation
        segments ``(start, stop, activation)``.
    """

    d_in: int
    d_out: int
    n_w: int
    groups: list
    gate: bool
    n_s: int
    n_g: int
    segs_s: list
    segs_g: list


def _fixed_graph(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ordered edges neighbour-major, the unordered pairs, and the maps between them.

    Edge ``e = k * n + i`` has destination ``i`` and source ``(i + k + 1) % n`` (its ``k``-th neighbour), for
    ``k < n - 1``: tensors laid out ``(features, k, i, B)`` sum over neighbours over their outermost edge axis.
    Returns ``src, dst`` (``n (n-1)``,), ``pair_edge`` (``n (n-1) / 2``,: one edge of each unordered pair) and
    ``edge_pair`` (``n (n-1)``,: the pair of each edge).
    """
    src, dst = [], []
    for k in range(n - 1):
        for i in range(n):
            src.append((i + k + 1) % n)
            dst.append(i)
    pairs = {}
    pair_edge = []
    edge_pair = []
    for e, (j, i) in enumerate(zip(src, dst)):
        key = (min(i, j), max(i, j))
        if key not in pairs:
            pairs[key] = len(pair_edge)
            pair_edge.append(e)
        edge_pair.append(pairs[key])
    return np.array(src), np.array(dst), np.array(pair_edge), np.array(edge_pair)


def _fctp_structure(tp) -> tuple[np.ndarray, np.ndarray]:
    """Dense matrix structure of a FullyConnectedTensorProduct whose second input is the constant ``1x0e``.

    Returns ``idx`` (int, into ``tp.weight`` padded with one trailing zero) and ``coef`` (float64), both of shape
    ``(irreps_in1.dim, irreps_out.dim)``, such that ``tp(x, ones) == x @ (weight_padded[idx] * coef)``.
    """
    if tp.irreps_in2 != o3.Irreps("0e"):
        raise NotImplementedError(f"only node attributes 0e are supported, got {tp.irreps_in2}")
    d1, do = tp.irreps_in1.dim, tp.irreps_out.dim
    idx = np.full((d1, do), tp.weight_numel, dtype=np.int64)
    coef = np.zeros((d1, do))
    s1, so = tp.irreps_in1.slices(), tp.irreps_out.slices()
    off = 0
    for ins in tp.instructions:
        if ins.connection_mode != "uvw" or not ins.has_weight:
            raise NotImplementedError(f"unexpected instruction {ins}")
        m1, mo = tp.irreps_in1[ins.i_in1], tp.irreps_out[ins.i_out]
        d = m1.ir.dim
        for u in range(m1.mul):
            for w in range(mo.mul):
                for a in range(d):
                    r, c = s1[ins.i_in1].start + u * d + a, so[ins.i_out].start + w * d + a
                    if coef[r, c] != 0:
                        raise NotImplementedError("two instructions write the same matrix entry")
                    idx[r, c] = off + u * mo.mul + w
                    coef[r, c] = ins.path_weight / math.sqrt(d)
        off += math.prod(ins.path_shape)
    if off != tp.weight_numel:
        raise NotImplementedError(f"weight layout mismatch ({off} != {tp.weight_numel})")
    return idx, coef


def _monomial_to_sh(l: int) -> np.ndarray:
    """``A`` with ``Y_l(v) = (v ⊗ ... ⊗ v) @ A`` (``l`` factors, row-major), e3nn's 'component' normalisation.

    e3nn's spherical harmonics (``normalize=False``) are homogeneous polynomials of degree ``l``; the fit is exact
    (checked) and the minimum-norm solution is symmetric in the repeated monomials.
    """
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(4 * 3**l + 16, 3, generator=gen, dtype=torch.float64)
    y = o3.spherical_harmonics(l, v, normalize=False, normalization="component")
    mono = v
    for _ in range(l - 1):
        mono = (mono[:, :, None] * v[:, None, :]).reshape(v.shape[0], -1)
    a = torch.linalg.pinv(mono) @ y
    err = (mono @ a - y).abs().max().item()
    if err > 1e-9 * max(1.0, y.abs().max().item()):
        raise RuntimeError(f"spherical harmonics of degree {l} are not a homogeneous polynomial (fit error {err})")
    return a.numpy()


def _path_pattern(l1: int, l2: int, l3: int) -> list[list[int]]:
    """For each component ``a`` of ``l1``, the components ``m`` of ``l3`` that ``sum_b w3j[a, b, m] Y_l2[b]`` can reach.

    Structural (from the Wigner 3j symbol's non-zero entries, whatever the edge vector): e.g. ``(1, 0, 1)`` is
    diagonal, ``(1, 1, 0)`` reaches ``m = 0`` only and ``(1, 1, 1)`` (the cross product) never ``m = a``.
    """
    w3j = o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()
    reach = (np.abs(w3j) > 1e-12).any(axis=1)  # (2 l1 + 1, 2 l3 + 1)
    return [np.nonzero(reach[a])[0].tolist() for a in range(2 * l1 + 1)]


#: A group's paths are split into one product per number of terms ``S`` (paths reaching 1, 2, 3... components ``m``
#: per ``a``) when that saves at least this many multiplications per edge over one product padding every path to
#: the largest ``S``: each extra product is three more onnxruntime nodes (~1 us each at B = 1).
_SPLIT_MIN_SAVING = 24


def _path_classes(l1: int, combos: tuple, n_u: int) -> list[tuple[tuple, int]]:
    """Partition a group's ``(l2, l3)`` paths into products: ``[(combos, S), ...]``.

    A path whose ``Q[m, a]`` reaches at most ``S_c`` values of ``m`` per ``a`` is evaluated as ``S_c`` terms per ``a``
    (``m = sigma_s(a)``); within one product every path is padded to the product's ``S`` with zero terms.
    """
    s_of = {c: max(len(ms) for ms in _path_pattern(l1, *c)) for c in combos}
    one = (tuple(combos), max(s_of.values()))
    saving = n_u * (2 * l1 + 1) * (len(combos) * one[1] - sum(s_of.values()))
    if saving < _SPLIT_MIN_SAVING:
        return [one]
    return [(tuple(c for c in combos if s_of[c] == n_t), n_t) for n_t in sorted(set(s_of.values()))]


class _Consts(torch.nn.Module):
    """Constant tables (buffers only, none persistent: ``state_dict`` keeps e3nn's keys alone)."""

    def const(self, name: str, value: np.ndarray) -> None:
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float64)  # cast to the working dtype in forward (exact in float64 too)
        self.register_buffer(name, tensor, persistent=False)


def _act_segments(activation) -> tuple[list, np.ndarray]:
    """Contiguous ``(start, stop, f)`` segments of an e3nn scalar Activation, and its per-channel constants."""
    segs, csts = [], []
    pos = 0
    for mul, (l, _p), act in activation.paths:
        if l != 0:
            raise NotImplementedError("gate activations act on scalars only")
        f, cst = (None, 1.0) if act is None else (act.f, 1.0 if act._is_id else act.cst)
        if segs and segs[-1][2] is f:
            segs[-1] = (segs[-1][0], pos + mul, f)
        else:
            segs.append((pos, pos + mul, f))
        csts.extend([cst] * mul)
        pos += mul
    return segs, np.array(csts, dtype=np.float64)


def _elementwise_structure(mul_tp, n_gated: int, n_gates: int) -> tuple[np.ndarray, np.ndarray]:
    """Probe e3nn's ElementwiseTensorProduct(gated, gates): ``out[d] = coef[d] * gated[d] * gates[gidx[d]]``."""
    with torch.no_grad():
        probe = mul_tp(torch.ones(n_gates, n_gated, dtype=torch.float64), torch.eye(n_gates, dtype=torch.float64))
    probe = probe.numpy()
    if probe.shape != (n_gates, n_gated) or not np.all((probe != 0).sum(0) == 1):
        raise NotImplementedError("unexpected gate multiplication structure")
    gidx = np.argmax(probe != 0, axis=0)
    return gidx.astype(np.int64), probe[gidx, np.arange(n_gated)]


def _node_input(config, node_features: torch.Tensor | None) -> torch.Tensor | None:
    """``node_features`` checked against ``config.irreps_in``: None for e3nn's constant node input, else required.

    Shapes: ``(B, n, dim(irreps_in))``, returned as given."""
    if config.irreps_in is None:
        if node_features is not None:
            raise ValueError("this network takes no node_features (config.irreps_in is None)")
        return None
    if node_features is None:
        raise ValueError(f"node_features of irreps {config.irreps_in!r} are required")
    return node_features


def _apply(f, t: torch.Tensor) -> torch.Tensor:
    return t if f is None else f(t)


def _rows_to_edges(rows: torch.Tensor, index: torch.Tensor, n_rows: int, width: int) -> torch.Tensor:
    """Copy whole rows onto the edges, feature-first: ``(n_rows * B, width)`` -> ``(width, len(index) * B)``.

    ``rows`` is row-major over ``(n_rows, B)``; one Gather of whole ``(B * width)`` rows (fast in onnxruntime at
    any B) and one 2-D transpose (made contiguous once, so the per-group slices do not copy again).
    """
    return torch.index_select(rows.reshape(n_rows, -1), 0, index).reshape(-1, width).t().contiguous()


_TINY = 1e-30  # r2 floor for the edge length: keeps sqrt and 1/r finite (forward and backward) at r == 0


def _edge_monomials(vec: torch.Tensor, max_radius: float, degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge lengths and the cutoff-scaled unit-vector monomials of degrees ``0..degree``, feature-first.

    The smooth cutoff is e3nn's (``u = 2 r / max_radius - 2`` clamped to ``[-1, 0]``), times ``(r > 0)``: coincident
    beads do not interact. Shapes: vec ``(3, M)`` -> r ``(1, M)``, monomials ``(1 + 3 + ... + 3**degree, M)``.
    """
    r2 = (vec * vec).sum(0, keepdim=True)
    r = torch.sqrt(torch.clamp(r2, min=_TINY))
    unit = vec / r
    u = torch.clamp(r * (2.0 / max_radius) - 2.0, min=-1.0, max=0.0)
    attr_scale = (1.0 - torch.cos(math.pi * u)) * 0.5 * (r2 > 0).to(vec.dtype)
    monos = [attr_scale]
    if degree:
        cur = unit * attr_scale
        monos.append(cur)
        for deg in range(2, degree + 1):
            cur = (cur[:, None] * unit[None, :]).reshape(3**deg, -1)
            monos.append(cur)
    return r, (torch.cat(monos, dim=0) if len(monos) > 1 else monos[0])


def _cubic_lookup(coefs, r: torch.Tensor, max_radius: float) -> torch.Tensor:
    """The radial table at ``r``: interval ``i = floor(r / h)``, ``f = r / h - i``, ``sum_j f**j c_j[i]`` by Horner's
    rule (four row Gathers, three Muls and Adds: with them the batched graph took 5-7% less time in onnxruntime at
    B = 8-64 than with a batched MatMul of the powers, ``benchmarks/graph_vs.py``). ``r`` is clamped to
    ``[0, max_radius]`` (beyond it the smooth cutoff zeroes the edge) and the index to ``[0, intervals - 1]``, so
    no value of ``r`` (NaN included) can index outside the table.

    Shapes: coefs: the coefficients of ``1, f, f**2, f**3``, each ``(intervals, W)``; r ``(M,)`` -> ``(M, W)``.
    """
    n_int = coefs[0].shape[0]
    t = torch.clamp(r * (n_int / max_radius), min=0.0, max=float(n_int))
    i = torch.clamp(t.to(torch.int64), min=0, max=n_int - 1)
    f = (t - i.to(r.dtype))[:, None]
    h = torch.index_select(coefs[3], 0, i)
    for c in coefs[2::-1]:
        h = h * f + torch.index_select(c, 0, i)
    return h
