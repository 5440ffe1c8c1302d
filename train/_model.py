"""e3nn's ``gate_points_2101.Network`` over a fixed fully connected graph, as dense batched tensor algebra.

e3nn's Network builds its graph with ``radius_graph`` (``nonzero``: data-dependent shapes, slow, not exportable)
and runs its tensor products through many small code-generated einsums. :class:`FixedGraphNetwork` owns an e3nn
``Network`` (so its parameters *are* e3nn's) and evaluates exactly the same function with a handful of batched
MatMuls over the ``n * (n - 1)`` ordered bead pairs, with the cutoff acting as a mask:

* **Graph.** Edges are all ordered pairs ``i != j``, neighbour-major: edge ``e = k * n + i`` has destination ``i`` and
  source ``(i + k + 1) % n``, and edge tensors are laid out ``(features, k, i, B)``, so summing over neighbours adds
  whole contiguous rows. e3nn's smooth cutoff already makes edge attributes vanish for ``r >= max_radius``; e3nn's
  ``radius_graph`` also drops pairs with ``r == 0`` (``r > 0``), which is reproduced by multiplying edge attributes by
  ``(r > 0)``: **coincident beads do not interact**, as in e3nn's Network. Edge lengths use ``sqrt(clamp(r2, tiny))``
  so forward and backward stay finite at ``r == 0``.
* **Linear maps.** Node attributes are the constant scalar 1, so ``sc``, ``lin1`` and ``lin2`` (tensor products
  with a ``0e`` second input) are linear maps. Their dense matrices are gathered from e3nn's flat weight vectors
  with constant index/coefficient tables (``matrix = weights[idx] * coef``: exact and differentiable).
* **Convolution.** e3nn's ``tp`` (mode ``uvu``, per-edge weights) is, for an input channel ``u`` of irrep
  ``l1`` and a path ``(l2, l3)``, ``pw * w_e[u] * x_src[u, :] @ Q_e`` with ``Q_e[a, m] = sum_b C[a, b, m] Y_e[b]``
  (``C`` the Wigner 3j symbol). The spherical harmonics are homogeneous polynomials of the unit edge vector, so
  every ``Q_e`` entry of every layer (times the smooth cutoff) comes from one MatMul of the cutoff-scaled edge
  monomials with a constant matrix. Input channels are grouped by ``l1`` and their set of paths (both parities
  share a group when their paths agree). Only the structurally non-zero entries of ``Q`` are multiplied: a path
  reaching ``S`` components ``m = sigma_s(a)`` per input component ``a`` (1 for ``(1, 0, 1)`` (diagonal) and
  ``(1, 1, 0)``, 2 for the cross product ``(1, 1, 1)``, 3 for ``(1, 2, 1)``) contributes the terms
  ``x[u, a] * w[u, c] * Q[c, s, a]``, one broadcast product per group (or one per ``S`` when that saves enough
  work); the sum over neighbours ``k`` adds whole contiguous rows, and
  the sum over ``a`` into each ``m`` is folded into ``lin2``'s matrix, which also carries the path weights,
  ``1 / sqrt(num_neighbors)``, e3nn's sc/conv mixing and the gate's channel order.
* **Layout.** Node tensors are node-major rows ``(n * B, features)``: linear maps are one MatMul each, and copying
  nodes onto edges is one Gather of whole rows (``(n, B * features)`` -> ``(k, i, B * features)``) followed by one 2-D
  transpose to the feature-first edge layout. No gather ever copies single elements (onnxruntime's Gather is slow
  then), no reduction runs over a short innermost axis, and nothing depends on the data's values.
* **Radial MLP.** Edge lengths are symmetric, so the MLPs run (batch-first) on the ``n (n - 1) / 2`` unordered pairs
  only; the outputs of all layers' MLPs are copied to the edges by one Gather of whole rows. For export,
  :func:`tabulate_radial` replaces the MLPs (functions of the edge length alone) by a cubic Hermite table on
  ``[0, max_radius]`` with a measured error (default: at most 1e-6 of their largest value): one row Gather and one
  small MatMul per pair instead of 8 MatMuls and 4 SiLUs.
* **Gate.** Column slices and activations; each gate reaches its gated channels by a one-hot MatMul (exact); the
  activations' normalisation constants are folded into the next layer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import e3nn
import numpy as np
import torch

e3nn.set_optimization_defaults(jit_mode="eager")

from e3nn import o3  # noqa: E402  (after set_optimization_defaults, before any e3nn module is built)
from e3nn.nn.models.gate_points_2101 import Network  # noqa: E402

__all__ = [
    "E3nnConfig",
    "build_reference_network",
    "FixedGraphNetwork",
    "DisplacementModel",
    "load_reference_weights",
    "tabulate_radial",
    "reference_flops_per_frame",
]

_RADIAL_COEFFS = 4  # cubic Hermite pieces: coefficients of 1, f, f**2, f**3 per interval
_TINY = 1e-30  # r2 floor for the edge length: keeps sqrt and 1/r finite (forward and backward) at r == 0


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
    num_neighbors: float = 11.0
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
            "num_nodes": 2,
        }
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"E3nnConfig.{name} must be an integer >= {low}, got {value!r}")
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


# ----------------------------------------------------------------------------------------------------------------
# Constant structure (numpy, built once per module from the e3nn modules' instructions)
# ----------------------------------------------------------------------------------------------------------------


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


def _apply(f, t: torch.Tensor) -> torch.Tensor:
    return t if f is None else f(t)


def _rows_to_edges(rows: torch.Tensor, index: torch.Tensor, n_rows: int, width: int) -> torch.Tensor:
    """Copy whole rows onto the edges, feature-first: ``(n_rows * B, width)`` -> ``(width, len(index) * B)``.

    ``rows`` is row-major over ``(n_rows, B)``; one Gather of whole ``(B * width)`` rows (fast in onnxruntime at
    any B) and one 2-D transpose (made contiguous once, so the per-group slices do not copy again).
    """
    return torch.index_select(rows.reshape(n_rows, -1), 0, index).reshape(-1, width).t().contiguous()


class FixedGraphNetwork(torch.nn.Module):
    """e3nn's ``gate_points_2101.Network`` (``reduce_output=False``) over the fixed complete graph, batched.

    ``self.network`` is an e3nn ``Network`` whose parameters are used (never its forward): ``state_dict()`` has only
    ``network.*`` keys, and with that prefix stripped it loads into :func:`build_reference_network` (and back).
    Internally node tensors are ``(n * B, features)`` and edge tensors ``(features, k, i, B)`` (see the module
    docstring) so every gather, broadcast and reduction works on contiguous blocks and every linear map is one MatMul.

    Shapes: pos ``(B, n, 3)``, node_features ``(B, n, dim(irreps_in))`` (only when ``config.irreps_in`` is set),
    output ``(B, n, dim(irreps_out))``, ``n = config.num_nodes``.
    """

    def __init__(self, config: E3nnConfig) -> None:
        super().__init__()
        self.config = config
        self.network = build_reference_network(config)
        n = config.num_nodes
        src, dst, pair_edge, edge_pair = _fixed_graph(n)
        self.n_nodes, self.n_edges, self.n_pairs = n, len(src), len(pair_edge)
        self._dim_in = o3.Irreps(config.irreps_in).dim if config.irreps_in is not None else 1
        self._dim_out = o3.Irreps(config.irreps_out).dim
        consts = _Consts()
        if not np.array_equal(dst, np.tile(np.arange(n), n - 1)):
            raise AssertionError("edges must be neighbour-major")
        consts.const("src", src)  # rows gathered from node-major tensors (n, ...) -> (k, i, ...)
        consts.const("pair_edge", pair_edge)
        consts.const("edge_pair", edge_pair)
        self.consts = consts

        convs, gates = [], []
        for lay in self.network.layers:
            if hasattr(lay, "first"):
                convs.append(lay.first)
                gates.append(lay.second)
            else:
                convs.append(lay)
                gates.append(None)
        self._convs = convs  # plain list: these are submodules of self.network, not registered twice

        # radial embedding (e3nn soft_one_hot_linspace, gaussian, cutoff=False, times sqrt(number_of_basis))
        nb = config.number_of_basis
        values = np.linspace(0.0, config.max_radius, nb)
        step = values[1] - values[0]
        consts.const("rb_values", values)
        self._rb_inv_step = 1.0 / step
        rb_scale = nb**0.5 / 1.12  # folded into the first radial layer

        # radial MLPs (e3nn FullyConnectedNet): per layer the weight scale and the activation; the activation's
        # normalisation constant and sqrt(var_out) are folded into the next layer's scale
        self._fc_meta = []
        for conv in convs:
            meta = []
            carry = rb_scale
            for k in range(len(conv.fc.hs) - 1):
                lay = getattr(conv.fc, f"layer{k}")
                if lay.act is not None:
                    meta.append((carry / (lay.h_in * lay.var_in) ** 0.5, lay.act.f))
                    carry = (1.0 if lay.act._is_id else lay.act.cst) * lay.var_out**0.5
                else:
                    meta.append((carry / (lay.h_in * lay.var_in / lay.var_out) ** 0.5, None))
            self._fc_meta.append(meta)

        sh_l = [mul_ir.ir.l for mul_ir in o3.Irreps.spherical_harmonics(config.lmax)]
        self._plans = torch.nn.ModuleList()
        self._metas = []
        q_keys: dict[tuple, tuple] = {}  # (l1, combos, S) -> (row offset in the Q matrix, the product's sigma)
        q_rows = 0
        row_scale = np.ones(convs[0].irreps_in.dim)
        for conv, gate in zip(convs, gates):
            plan, meta, row_scale = self._build_plan(conv, gate, row_scale, sh_l)
            for g in meta["groups"]:
                for cl in g["classes"]:
                    key = (g["l1"], cl["combos"], cl["S"])
                    if key not in q_keys:
                        q_keys[key] = (q_rows, cl["sigma"])
                        q_rows += (2 * g["l1"] + 1) * cl["C"] * cl["S"]
                    cl["q_off"] = q_keys[key][0]
            self._plans.append(plan)
            self._metas.append(meta)

        self._n_w_all = sum(m["n_w"] for m in self._metas)  # edge-weight rows of all layers
        # (intervals, 4 * sum n_w) power-basis coefficients of the radial MLPs, set by tabulate_radial on a frozen
        # copy for export; a plain attribute (not a buffer) so that state_dict keeps only e3nn's parameters
        self._radial_table: torch.Tensor | None = None

        # Q: per edge and per product (l1, combos, S) the (C, S, 2 l1 + 1) terms sum_b w3j[a, b, m] Y_l2[b] with
        # m = sigma_c[a][s] (zero where a path has fewer than S terms), times the smooth cutoff: one MatMul of the
        # cutoff-scaled unit-vector monomials (degrees 0..max l2) with a constant matrix
        max_l2 = max((l2 for key in q_keys for l2, _ in key[1]), default=0)
        self._mono_degree = max_l2
        mono_off, n_mono = {0: 0}, 1
        for deg in range(1, max_l2 + 1):
            mono_off[deg] = n_mono
            n_mono += 3**deg
        sh_poly = {deg: _monomial_to_sh(deg) for deg in range(1, max_l2 + 1)}
        q_mat = np.zeros((q_rows, n_mono))
        for (l1, combos, n_t), (off, sigma) in q_keys.items():  # the terms the post matrix expects (same sigma)
            for c, (l2, l3) in enumerate(combos):
                w3j = o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()  # (2l1+1, 2l2+1, 2l3+1)
                poly = np.ones((1, 1)) if l2 == 0 else sh_poly[l2]  # Y_0 = 1
                for a, ms in enumerate(sigma[c]):
                    for s, m in enumerate(ms):
                        row = off + (c * n_t + s) * (2 * l1 + 1) + a
                        q_mat[row, mono_off[l2] : mono_off[l2] + 3**l2] = poly @ w3j[a, :, m]
        consts.const("q_mat", q_mat)

    # ------------------------------------------------------------------------------------------------------------
    def _build_plan(self, conv, gate, row_scale: np.ndarray, sh_l: list[int]):
        """Constant tables of one convolution (+ gate), and the row scale of the next layer's input."""
        irreps_in, irreps_out = conv.irreps_in, conv.irreps_out
        d_in, d_out = irreps_in.dim, irreps_out.dim
        plan = _Consts()

        # gate: rows of the conv output reordered to [scalars | gates | gated] (e3nn's Extract), constants
        if gate is not None:
            cut = gate.sc.cut
            perm = []
            for ins in cut.instructions:
                for i_in in ins:
                    start = cut.irreps_in[:i_in].dim
                    perm.extend(range(start, start + cut.irreps_in[i_in].dim))
            perm = np.array(perm, dtype=np.int64)
            if sorted(perm.tolist()) != list(range(d_out)):
                raise NotImplementedError("unexpected gate layout")
            n_s, n_g, n_gated = gate.irreps_scalars.dim, gate.irreps_gates.dim, gate.irreps_gated.dim
            segs_s, cst_s = _act_segments(gate.act_scalars)
            if n_g:
                segs_g, cst_g = _act_segments(gate.act_gates)
                gidx, gcoef = _elementwise_structure(gate.mul, n_gated, n_g)
                plan.const("gsel", np.eye(n_g)[:, gidx])  # gates -> gated channels as one MatMul (exact)
                next_row_scale = np.concatenate([cst_s, gcoef * cst_g[gidx]])
            else:
                segs_g, next_row_scale = [], cst_s
        else:
            perm = np.arange(d_out)
            n_s = n_g = 0
            segs_s = segs_g = []
            next_row_scale = None

        # e3nn's Convolution output: c_s * sc(x) + c_x' * lin2(agg), c_x' = 1 where sc has no path
        c_s, c_x = math.sin(math.pi / 8), math.cos(math.pi / 8)
        mask = conv.sc.output_mask.detach().double().numpy()
        c_x_col = (1 - mask) + c_x * mask

        # input channels grouped by irrep (l1, p1): lin1's output rows in grouped layout (U, 2 l1 + 1)
        # tp paths (uvu, one sh copy per l2): the (l2, l3) combos of each input irrep
        tp, mid = conv.tp, conv.tp.irreps_out
        ir_combos: dict = {mul_ir.ir: set() for mul_ir in irreps_in}
        for ins in tp.instructions:
            if ins.connection_mode != "uvu" or not ins.has_weight or tp.irreps_in2[ins.i_in2].mul != 1:
                raise NotImplementedError(f"unexpected tp instruction {ins}")
            ir_combos[irreps_in[ins.i_in1].ir].add((sh_l[ins.i_in2], mid[ins.i_out].ir.l))

        # input channels grouped by (l1, combos): irreps of both parities with the same paths share one group
        # (one broadcast product per group); lin1's output rows in grouped layout (U, 2 l1 + 1)
        groups, by_key, uoff = [], {}, {}
        keys = {ir: (ir.l, tuple(sorted(combos))) for ir, combos in ir_combos.items()}
        pos = 0
        for key in sorted(set(keys.values())):
            u = 0
            for i1, mul_ir in enumerate(irreps_in):
                if keys[mul_ir.ir] == key:
                    uoff[i1] = u
                    u += mul_ir.mul
            g = {"l1": key[0], "U": u, "x_start": pos, "combos": key[1]}
            groups.append(g)
            by_key[key] = g
            pos += u * (2 * key[0] + 1)
        gmap = {ir: by_key[key] for ir, key in keys.items()}
        lin1_cols = np.zeros(d_in, dtype=np.int64)
        for i1, (mul_ir, sl) in enumerate(zip(irreps_in, irreps_in.slices())):
            g, d = gmap[mul_ir.ir], mul_ir.ir.dim
            for u in range(mul_ir.mul):
                for a in range(d):
                    lin1_cols[g["x_start"] + (uoff[i1] + u) * d + a] = sl.start + u * d + a
        idx_sc, coef_sc = _fctp_structure(conv.sc)
        idx_l1, coef_l1 = _fctp_structure(conv.lin1)
        n_sc = conv.sc.weight_numel
        # weights vector: [sc.weight, 0, lin1.weight, 0]
        pre_idx = np.concatenate([idx_sc[:, perm], idx_l1[:, lin1_cols] + n_sc + 1], axis=1)
        pre_coef = np.concatenate([coef_sc[:, perm] * c_s, coef_l1[:, lin1_cols]], axis=1) * row_scale[:, None]
        plan.const("pre_idx", pre_idx.T)
        plan.const("pre_coef", pre_coef.T)

        # per group: its products (path classes by number of terms S; see _path_classes)
        groups = [g for g in groups if g["combos"]]
        d_pos = w_pos = 0
        where = {}  # (group key, (l2, l3)) -> (class, index in the class)
        for g in groups:
            dim1 = 2 * g["l1"] + 1
            g["classes"] = []
            for combos, n_t in _path_classes(g["l1"], g["combos"], g["U"]):
                cl = {"combos": combos, "S": n_t, "C": len(combos), "d_start": d_pos, "w_start": w_pos}
                cl["sigma"] = [_path_pattern(g["l1"], *c) for c in combos]
                g["classes"].append(cl)
                for cc, combo in enumerate(combos):
                    where[(g["l1"], g["combos"], combo)] = (cl, cc)
                d_pos += g["U"] * len(combos) * n_t * dim1
                w_pos += g["U"] * len(combos)
        n_d, n_w = d_pos, w_pos

        # per path: radial weight column, and (D row -> tp output index, path weight); D rows per class are
        # (u, c, s, a) with m = sigma_c[a][s] (padding rows stay -1: zero in the post matrix)
        wn = tp.weight_numel
        w_cols = np.full(n_w, wn, dtype=np.int64)  # wn -> an appended zero column
        w_xrow = np.zeros(n_w, dtype=np.int64)  # the input row (component a = 0) of each weight's channel
        d_mid = np.full(n_d, -1)
        d_pw = np.zeros(n_d)
        mid_slices = mid.slices()
        w_off = 0
        for ins in tp.instructions:
            mul_ir = irreps_in[ins.i_in1]
            l2, l3 = sh_l[ins.i_in2], mid[ins.i_out].ir.l
            g = gmap[mul_ir.ir]
            cl, cc = where[(g["l1"], g["combos"], (l2, l3))]
            dim1 = 2 * g["l1"] + 1
            for u in range(mul_ir.mul):
                ug = uoff[ins.i_in1] + u
                w_cols[cl["w_start"] + ug * cl["C"] + cc] = w_off + u
                w_xrow[cl["w_start"] + ug * cl["C"] + cc] = g["x_start"] + ug * dim1
                for a, ms in enumerate(cl["sigma"][cc]):
                    for s, m in enumerate(ms):
                        dd = cl["d_start"] + ((ug * cl["C"] + cc) * cl["S"] + s) * dim1 + a
                        d_mid[dd] = mid_slices[ins.i_out].start + u * (2 * l3 + 1) + m
                        d_pw[dd] = ins.path_weight
            w_off += math.prod(ins.path_shape)
        if w_off != wn:
            raise NotImplementedError("tp weight layout mismatch")
        plan.const("w_cols", w_cols)
        plan.const("w_xrow", w_xrow)

        # post: lin2 after the neighbour sum, with path weights, 1/sqrt(num_neighbors) and the output mixing
        idx_l2, coef_l2 = _fctp_structure(conv.lin2)
        valid = d_mid >= 0
        post_idx = np.full((n_d, d_out), conv.lin2.weight_numel, dtype=np.int64)
        post_coef = np.zeros((n_d, d_out))
        post_idx[valid] = idx_l2[d_mid[valid]]
        post_coef[valid] = coef_l2[d_mid[valid]] * d_pw[valid, None]
        post_coef *= c_x_col[None, :] / self.config.num_neighbors**0.5
        plan.const("post_idx", post_idx[:, perm].T)
        plan.const("post_coef", post_coef[:, perm].T)

        meta = {
            "d_in": d_in,
            "d_out": d_out,
            "n_w": n_w,
            "groups": groups,
            "gate": gate is not None,
            "n_s": n_s,
            "n_g": n_g,
            "segs_s": segs_s,
            "segs_g": segs_g,
        }
        return plan, meta, next_row_scale

    def _pre_matrices(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """Per layer the self-connection and lin1 as one matrix ``(d_in, d_out + d_in)``; weights only."""
        pres = []
        for conv, plan in zip(self._convs, self._plans):
            zero = conv.sc.weight.new_zeros(1)
            wpre = torch.cat([conv.sc.weight, zero, conv.lin1.weight, zero])
            pre = torch.index_select(wpre, 0, plan.pre_idx.reshape(-1)).reshape(plan.pre_idx.shape)
            pres.append((pre * plan.pre_coef.to(dtype)).t())
        return pres

    def _radial_mlp(self, r: torch.Tensor, pres: list[torch.Tensor]) -> torch.Tensor:
        """The radial MLPs of all layers (batch-first) with their last layers' columns in the weight-row order.

        ``pres``: :meth:`_pre_matrices`; without node features layer 0's lin1 output for the constant node input
        (its first row's lin1 part) is folded into layer 0's last radial layer.
        Shapes: r ``(M,)`` -> ``(M, sum n_w)``.
        """
        c = self.consts
        x0 = pres[0][0, self._metas[0]["d_out"] :] if self.config.irreps_in is None else None  # (d_in,)
        diff = (r[:, None] - c.rb_values.to(r.dtype)) * self._rb_inv_step
        emb = torch.exp(-(diff * diff))  # (M, number_of_basis)
        outs = []
        for conv, plan, fc_meta in zip(self._convs, self._plans, self._fc_meta):
            h = emb
            last = len(fc_meta) - 1
            for k in range(len(fc_meta)):
                scale, act = fc_meta[k]
                weight = getattr(conv.fc, f"layer{k}").weight
                if k == last:
                    weight = torch.cat([weight, weight.new_zeros(weight.shape[0], 1)], dim=1)
                    weight = torch.index_select(weight, 1, plan.w_cols)
                    if x0 is not None and not outs:
                        weight = weight * torch.index_select(x0, 0, plan.w_xrow)
                h = h @ (weight * scale)
                if act is not None:
                    h = act(h)
            outs.append(h)
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]

    def _radial_from_table(self, r: torch.Tensor) -> torch.Tensor:
        """:meth:`_radial_mlp` from the cubic table: interval ``i = floor(r / h)``, ``f = r / h - i``,
        ``sum_j f**j c_j[i]``. ``r`` is clamped to ``[0, max_radius]`` (beyond it the smooth cutoff zeroes the edge)
        and the index to ``[0, intervals - 1]``, so no value of ``r`` (NaN included) can index outside the table.

        Shapes: r ``(M,)`` -> ``(M, sum n_w)``.
        """
        table = self._radial_table
        n_int = table.shape[0]
        t = torch.clamp(r * (n_int / self.config.max_radius), min=0.0, max=float(n_int))
        i = torch.clamp(t.to(torch.int64), min=0, max=n_int - 1)
        f = t - i.to(r.dtype)
        powers = f[:, None] ** torch.arange(_RADIAL_COEFFS, dtype=r.dtype)  # (M, 4)
        coef = torch.index_select(table.to(r.dtype), 0, i).reshape(-1, _RADIAL_COEFFS, self._n_w_all)
        return (powers[:, None, :] @ coef).reshape(-1, self._n_w_all)  # (M, 1, 4) @ (M, 4, W)

    # ------------------------------------------------------------------------------------------------------------
    def forward(self, pos: torch.Tensor, node_features: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluate e3nn's Network on a batch of frames.

        Shapes: pos ``(B, n, 3)``; node_features ``(B, n, dim(irreps_in))`` iff ``config.irreps_in`` is set;
        returns ``(B, n, dim(irreps_out))``.
        """
        c = self.consts
        dtype = pos.dtype
        n, n_edges = self.n_nodes, self.n_edges
        pos_n = pos.transpose(0, 1)  # (n, B, 3): node-major rows
        pres = self._pre_matrices(dtype)
        # without node features the first layer's input is the constant 1 on every node: its sc and lin1
        # outputs are one constant row, and lin1's (scalars, one per channel) is folded into the radial weights
        const_input = self.config.irreps_in is None
        if const_input:
            if node_features is not None:
                raise ValueError("this network takes no node_features (config.irreps_in is None)")
            x = None
        else:
            if node_features is None:
                raise ValueError(f"node_features of irreps {self.config.irreps_in!r} are required")
            x = node_features.transpose(0, 1).reshape(-1, self._dim_in)

        # ---- geometry: edge vectors src - dst, rows (k, i, B), then feature-first (3, E * B); lengths,
        # smooth cutoff * (r > 0), unit-vector monomials
        vec = (torch.index_select(pos_n, 0, c.src).reshape(n - 1, n, -1, 3) - pos_n).reshape(-1, 3).t()
        r2 = (vec * vec).sum(0, keepdim=True)  # (1, E * B)
        r = torch.sqrt(torch.clamp(r2, min=_TINY))
        unit = vec / r
        u = torch.clamp(r * (2.0 / self.config.max_radius) - 2.0, min=-1.0, max=0.0)
        attr_scale = (1.0 - torch.cos(math.pi * u)) * 0.5 * (r2 > 0).to(dtype)  # (1, E * B)
        monos = [attr_scale]
        if self._mono_degree:
            cur = unit * attr_scale
            monos.append(cur)
            for deg in range(2, self._mono_degree + 1):
                cur = (cur[:, None] * unit[None, :]).reshape(3**deg, -1)
                monos.append(cur)
        mono = torch.cat(monos, dim=0) if len(monos) > 1 else monos[0]  # (n_mono, E * B)
        q = c.q_mat.to(dtype) @ mono  # (rows, E * B)

        # ---- radial MLPs of all layers on the unordered pairs, rows (P, B) -> (P * B, sum n_w), or their cubic
        # table (see tabulate_radial); copied to the edges as whole rows (one Gather), then feature-first
        rp = torch.index_select(r.reshape(n_edges, -1), 0, c.pair_edge).reshape(-1)  # (P * B,)
        if self._radial_table is not None:
            h = self._radial_from_table(rp)
        else:
            h = self._radial_mlp(rp, pres)
        w_all = _rows_to_edges(h, c.edge_pair, self.n_pairs, self._n_w_all)
        w_row = 0

        for layer, (conv, plan, meta, pre) in enumerate(zip(self._convs, self._plans, self._metas, pres)):
            d_out, n_w = meta["d_out"], meta["n_w"]
            w_base = w_row
            w_row += n_w

            # self-connection and lin1 in one MatMul: (n * B, d_out + d_in); lin1's part copied to the edges
            if const_input and layer == 0:
                s, xs = pre[:, :d_out], None  # (1, d_out): the same row for every node
            else:
                t = x @ pre
                s = t[:, :d_out]
                xs = _rows_to_edges(t[:, d_out:], c.src, n, meta["d_in"])  # (d_in, E * B)

            # tensor product per product class: the terms w[u, c] x[u, a] Q[c, s, a] summed over the neighbours k
            # (outside (n, B): the sum adds whole contiguous rows); the sum over a is folded into the post matrix
            aggs = []
            for g in meta["groups"]:
                n_u, dim1 = g["U"], 2 * g["l1"] + 1
                if xs is not None:
                    xg = xs[g["x_start"] : g["x_start"] + n_u * dim1].reshape(n_u, 1, 1, dim1, n - 1, -1)
                for cl in g["classes"]:
                    n_c, n_t = cl["C"], cl["S"]
                    w0 = w_base + cl["w_start"]  # sliced from w_all directly: one Split in onnxruntime
                    wg = w_all[w0 : w0 + n_u * n_c].reshape(n_u, n_c, 1, 1, n - 1, -1)
                    qg = q[cl["q_off"] : cl["q_off"] + n_c * n_t * dim1].reshape(n_c, n_t, dim1, n - 1, -1)
                    p = (wg if xs is None else xg * wg) * qg  # (U, C, S, dim1, n - 1, n * B)
                    aggs.append(p.reshape(n_u * n_c * n_t * dim1, n - 1, -1).sum(1))
            if aggs:  # (a layer can have no path at all, e.g. lmax=0 with vector inputs only)
                agg = torch.cat(aggs, dim=0) if len(aggs) > 1 else aggs[0]  # (D, n * B)
                wpost = torch.cat([conv.lin2.weight, conv.lin2.weight.new_zeros(1)])
                post = torch.index_select(wpost, 0, plan.post_idx.reshape(-1)).reshape(plan.post_idx.shape)
                y = s + agg.t() @ (post * plan.post_coef.to(dtype)).t()  # (n * B, d_out)
            else:
                y = s if xs is not None else s.expand(n * pos.shape[0], -1)

            if meta["gate"]:
                n_s, n_g = meta["n_s"], meta["n_g"]
                parts = [_apply(f, y[:, a:b]) for a, b, f in meta["segs_s"]]
                if n_g:
                    gates = [_apply(f, y[:, n_s + a : n_s + b]) for a, b, f in meta["segs_g"]]
                    gates = torch.cat(gates, dim=1) if len(gates) > 1 else gates[0]
                    parts.append(y[:, n_s + n_g :] * (gates @ plan.gsel.to(dtype)))
                x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
            else:
                x = y
        return x.reshape(n, -1, self._dim_out).transpose(0, 1)


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


def load_reference_weights(fixed: FixedGraphNetwork) -> Network:
    """A fresh e3nn ``Network`` (same config) holding ``fixed``'s weights, for parity checks."""
    net = build_reference_network(fixed.config)
    net.load_state_dict(fixed.network.state_dict())
    return net.to(next(fixed.network.parameters()).dtype)


def tabulate_radial(
    model: torch.nn.Module, rtol: float = 1e-6, min_intervals: int = 64, max_intervals: int = 1024
) -> tuple[torch.nn.Module | None, dict]:
    """A frozen copy of ``model`` whose radial MLPs are replaced by a cubic Hermite table (for export).

    The radial MLPs are functions of the edge length alone, so on ``[0, max_radius]`` each output column is
    tabulated at ``intervals + 1`` equally spaced lengths with its exact derivative (forward-mode autodiff, float64)
    and evaluated as one cubic per interval: one row Gather and one small MatMul per pair instead of the MLPs'
    MatMuls and SiLUs. Equivariance is untouched (the edge length is invariant). ``intervals`` doubles from
    ``min_intervals`` until the largest error, measured in float64 at 8 points inside every interval, is at most
    ``rtol`` times the largest output value (about float32's own rounding for ``rtol = 1e-6``).

    Args:
        model: a :class:`FixedGraphNetwork` or a module with one as ``.net`` (:class:`DisplacementModel`).
        rtol: relative error allowed, against the largest absolute MLP output on ``[0, max_radius]``.

    Returns:
        ``(copy, info)``; ``copy`` is None when no table up to ``max_intervals`` meets ``rtol`` (``info`` says why).
        ``info``: ``form`` (``"table"``/``"mlp"``), ``intervals``, ``max_abs_error``, ``max_abs_value``, ``rtol``.
    """
    import copy as _copy

    if not (isinstance(rtol, float | int) and not isinstance(rtol, bool) and 0 < rtol < 1):
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    net = model if isinstance(model, FixedGraphNetwork) else getattr(model, "net", None)
    if not isinstance(net, FixedGraphNetwork):
        raise ValueError(f"tabulate_radial needs a FixedGraphNetwork or a model with one as .net, got {type(model)}")
    r_max = net.config.max_radius
    net64 = _copy.deepcopy(net).double()
    net64._radial_table = None
    with torch.no_grad():
        pres = net64._pre_matrices(torch.float64)

        def mlp(r: torch.Tensor) -> torch.Tensor:
            return net64._radial_mlp(r, pres)

        info: dict = {"form": "mlp", "rtol": float(rtol)}
        n_int = min_intervals
        while n_int <= max_intervals:
            grid = torch.linspace(0.0, r_max, n_int + 1, dtype=torch.float64)
            value, slope = torch.func.jvp(mlp, (grid,), (torch.ones_like(grid),))
            slope = slope * (r_max / n_int)  # d value / d f, f in [0, 1) across one interval
            v0, v1, d0, d1 = value[:-1], value[1:], slope[:-1], slope[1:]
            coef = torch.stack([v0, d0, 3 * (v1 - v0) - 2 * d0 - d1, 2 * (v0 - v1) + d0 + d1], dim=1)
            net64._radial_table = coef.reshape(n_int, -1)
            inner = (torch.arange(n_int, dtype=torch.float64)[:, None] + torch.arange(1, 9) / 9.0).reshape(-1)
            probe = inner * (r_max / n_int)
            err = float((net64._radial_from_table(probe) - mlp(probe)).abs().max())
            net64._radial_table = None
            scale = float(value.abs().max())
            info.update(intervals=n_int, max_abs_error=err, max_abs_value=scale)
            if err <= rtol * max(scale, 1e-30):
                break
            n_int *= 2
        else:
            info["why"] = f"no table up to {max_intervals} intervals reached rtol {rtol:g}"
            return None, info
    tabulated = _copy.deepcopy(model).eval()
    for p in tabulated.parameters():
        p.requires_grad_(False)  # the table is a snapshot of these weights: the copy is not for training
    target = tabulated if isinstance(tabulated, FixedGraphNetwork) else tabulated.net
    target._radial_table = coef.reshape(n_int, -1).to(next(net.parameters()).dtype)
    info["form"] = "table"
    return tabulated, info


def reference_flops_per_frame(config: E3nnConfig) -> float:
    """FLOPs torch's FlopCounterMode counts for e3nn's own ``Network`` on one frame whose ``n (n - 1)`` ordered
    pairs are all edges (the work the Performance issue measures a roofline by; it depends on the configuration
    and the number of edges only, not on the weights or the positions)."""
    from torch.utils.flop_counter import FlopCounterMode

    n = config.num_nodes
    t = torch.arange(n, dtype=torch.float64)
    pos = torch.stack([torch.cos(t), torch.sin(t), 0.3 * t], dim=1)  # a helix: no coincident beads
    pos = (pos - pos.mean(0)) * (0.8 * config.max_radius / float(torch.cdist(pos, pos).max()))
    data = {"pos": pos.to(torch.get_default_dtype())}
    if config.irreps_in is not None:
        data["x"] = torch.ones(n, o3.Irreps(config.irreps_in).dim)
    net = build_reference_network(config)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(data)
    return float(counter.get_total_flops())
