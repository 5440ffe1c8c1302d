"""One layer's constant tables for :class:`~e3traj.train._network.FixedGraphNetwork`, built once from e3nn's
instructions (numpy): the gate's channel order, the self-connection and lin1 as one index/coefficient matrix, the
tensor product's path groups and product classes with their radial weight columns, and lin2 after the neighbour
sum (with the path weights, ``1 / sqrt(num_neighbors)`` and e3nn's sc/conv mixing folded in)."""

from __future__ import annotations

import math

import numpy as np

from ._plan import (
    LayerPlan,
    PathGroup,
    ProductClass,
    _act_segments,
    _Consts,
    _elementwise_structure,
    _fctp_structure,
    _path_classes,
    _path_pattern,
)

__all__ = ["build_layer_plan"]


def build_layer_plan(conv, gate, row_scale: np.ndarray, sh_l: list[int], num_neighbors: float):
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
        g = PathGroup(l1=key[0], U=u, x_start=pos, combos=key[1])
        groups.append(g)
        by_key[key] = g
        pos += u * (2 * key[0] + 1)
    gmap = {ir: by_key[key] for ir, key in keys.items()}
    lin1_cols = np.zeros(d_in, dtype=np.int64)
    for i1, (mul_ir, sl) in enumerate(zip(irreps_in, irreps_in.slices())):
        g, d = gmap[mul_ir.ir], mul_ir.ir.dim
        for u in range(mul_ir.mul):
            for a in range(d):
                lin1_cols[g.x_start + (uoff[i1] + u) * d + a] = sl.start + u * d + a
    idx_sc, coef_sc = _fctp_structure(conv.sc)
    idx_l1, coef_l1 = _fctp_structure(conv.lin1)
    n_sc = conv.sc.weight_numel
    # weights vector: [sc.weight, 0, lin1.weight, 0]
    pre_idx = np.concatenate([idx_sc[:, perm], idx_l1[:, lin1_cols] + n_sc + 1], axis=1)
    pre_coef = np.concatenate([coef_sc[:, perm] * c_s, coef_l1[:, lin1_cols]], axis=1) * row_scale[:, None]
    plan.const("pre_idx", pre_idx.T)
    plan.const("pre_coef", pre_coef.T)

    # per group: its products (path classes by number of terms S; see _path_classes)
    groups = [g for g in groups if g.combos]
    d_pos = w_pos = 0
    where = {}  # (group key, (l2, l3)) -> (class, index in the class)
    for g in groups:
        dim1 = 2 * g.l1 + 1
        g.classes = []
        for combos, n_t in _path_classes(g.l1, g.combos, g.U):
            cl = ProductClass(combos=combos, S=n_t, C=len(combos), d_start=d_pos, w_start=w_pos)
            cl.sigma = [_path_pattern(g.l1, *c) for c in combos]
            g.classes.append(cl)
            for cc, combo in enumerate(combos):
                where[(g.l1, g.combos, combo)] = (cl, cc)
            d_pos += g.U * len(combos) * n_t * dim1
            w_pos += g.U * len(combos)
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
        cl, cc = where[(g.l1, g.combos, (l2, l3))]
        dim1 = 2 * g.l1 + 1
        for u in range(mul_ir.mul):
            ug = uoff[ins.i_in1] + u
            w_cols[cl.w_start + ug * cl.C + cc] = w_off + u
            w_xrow[cl.w_start + ug * cl.C + cc] = g.x_start + ug * dim1
            for a, ms in enumerate(cl.sigma[cc]):
                for s, m in enumerate(ms):
                    dd = cl.d_start + ((ug * cl.C + cc) * cl.S + s) * dim1 + a
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
    post_coef *= c_x_col[None, :] / num_neighbors**0.5
    plan.const("post_idx", post_idx[:, perm].T)
    plan.const("post_coef", post_coef[:, perm].T)

    meta = LayerPlan(
        d_in=d_in,
        d_out=d_out,
        n_w=n_w,
        groups=groups,
        gate=gate is not None,
        n_s=n_s,
        n_g=n_g,
        segs_s=segs_s,
        segs_g=segs_g,
    )
    return plan, meta, next_row_scale
