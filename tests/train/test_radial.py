"""The radial table and the reference work (train/_radial.py): accurate, equivariant, exportable, measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import (
    CONFIGS,
    F32_BOUND,
    float64_network,
    node_features,
    onnx_session,
    pair_of,
    perturb,
    probe_frames,
    reference_outputs,
    rotation,
)

from e3traj.train import (
    DisplacementModel,
    build_reference_network,
    reference_flops_per_frame,
    tabulate_radial,
)

# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_radial_table_copy_matches_e3nn_and_leaves_the_model_alone(name):
    fixed, ref = pair_of(name)
    tab, info = tabulate_radial(fixed)
    assert info["form"] == "table" and info["intervals"] >= 64 and info["max_abs_value"] > 0.1
    assert info["max_abs_error"] <= 1e-6 * info["max_abs_value"]
    assert fixed._radial_table is None and all(p.requires_grad for p in fixed.parameters())
    assert tab._radial_table.shape == (info["intervals"], 4 * fixed._n_w_all)
    assert not any(p.requires_grad for p in tab.parameters()) and list(tab.state_dict()) == list(fixed.state_dict())
    frames = probe_frames()
    feats = node_features(fixed.config, frames)
    with torch.no_grad():
        out, mlp = tab(frames, feats), fixed(frames, feats)
    want = reference_outputs(ref, frames, feats)
    scale = max(1.0, float(want.abs().max()))
    assert float((out - want).abs().max()) <= F32_BOUND * scale, name  # the float32 bound of the MLP path itself
    assert float((out - mlp).abs().max()) <= F32_BOUND * scale


def test_radial_table_error_is_what_it_reports_and_it_refuses_an_unreachable_tolerance():
    fixed = float64_network("velocity", seed=21)
    coarse, info = tabulate_radial(fixed, rtol=1e-3, min_intervals=16)
    assert info["intervals"] < 256  # a loose tolerance gives a small table
    gen = torch.Generator().manual_seed(3)
    r = torch.rand(20000, generator=gen, dtype=torch.float64) * fixed.config.max_radius
    with torch.no_grad():
        err = float(
            (coarse._radial_from_table(r) - fixed._radial_mlp(r, fixed._pre_matrices(torch.float64))).abs().max()
        )
    assert info["max_abs_error"] * 0.5 <= err <= info["max_abs_error"] * 1.5  # the probe finds the real error
    assert err > 1e-7  # ... which is not zero: a coarse table is visibly off (the check can fail)
    none, why = tabulate_radial(fixed, rtol=1e-12, max_intervals=128)
    assert none is None and why["form"] == "mlp" and "128" in why["why"]
    with pytest.raises(ValueError, match="rtol"):
        tabulate_radial(fixed, rtol=0)
    with pytest.raises(ValueError, match="FixedGraphNetwork"):
        tabulate_radial(torch.nn.Linear(3, 3))


def test_radial_table_equivariance_float64():
    fixed = float64_network("default", seed=22)
    tab, _ = tabulate_radial(fixed)
    frames = probe_frames(torch.float64)
    rot = rotation(7)
    with torch.no_grad():
        out = tab(frames)
        rotated = tab(frames @ rot.T + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))
        perm = torch.randperm(12, generator=torch.Generator().manual_seed(4))
        permuted = tab(frames[:, perm])
    assert float((rotated - out @ rot.T).abs().max()) <= 1e-10
    assert float((permuted - out[:, perm]).abs().max()) <= 1e-10


def test_radial_table_onnx_parity_and_bad_frames():
    model = DisplacementModel(CONFIGS["default"], scale=0.05).eval()
    perturb(model, seed=13)
    tab, info = tabulate_radial(model)
    ops, sess = onnx_session(tab)
    assert "NonZero" not in ops and "Exp" not in ops  # no radial basis left: the MLPs are the table
    frames = probe_frames()
    far = frames[:1] * 10.0  # every pair beyond max_radius: zero output, from the clamped end of the table
    for batch in (frames[3:4], frames, far):
        with torch.no_grad():
            want = model(batch).numpy()  # the MLPs
        got = sess.run(None, {"pos": batch.numpy()})[0]
        assert np.abs(got - want).max() <= 1e-5
    # a NaN or Inf coordinate cannot index outside the table: that frame is non-finite, the others are exact
    bad = frames.clone()
    bad[0, 2, 1] = float("nan")
    bad[1, 5, 0] = float("inf")
    got = sess.run(None, {"pos": bad.numpy()})[0]
    assert not np.isfinite(got[0]).all() and not np.isfinite(got[1]).all()
    with torch.no_grad():
        assert np.abs(got[2:] - model(frames[2:]).numpy()).max() <= 1e-5


def test_reference_flops_count_e3nns_network_on_the_complete_graph():
    from torch.utils.flop_counter import FlopCounterMode

    # e3nn's Network on another frame whose 132 ordered pairs are all within max_radius counts the same work
    config = CONFIGS["default"]
    gen = torch.Generator().manual_seed(9)
    pos = torch.randn(12, 3, generator=gen)
    pos = pos * (0.9 * config.max_radius / float(torch.cdist(pos, pos).max()))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        build_reference_network(config)({"pos": pos})
    assert reference_flops_per_frame(config) == float(counter.get_total_flops()) == 5032080.0
    assert reference_flops_per_frame(CONFIGS["velocity"]) > reference_flops_per_frame(config)
