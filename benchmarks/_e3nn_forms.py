"""Experimental export forms of the e3nn network, timed by ``benchmarks/e3nn_forms.py`` (not used by export).

:class:`E3nnGraph` is :class:`~e3traj.train._network.FixedGraphNetwork` with its weights folded into constant
matrices and **node tensors feature-first too**, ``(features, n * B)`` with nodes outer and frames inner, so that

* every linear map is ``matrix @ nodes`` and writes the feature-first layout directly (no transpose before the
  next layer, none after the neighbour sum);
* each input group's edge copy is one MatMul of that group's rows of lin1 and one Gather along the node axis;
* each product class reads its own radial weights and its own ``Q`` rows, gathered or multiplied for it alone
  (no slicing of shared tensors: onnxruntime copies every slice);
* the radial table's cubic is one Mul and one ReduceSum, and its pair rows are turned feature-first once, at
  pair level (half the edges).

The Gathers along the node axis copy blocks of ``B`` floats: single floats at ``B = 1``, which is why this form
loses there (see the benchmark's table). :class:`StaticBlockSums` is the training module with its neighbour sums
as one MatMul against a tiled identity, which needs a static ``n * B`` (a graph for one batch size).

Both compute the training module's function term by term, up to float32 rounding (the benchmark prints it).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from e3traj.train._network import _RADIAL_COEFFS, FixedGraphNetwork
from e3traj.train._plan import _apply, _edge_monomials, _node_input

__all__ = ["E3nnGraph", "StaticBlockSums"]


class E3nnGraph(torch.nn.Module):
    """A frozen form of a :class:`FixedGraphNetwork` that holds its radial table (:func:`tabulate_radial`).

    Shapes: pos ``(B, n, 3)``; node_features ``(B, n, dim(irreps_in))`` iff ``config.irreps_in`` is set; returns
    ``(B, n, dim(irreps_out))``.
    """

    def __init__(self, net: FixedGraphNetwork) -> None:
        super().__init__()
        if not isinstance(net, FixedGraphNetwork):
            raise ValueError(f"E3nnGraph needs a FixedGraphNetwork, got {type(net).__name__}")
        dtype = next(net.parameters()).dtype
        self.config = net.config
        self.n = net.n_nodes
        self.n_pairs, self.n_edges = net.n_pairs, net.n_edges
        self._dim_out = net._dim_out
        self._const_input = net.config.irreps_in is None
        self._mono_degree = net._mono_degree
        self._n_w_all = net._n_w_all
        c = net.consts
        src, pair_edge, edge_pair = c.src.numpy(), c.pair_edge.numpy(), c.edge_pair.numpy()
        n_pairs = len(pair_edge)
        self._buf = 0

        def buf(value, dt=dtype) -> str:
            name = f"_c{self._buf}"
            self._buf += 1
            t = torch.as_tensor(np.ascontiguousarray(value) if isinstance(value, np.ndarray) else value)
            self.register_buffer(name, t.to(dt) if t.is_floating_point() else t, persistent=False)
            return name

        self._src = buf(torch.from_numpy(src))
        self._pair_edge = buf(torch.from_numpy(pair_edge))
        if net._radial_table is None:
            raise ValueError("E3nnGraph needs the radial table: pass tabulate_radial's copy")
        self._n_int = n_int = net._radial_table.shape[0]
        self._table = buf(net._radial_table.detach().double().reshape(n_int, _RADIAL_COEFFS, -1))
        q_mat = c.q_mat.numpy()

        net64 = copy.deepcopy(net).double()
        with torch.no_grad():
            pres = [p.numpy() for p in net64._pre_matrices(torch.float64)]  # (d_in, d_out + d_in) per layer
        self._layers = []
        w_row, q_done = 0, {}
        for layer, (conv, plan, meta, pre) in enumerate(zip(net64._convs, net64._plans, net64._metas, pres)):
            d_out = meta.d_out
            spec = {"d_out": d_out, "gate": meta.gate, "groups": []}
            if self._const_input and layer == 0:
                spec["s"] = buf(pre[0, :d_out].reshape(d_out, 1))  # the constant node input's sc output
            else:
                spec["s"] = buf(pre[:, :d_out].T)  # (d_out, d_in)
            for g in meta.groups:
                dim1 = 2 * g.l1 + 1
                gspec = {"U": g.U, "dim1": dim1, "x": None, "classes": []}
                if not (self._const_input and layer == 0):
                    cols = slice(d_out + g.x_start, d_out + g.x_start + g.U * dim1)
                    gspec["x"] = buf(pre[:, cols].T)  # (U * dim1, d_in): this group's lin1 rows
                for cl in g.classes:
                    rows = w_row + cl.w_start + np.arange(g.U * cl.C)
                    w_index = (rows[:, None] * n_pairs + edge_pair[None, :]).reshape(-1)  # (U C E,) of (W P, B)
                    q_rows = cl.q_off + np.arange(cl.C * cl.S * dim1)
                    key = (cl.q_off, len(q_rows))
                    if key not in q_done:
                        q_done[key] = buf(q_mat[q_rows])
                    gspec["classes"].append(
                        {"C": cl.C, "S": cl.S, "w": buf(torch.from_numpy(w_index)), "q": q_done[key]}
                    )
                spec["groups"].append(gspec)
            w_row += meta.n_w
            if meta.groups:
                wpost = torch.cat([conv.lin2.weight, conv.lin2.weight.new_zeros(1)])
                post = torch.index_select(wpost, 0, plan.post_idx.reshape(-1)).reshape(plan.post_idx.shape)
                spec["post"] = buf((post * plan.post_coef).detach())  # (d_out, D)
            if meta.gate:
                spec.update(n_s=meta.n_s, n_g=meta.n_g, segs_s=meta.segs_s, segs_g=meta.segs_g)
                if meta.n_g:
                    spec["gsel"] = buf(plan.gsel.numpy().T)  # (n_gated, n_g)
            self._layers.append(spec)

    def _c(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    def _radial(self, r: torch.Tensor) -> torch.Tensor:
        """All layers' radial weights on the unordered pairs, feature-first.

        Shapes: r ``(P * B,)`` -> ``(W, P * B)``.
        """
        n_int = self._n_int
        t = torch.clamp(r * (n_int / self.config.max_radius), min=0.0, max=float(n_int))
        i = torch.clamp(t.to(torch.int64), min=0, max=n_int - 1)
        f = (t - i.to(r.dtype))[:, None]
        f2 = f * f
        powers = torch.cat([torch.ones_like(f), f, f2, f2 * f], dim=1)  # (M, 4)
        coef = torch.index_select(self._c(self._table), 0, i)  # (M, 4, W)
        return (coef * powers[:, :, None]).sum(1).t()

    def forward(self, pos: torch.Tensor, node_features: torch.Tensor | None = None) -> torch.Tensor:
        n, k = self.n, self.n - 1
        x = _node_input(self.config, node_features)
        x = None if x is None else x.permute(2, 1, 0).reshape(x.shape[2], -1)  # (d_in, n * B)
        src = self._c(self._src)

        # geometry, feature-first edges (k, i, B) as in the training module
        pos_f = pos.permute(2, 1, 0)  # (3, n, B)
        vec = (torch.index_select(pos_f, 1, src).reshape(3, k, n, -1) - pos_f[:, None]).reshape(3, -1)
        r, mono = _edge_monomials(vec, self.config.max_radius, self._mono_degree)

        rp = torch.index_select(r.reshape(self.n_edges, -1), 0, self._c(self._pair_edge)).reshape(-1)  # (P * B,)
        w_pairs = self._radial(rp).reshape(self._n_w_all * self.n_pairs, -1)  # (W * P, B)
        qs: dict[str, torch.Tensor] = {}

        for layer, spec in enumerate(self._layers):
            first_const = self._const_input and layer == 0
            s = self._c(spec["s"])
            s = s if first_const else s @ x  # (d_out, 1) or (d_out, n * B)
            aggs = []
            for g in spec["groups"]:
                n_u, dim1 = g["U"], g["dim1"]
                if g["x"] is not None:
                    xn = (self._c(g["x"]) @ x).reshape(n_u * dim1, n, -1)
                    xg = torch.index_select(xn, 1, src).reshape(n_u, 1, 1, dim1, k, -1)
                for cl in g["classes"]:
                    n_c, n_t = cl["C"], cl["S"]
                    wg = torch.index_select(w_pairs, 0, self._c(cl["w"])).reshape(n_u, n_c, 1, 1, k, -1)
                    if cl["q"] not in qs:
                        qs[cl["q"]] = self._c(cl["q"]) @ mono
                    qg = qs[cl["q"]].reshape(n_c, n_t, dim1, k, -1)
                    p = (wg if g["x"] is None else xg * wg) * qg  # (U, C, S, dim1, k, n * B)
                    aggs.append(p.reshape(n_u * n_c * n_t * dim1, k, -1).sum(1))
            if aggs:
                agg = torch.cat(aggs, dim=0) if len(aggs) > 1 else aggs[0]  # (D, n * B)
                y = s + self._c(spec["post"]) @ agg  # (d_out, n * B)
            else:
                y = s if not first_const else s.expand(-1, n * pos.shape[0])
            if spec["gate"]:
                n_s, n_g = spec["n_s"], spec["n_g"]
                parts = [_apply(f, y[a:b]) for a, b, f in spec["segs_s"]]
                if n_g:
                    gates = [_apply(f, y[n_s + a : n_s + b]) for a, b, f in spec["segs_g"]]
                    gates = torch.cat(gates, dim=0) if len(gates) > 1 else gates[0]
                    parts.append(y[n_s + n_g :] * (self._c(spec["gsel"]) @ gates))
                x = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
            else:
                x = y
        return x.reshape(self._dim_out, n, -1).permute(2, 1, 0)


class StaticBlockSums(torch.nn.Module):
    """A frozen copy of ``net`` whose neighbour sums are ``(rows, k * n * B) @ tile(I_{n B}, (k, 1))``: one MatMul
    instead of onnxruntime's ReduceSum over a middle axis, valid for the one batch size ``batch`` it is built for.

    Shapes: pos ``(batch, n, 3)`` -> ``(batch, n, dim(irreps_out))``.
    """

    def __init__(self, net: FixedGraphNetwork, batch: int = 1) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).eval()
        self.batch = batch
        nb, k = net.n_nodes * batch, net.n_nodes - 1
        tile = torch.tile(torch.eye(nb, dtype=next(net.parameters()).dtype), (k, 1))  # (k * n * B, n * B)
        self.net.register_buffer("_tile", tile, persistent=False)
        self.net._neighbour_sum = lambda p: p.reshape(p.shape[0], -1) @ self.net._tile

    def forward(self, pos: torch.Tensor, node_features: torch.Tensor | None = None) -> torch.Tensor:
        if pos.shape[0] != self.batch:
            raise ValueError(f"StaticBlockSums is built for batch {self.batch}, got {pos.shape[0]}")
        return self.net(pos, node_features)
