"""The single-frame graph: :class:`~e3traj.train._network.FixedGraphNetwork` for batch 1, in few operations.

A rollout from one start runs the network on one frame per step, where onnxruntime's cost is per operation, not
per float (about 1 µs per node on the AMD host of issue 21, 0.2 µs on the Intel one). The batched graph's
per-product-class broadcasts and neighbour ReduceSums are the right form for many frames and the wrong one for
one. This form computes the same function for a single frame with every tensor feature-major ``(features, E)``:

* every term ``w[u, c] x[u, a] Q[c, s, a]`` of a layer is one row of a ``(D, E)`` product (all classes at once;
  padding terms, zero in lin2's matrix, left out); the radial weights times ``Q`` of all layers' terms are one
  product of two row Gathers, split per layer, and the input channels reach the terms by a row Gather: lin1 (one
  MatMul with the self-connection) and one MatMul onto the edges run on the ``d_in`` input rows, not on the
  ``D`` term rows;
* each layer's neighbour sum is one MatMul against the constant ``(E, n)`` destination matrix, before lin2's
  matrix or after it where that takes fewer multiply-adds (the output layer); the gate is a Sigmoid, a MatMul that
  routes each scalar's own sigmoid or each gate to its channels and a Mul, on the conv output's rows (the gates'
  rows come out zero and the next layer's matrix skips them); the odd scalars' Tanh, where a layer has any, is
  read by the next layer's matrix through a Gemm of its own;
* a model's scalar output and input scales are folded into the last and first layers' matrices.

Edges are ordered ``[each pair's edge | its reverse]``: the geometry, the monomials and the radial table run on
the ``n (n - 1) / 2`` pairs, and the reverses' monomials are the pairs' times ``(-1)**degree``. All one-hot
MatMuls are exact for finite inputs. Shapes are static (batch 1): export writes it as a second ONNX
file of the bundle, which hosts use for single-start rollouts only (see ``e3traj.runtime``), so every row of a
batched run, shards included, still goes through the batched graph.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from ._network import _RADIAL_COEFFS, FixedGraphNetwork
from ._plan import _cubic_lookup, _edge_monomials, _node_input

__all__ = ["SingleFrameGraph"]


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


def _gate_tables(meta, gsel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A gated layer's output ``x = y * (route @ sigmoid(y)) + tanh_rows * tanh(y)`` on the conv output's rows
    ``[scalars | gates | gated]``: the ``(d_out, d_out)`` routing of Sigmoid outputs (a scalar's own sigmoid for
    SiLU, its gate for a gated row, nothing for a gate or a Tanh row), the ``(d_out,)`` mask of the Tanh rows, and
    the ``(d_out - n_g,)`` rows that are the next layer's input channels (the gates' rows are left out)."""
    n_s, n_g, d_out = meta.n_s, meta.n_g, meta.d_out
    route, tanh_rows = np.zeros((d_out, d_out)), np.zeros(d_out)
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
        route[n_s + n_g :, n_s : n_s + n_g] = gsel.T  # gsel (n_g, n_gated): gate -> gated channel (one-hot)
    kept = np.concatenate([np.arange(n_s), np.arange(n_s + n_g, d_out)])
    return route, tanh_rows, kept


class SingleFrameGraph(torch.nn.Module):
    """A frozen single-frame form of a :class:`FixedGraphNetwork` that holds its radial table.

    It computes ``scale * net(pos, node_features / input_scale)``: a model's scalar output and input scales are
    folded into the first and last layers' matrices (in float64), so they cost no operation.

    Shapes: pos ``(1, n, 3)``; node_features ``(1, n, dim(irreps_in))`` iff ``config.irreps_in`` is set; returns
    ``(1, n, dim(irreps_out))``.
    """

    def __init__(self, net: FixedGraphNetwork, scale: float = 1.0, input_scale: float = 1.0) -> None:
        super().__init__()
        if not isinstance(net, FixedGraphNetwork):
            raise ValueError(f"SingleFrameGraph needs a FixedGraphNetwork, got {type(net).__name__}")
        if net._radial_table is None:
            raise ValueError("SingleFrameGraph needs the radial table: pass tabulate_radial's copy")
        scale, input_scale = float(scale), float(input_scale)
        for name, value in (("scale", scale), ("input_scale", input_scale)):
            if not math.isfinite(value) or value == 0:
                raise ValueError(f"SingleFrameGraph {name} must be finite and non-zero, got {value!r}")
        if net.config.irreps_in is None and input_scale != 1.0:
            raise ValueError(f"input_scale={input_scale!r} given, but this network takes no node_features")
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
        pres[0] = pres[0] / input_scale  # the node features' rows (no feature: the constant input's, unscaled)
        last = len(pres) - 1
        terms = []
        self._layers = []
        prev = None  # the previous layer's gate: (its rows that are input channels, its Tanh rows)
        w_row = 0
        for layer, (conv, plan, meta, pre) in enumerate(zip(net64._convs, net64._plans, net64._metas, pres)):
            d_out = meta.d_out
            widx, xidx, qidx = _terms(meta, w_row)
            wpost = torch.cat([conv.lin2.weight, conv.lin2.weight.new_zeros(1)])
            post = torch.index_select(wpost, 0, plan.post_idx.reshape(-1)).reshape(plan.post_idx.shape)
            post = (post * plan.post_coef).detach().numpy()  # (d_out, D)
            s_rows = pre[:, :d_out].T  # (d_out, d_in)
            if layer == last:
                post, s_rows = post * scale, s_rows * scale
            # terms whose column of lin2's matrix is zero add nothing (padding: a path with fewer than S terms)
            live = np.flatnonzero(np.abs(post).sum(0) > 0)
            if not len(live):
                raise NotImplementedError(f"layer {layer} has no term with a weight; no single-frame form")
            post = post[:, live]
            widx, xidx, qidx = ([v[j] for j in live] for v in (widx, xidx, qidx))
            n_d = len(widx)
            # the neighbour sum before lin2 ((D, E) @ (E, n), then (d_out, D) @), or after where fewer MACs
            late = d_out * n_d * n_edges + d_out * n_edges * n < n_d * n_edges * n + d_out * n_d * n
            spec = {"d_out": d_out, "D": n_d, "gate": meta.gate, "late": late, "tanh_in": False}
            const(f"post{layer}", post)
            if self._const_input and layer == 0:
                const(f"s{layer}", s_rows[:, :1])  # the constant node input's sc output
            else:
                # sc and lin1 (d_out + d_in, d_in); lin1's rows go onto the edges before they are copied to the terms
                both = np.concatenate([s_rows, pre[:, d_out:].T])
                if prev is not None:  # the previous gate's output rows: its gates' rows read nothing, and its Tanh
                    route_kept, tanh_prev = prev  # rows are read from tanh(y) by a matrix of their own
                    wide = np.zeros((both.shape[0], len(tanh_prev)))
                    wide[:, route_kept] = both
                    both = wide * (1.0 - tanh_prev)
                    if tanh_prev.any():
                        const(f"pre_tanh{layer}", wide * tanh_prev)
                        spec["tanh_in"] = True
                const(f"pre{layer}", both)
                const(f"x_rows{layer}", np.asarray(xidx, dtype=np.int64))
            prev = None
            if meta.gate:
                route, tanh_rows, kept = _gate_tables(meta, plan.gsel.numpy() if meta.n_g else np.zeros((0, 0)))
                const(f"route{layer}", route)
                prev = (kept, tanh_rows)
            self._layers.append(spec)
            terms.append((widx, qidx))
            w_row += meta.n_w
        if prev is not None:
            raise NotImplementedError("the last layer is gated; no single-frame form")
        table = net._radial_table.detach().double().reshape(len(net._radial_table), _RADIAL_COEFFS, -1)
        for j in range(_RADIAL_COEFFS):
            const(f"table{j}", table[:, j])
        const("q_mat", c.q_mat.numpy())  # (Q rows, monomials)
        # every layer's (D, E) radial weight times Q in one product, split per layer in forward
        const("w_rows", np.asarray([i for widx, _ in terms for i in widx], dtype=np.int64))
        const("q_rows", np.asarray([i for _, qidx in terms for i in qidx], dtype=np.int64))

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

        wqs = torch.index_select(w, 0, self.w_rows) * torch.index_select(q, 0, self.q_rows)  # (sum D, E)
        wqs = torch.split(wqs, [spec["D"] for spec in self._layers])
        t = None  # tanh(y) of the previous gate, read by this layer's pre_tanh
        for layer, spec in enumerate(self._layers):
            d_out, wq = spec["d_out"], wqs[layer]
            if x is None:
                s, prod = getattr(self, f"s{layer}"), wq
            else:
                both = getattr(self, f"pre{layer}") @ x  # (d_out + d_in, n)
                if spec["tanh_in"]:
                    both = torch.addmm(both, getattr(self, f"pre_tanh{layer}"), t)
                xo = torch.index_select(both[d_out:] @ self.onto, 0, getattr(self, f"x_rows{layer}"))  # (D, E)
                s, prod = both[:d_out], xo * wq
            post = getattr(self, f"post{layer}")
            y = s + ((post @ prod) @ self.gather if spec["late"] else post @ (prod @ self.gather))  # (d_out, n)
            if spec["gate"]:
                x = y * (getattr(self, f"route{layer}") @ torch.sigmoid(y))  # (d_out, n): gate rows zero
                t = torch.tanh(y)
            else:
                x = y
        return x.t().reshape(1, n, self._dim_out)
