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
  ``[0, max_radius]`` with a measured error (default: at most 1e-6 of their largest value), evaluated by Horner's
  rule (``_plan._cubic_lookup``: four row Gathers, three Muls and Adds per pair) instead of 8 MatMuls and 4 SiLUs.
* **Gate.** Column slices and activations; each gate reaches its gated channels by a one-hot MatMul (exact); the
  activations' normalisation constants are folded into the next layer.
"""

from __future__ import annotations

import numpy as np
import torch

from ._config import E3nnConfig, build_reference_network, o3
from ._layer_plan import build_layer_plan
from ._plan import (
    _apply,
    _Consts,
    _cubic_lookup,
    _edge_monomials,
    _fixed_graph,
    _monomial_to_sh,
    _node_input,
    _rows_to_edges,
)

__all__ = ["FixedGraphNetwork"]


_RADIAL_COEFFS = 4  # cubic Hermite pieces: coefficients of 1, f, f**2, f**3 per interval


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
            plan, meta, row_scale = build_layer_plan(conv, gate, row_scale, sh_l, config.num_neighbors)
            for g in meta.groups:
                for cl in g.classes:
                    key = (g.l1, cl.combos, cl.S)
                    if key not in q_keys:
                        q_keys[key] = (q_rows, cl.sigma)
                        q_rows += (2 * g.l1 + 1) * cl.C * cl.S
                    cl.q_off = q_keys[key][0]
            self._plans.append(plan)
            self._metas.append(meta)

        self._n_w_all = sum(m.n_w for m in self._metas)  # edge-weight rows of all layers
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
        x0 = pres[0][0, self._metas[0].d_out :] if self.config.irreps_in is None else None  # (d_in,)
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
        """:meth:`_radial_mlp` from the cubic table (``_cubic_lookup``). Shapes: r ``(M,)`` -> ``(M, sum n_w)``."""
        table = self._radial_table.to(r.dtype)
        return _cubic_lookup(table.reshape(table.shape[0], _RADIAL_COEFFS, -1).unbind(1), r, self.config.max_radius)

    def _neighbour_sum(self, p: torch.Tensor) -> torch.Tensor:
        """The sum over the neighbours ``k`` of edge products. Shapes: ``(rows, n - 1, n * B)`` -> ``(rows, n * B)``.

        One method so that a benchmark can swap the operation (``benchmarks/e3nn_forms.py``); training and export
        use this one."""
        return p.sum(1)

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
        const_input = _node_input(self.config, node_features) is None
        x = None if const_input else node_features.transpose(0, 1).reshape(-1, self._dim_in)

        # ---- geometry: edge vectors src - dst, rows (k, i, B), then feature-first (3, E * B); lengths,
        # smooth cutoff * (r > 0), unit-vector monomials
        vec = (torch.index_select(pos_n, 0, c.src).reshape(n - 1, n, -1, 3) - pos_n).reshape(-1, 3).t()
        r, mono = _edge_monomials(vec, self.config.max_radius, self._mono_degree)
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
            d_out, n_w = meta.d_out, meta.n_w
            w_base = w_row
            w_row += n_w

            # self-connection and lin1 in one MatMul: (n * B, d_out + d_in); lin1's part copied to the edges
            if const_input and layer == 0:
                s, xs = pre[:, :d_out], None  # (1, d_out): the same row for every node
            else:
                t = x @ pre
                s = t[:, :d_out]
                xs = _rows_to_edges(t[:, d_out:], c.src, n, meta.d_in)  # (d_in, E * B)

            # tensor product per product class: the terms w[u, c] x[u, a] Q[c, s, a] summed over the neighbours k
            # (outside (n, B): the sum adds whole contiguous rows); the sum over a is folded into the post matrix
            aggs = []
            for g in meta.groups:
                n_u, dim1 = g.U, 2 * g.l1 + 1
                if xs is not None:
                    xg = xs[g.x_start : g.x_start + n_u * dim1].reshape(n_u, 1, 1, dim1, n - 1, -1)
                for cl in g.classes:
                    n_c, n_t = cl.C, cl.S
                    w0 = w_base + cl.w_start  # sliced from w_all directly: one Split in onnxruntime
                    wg = w_all[w0 : w0 + n_u * n_c].reshape(n_u, n_c, 1, 1, n - 1, -1)
                    qg = q[cl.q_off : cl.q_off + n_c * n_t * dim1].reshape(n_c, n_t, dim1, n - 1, -1)
                    p = (wg if xs is None else xg * wg) * qg  # (U, C, S, dim1, n - 1, n * B)
                    aggs.append(self._neighbour_sum(p.reshape(n_u * n_c * n_t * dim1, n - 1, -1)))
            if aggs:  # (a layer can have no path at all, e.g. lmax=0 with vector inputs only)
                agg = torch.cat(aggs, dim=0) if len(aggs) > 1 else aggs[0]  # (D, n * B)
                wpost = torch.cat([conv.lin2.weight, conv.lin2.weight.new_zeros(1)])
                post = torch.index_select(wpost, 0, plan.post_idx.reshape(-1)).reshape(plan.post_idx.shape)
                y = s + agg.t() @ (post * plan.post_coef.to(dtype)).t()  # (n * B, d_out)
            else:
                y = s if xs is not None else s.expand(n * pos.shape[0], -1)

            if meta.gate:
                n_s, n_g = meta.n_s, meta.n_g
                parts = [_apply(f, y[:, a:b]) for a, b, f in meta.segs_s]
                if n_g:
                    gates = [_apply(f, y[:, n_s + a : n_s + b]) for a, b, f in meta.segs_g]
                    gates = torch.cat(gates, dim=1) if len(gates) > 1 else gates[0]
                    parts.append(y[:, n_s + n_g :] * (gates @ plan.gsel.to(dtype)))
                x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
            else:
                x = y
        return x.reshape(n, -1, self._dim_out).transpose(0, 1)
