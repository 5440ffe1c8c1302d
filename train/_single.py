"""The single-frame graph: :class:`~e3traj.train._network.FixedGraphNetwork` for batch 1, in few operations.

A rollout from one start runs the network on one frame per step, where onnxruntime's cost is per operation, not
per float (about 1 µs per node on the AMD host of issue 21, 0.2 µs on the Intel one). The batched graph's
per-product-class broadcasts and neighbour ReduceSums are the right form for many frames and the wrong one for
one. This form computes the same function for a single frame with every tensor feature-major ``(features, E)``:

* every term ``w[u, c] x[u, a] Q[c, s, a]`` of a layer is one row of a ``(D, E)`` product (all classes at once;
  padding terms, zero in lin2's matrix, left out); the radial weights, ``Q`` and the input channels reach those
  rows by row Gathers: lin1 (one MatMul with the self-connection) and one MatMul onto the edges run on the
  ``d_in`` input rows, not on the ``D`` term rows;
* each layer's neighbour sum is one MatMul against the constant ``(E, n)`` destination matrix, before lin2's
  matrix or after it where that takes fewer multiply-adds (the output layer); the gate is a Sigmoid, a MatMul that
  routes each gate to its channels, and a Tanh of the odd scalars (the gated rows are ordered after the scalars,
  the gates last).

Edges are ordered ``[each pair's edge | its reverse]``: the geometry, the monomials and the radial table run on
the ``n (n - 1) / 2`` pairs, and the reverses' monomials are the pairs' times ``(-1)**degree``. All one-hot
MatMuls are exact for finite inputs. Shapes are static (batch 1): export writes it as a second ONNX
file of the bundle, which hosts use for single-start rollouts only (see ``e3traj.runtime``), so every row of a
batched run, shards included, still goes through the batched graph.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ._network import _RADIAL_COEFFS, FixedGraphNetwork
from ._plan import _cubic_lookup, _edge_monomials, _node_input

__all__ = ["SingleFrameGraph", "scaled_form"]


def _terms(meta, w_row: int) -> tuple[list[int], list[int], list[int]]:
    """Per term row ``d`` of a layer (the post matrix's order): its radial weight, input and ``Q`` rows."""
    widx, xidx, qidx = [], [], []
    for g in meta.groups:
        dim1 = 2 * g.l1 + 1
        for cl in g.classes:
            for u in range(g.U):
                for c in range(cl.C):
                    for s in range(cl.S):
                        for a in range(dim1):
                            widx.append(w_row + cl.w_start + u * cl.C + c)
                            xidx.append(g.x_start + u * dim1 + a)
                            qidx.append(cl.q_off + (c * cl.S + s) * dim1 + a)
    return widx, xidx, qidx


def _gate_tables(meta, gsel: np.ndarray) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Row order ``[scalars | gated | gates]``, the ``(kept, d_out)`` routing of Sigmoid outputs to the kept rows
    (a scalar's own sigmoid for SiLU, its gate for a gated row) and the ``(kept, 1)`` mask of the Tanh rows."""
    n_s, n_g, d_out = meta.n_s, meta.n_g, meta.d_out
    order = list(range(n_s)) + list(range(n_s + n_g, d_out)) + list(range(n_s, n_s + n_g))
    kept = d_out - n_g
    route, tanh_rows = np.zeros((kept, d_out)), np.zeros((kept, 1))
    for a, b, f in meta.segs_s:
        for j in range(a, b):
            if f is torch.nn.functional.silu:
                route[j, j] = 1.0
            elif f is torch.tanh:
                tanh_rows[j] = 1.0
            else:
                raise NotImplementedError(f"scalar activation {f!r} has no single-frame form")
    for _a, _b, f in meta.segs_g:
        if f is not torch.sigmoid:
            raise NotImplementedError(f"gate activation {f!r} has no single-frame form")
    if n_g:
        route[n_s:, kept:] = gsel.T  # gsel (n_g, n_gated): gate -> gated channel (one-hot, e3nn's coefficients)
    return order, route, tanh_rows


class SingleFrameGraph(torch.nn.Module):
    """A frozen single-frame form of a :class:`FixedGraphNetwork` that holds its radial table.

    Shapes: pos ``(1, n, 3)``; node_features ``(1, n, dim(irreps_in))`` iff ``config.irreps_in`` is set; returns
    ``(1, n, dim(irreps_out))``.
    """

    def __init__(self, net: FixedGraphNetwork) -> None:
        super().__init__()
        if not isinstance(net, FixedGraphNetwork):
            raise ValueError(f"SingleFrameGraph needs a FixedGraphNetwork, got {type(net).__name__}")
        if net._radial_table is None:
            raise ValueError("SingleFrameGraph needs the radial table: pass tabulate_radial's copy")
        dtype = next(net.parameters()).dtype
        self.config = net.config
        n = self.n = net.n_nodes
        c = net.consts
        src, pair_edge = c.src.numpy(), c.pair_edge.numpy()
        n_edges = len(src)
        dst = np.tile(np.arange(n), n - 1)
        self._const_input = net.config.irreps_in is None
        self._dim_out = net._dim_out
        self._degree = net._mono_degree
        # edges ordered [each unordered pair's edge a -> b | its reverse b -> a]: the geometry and the radial
        # weights are computed on the pairs only, and a monomial of degree l on the reverse is (-1)**l times its value
        n_pairs = len(pair_edge)
        pairs = np.arange(n_pairs)
        a, b = src[pair_edge], dst[pair_edge]
        diff = np.zeros((n, n_pairs))  # pos (3, n) @ diff = a - b per pair (source - destination)
        diff[a, pairs] += 1.0
        diff[b, pairs] -= 1.0
        e_src, e_dst = np.concatenate([a, b]), np.concatenate([b, a])
        edges = np.arange(n_edges)
        onto = np.zeros((n, n_edges))  # node rows (D, n) @ onto = the source's row on each edge
        onto[e_src, edges] = 1.0
        gather = np.zeros((n_edges, n))  # (D, E) @ gather = the sum over each destination's neighbours
        gather[edges, e_dst] = 1.0
        degree = np.concatenate([np.full(3**k, k) for k in range(net._mono_degree + 1)])

        def const(name: str, value) -> None:
            t = torch.as_tensor(np.ascontiguousarray(value))
            self.register_buffer(name, t.to(dtype) if t.is_floating_point() else t, persistent=False)

        const("diff", diff)
        const("onto", onto)
        const("gather", gather)
        const("mono_sign", (-1.0) ** degree[:, None])  # (monomials, 1): their values on the reversed edges

        net64 = copy.deepcopy(net).double()
        with torch.no_grad():
            pres = [p.numpy() for p in net64._pre_matrices(torch.float64)]  # (d_in, d_out + d_in) per layer
        terms = []
        self._layers = []
        w_row = 0
        for layer, (conv, plan, meta, pre) in enumerate(zip(net64._convs, net64._plans, net64._metas, pres)):
            d_out = meta.d_out
            widx, xidx, qidx = _terms(meta, w_row)
            wpost = torch.cat([conv.lin2.weight, conv.lin2.weight.new_zeros(1)])
            post = torch.index_select(wpost, 0, plan.post_idx.reshape(-1)).reshape(plan.post_idx.shape)
            post = (post * plan.post_coef).detach().numpy()  # (d_out, D)
            s_rows = pre[:, :d_out].T  # (d_out, d_in)
            # terms whose column of lin2's matrix is zero add nothing (padding: a path with fewer than S terms)
            live = np.flatnonzero(np.abs(post).sum(0) > 0)
            if not len(live):
                raise NotImplementedError(f"layer {layer} has no term with a weight; no single-frame form")
            post = post[:, live]
            widx, xidx, qidx = ([v[j] for j in live] for v in (widx, xidx, qidx))
            n_d = len(widx)
            # the neighbour sum before lin2 ((D, E) @ (E, n), then (d_out, D) @), or after where fewer MACs
            late = d_out * n_d * n_edges + d_out * n_edges * n < n_d * n_edges * n + d_out * n_d * n
            spec = {"d_out": d_out, "D": n_d, "gate": meta.gate, "kept": d_out, "late": late}
            order = list(range(d_out))
            if meta.gate:
                order, route, tanh_rows = _gate_tables(meta, plan.gsel.numpy() if meta.n_g else np.zeros((0, 0)))
                const(f"route{layer}", route)
                const(f"tanh{layer}", tanh_rows)
                spec["kept"] = route.shape[0]
            const(f"post{layer}", post[order])
            if self._const_input and layer == 0:
                const(f"s{layer}", pre[0, :d_out][order][:, None])  # the constant node input's sc output
            else:
                # sc and lin1 (d_out + d_in, d_in); lin1's rows go onto the edges before they are copied to the terms
                const(f"pre{layer}", np.concatenate([s_rows[order], pre[:, d_out:].T]))
                const(f"x_rows{layer}", np.asarray(xidx, dtype=np.int64))
            self._layers.append(spec)
            terms.append((widx, qidx))
            w_row += meta.n_w
        table = net._radial_table.detach().double().reshape(len(net._radial_table), _RADIAL_COEFFS, -1)
        for j in range(_RADIAL_COEFFS):
            const(f"table{j}", table[:, j])
        const("q_mat", c.q_mat.numpy())  # (Q rows, monomials)
        for layer, (widx, qidx) in enumerate(terms):
            const(f"w_rows{layer}", np.asarray(widx, dtype=np.int64))
            const(f"q_rows{layer}", np.asarray(qidx, dtype=np.int64))

    def forward(self, pos: torch.Tensor, node_features: torch.Tensor | None = None) -> torch.Tensor:
        """Shapes: pos ``(1, n, 3)``, node_features ``(1, n, dim(irreps_in))`` -> ``(1, n, dim(irreps_out))``."""
        n = self.n
        if pos.shape[0] != 1:
            raise ValueError(f"SingleFrameGraph takes one frame, got a batch of {pos.shape[0]}")
        x = _node_input(self.config, node_features)
        x = None if x is None else x.reshape(n, -1).t()  # (d_in, n)

        # geometry of the pairs (3, P) and e3nn's edge attributes, feature-first as in the batched graph; the
        # reversed edges' monomials by their parity
        r, mono = _edge_monomials(pos.reshape(n, 3).t() @ self.diff, self.config.max_radius, self._degree)
        q = self.q_mat @ torch.cat([mono, mono * self.mono_sign], dim=1)  # (Q rows, E)

        # radial weights on the pairs (the cubic table), feature-first, the same on both directions
        coefs = [getattr(self, f"table{j}") for j in range(_RADIAL_COEFFS)]
        w = _cubic_lookup(coefs, r.reshape(-1), self.config.max_radius).t()  # (W, P)
        w = torch.cat([w, w], dim=1)  # (W, E): both directions

        for layer, spec in enumerate(self._layers):
            d_out = spec["d_out"]
            # (D, E): the radial weight times Q of every term, rows gathered whole
            wq = torch.index_select(w, 0, getattr(self, f"w_rows{layer}"))
            wq = wq * torch.index_select(q, 0, getattr(self, f"q_rows{layer}"))
            if x is None:
                s, prod = getattr(self, f"s{layer}"), wq
            else:
                both = getattr(self, f"pre{layer}") @ x  # (d_out + d_in, n)
                xo = torch.index_select(both[d_out:] @ self.onto, 0, getattr(self, f"x_rows{layer}"))  # (D, E)
                s, prod = both[:d_out], xo * wq
            post = getattr(self, f"post{layer}")
            y = s + ((post @ prod) @ self.gather if spec["late"] else post @ (prod @ self.gather))  # (d_out, n)
            if spec["gate"]:
                kept = y[: spec["kept"]]
                x = kept * (getattr(self, f"route{layer}") @ torch.sigmoid(y))
                x = x + torch.tanh(kept * getattr(self, f"tanh{layer}"))
            else:
                x = y
        return x.t().reshape(1, n, self._dim_out)


class _Scaled(torch.nn.Module):
    """``graph(pos[, features / input_scale]) * scale``: a model's single-frame form. Shapes: ``(1, n, 3)``."""

    def __init__(self, graph: SingleFrameGraph, scale: torch.Tensor, input_scale: torch.Tensor | None) -> None:
        super().__init__()
        self.graph = graph
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("input_scale", None if input_scale is None else input_scale.detach().clone())

    def forward(self, pos: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if self.input_scale is None:
            return self.graph(pos) * self.scale
        return self.graph(pos, features / self.input_scale) * self.scale


def scaled_form(graph: SingleFrameGraph, scale: torch.Tensor, input_scale: torch.Tensor | None = None):
    """The single-frame form of a model that scales the network's output (and its node features' input).

    Shapes: pos ``(1, n, 3)`` (and the features ``(1, n, 3)`` with ``input_scale``) -> ``(1, n, 3)``."""
    return _Scaled(graph, scale, input_scale)
