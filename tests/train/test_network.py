"""FixedGraphNetwork (train/_network.py) against e3nn's own gate_points_2101.Network: parity, symmetry, export."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from _nets import (
    CONFIGS,
    F32_BOUND,
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
    FixedGraphNetwork,
    build_reference_network,
    load_reference_weights,
)
from e3traj.train._plan import _fctp_structure

# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
def test_parity_float32_with_e3nn_network(pair):
    name, fixed, ref = pair
    frames = probe_frames()
    feats = node_features(fixed.config, frames)
    with torch.no_grad():
        out = fixed(frames, feats)
    want = reference_outputs(ref, frames, feats)
    assert out.shape == want.shape == (6, 12, 3)
    scale = max(1.0, float(want.abs().max()))
    assert float(want.abs().max()) > 0.05  # non-trivial outputs
    # float32 noise floor: e3nn's own float32 output is ~1e-6 relative off its float64 value, and so is this one
    # (different summation orders, measured 0.3-1.4e-6 here; other CPUs' kernels round differently, hence 1e-5);
    # exactness is checked in float64 below
    assert float((out - want).abs().max()) <= F32_BOUND * scale, name


@pytest.mark.parametrize("name", ["velocity", "l2"])
def test_parity_float64_is_exact(name):
    """Built in float64 (e3nn's Wigner-3j buffers included), the two agree to rounding of float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        fixed = FixedGraphNetwork(CONFIGS[name])
        perturb(fixed, seed=5, amount=0.3)
        ref = load_reference_weights(fixed)
    finally:
        torch.set_default_dtype(previous)
    frames = probe_frames(torch.float64)
    feats = node_features(fixed.config, frames)
    with torch.no_grad():
        out = fixed(frames, feats)
    want = reference_outputs(ref, frames, feats)
    assert out.dtype == torch.float64
    assert float((out - want).abs().max()) <= 1e-10 * max(1.0, float(want.abs().max()))


def test_state_dict_is_e3nns():
    fixed, _ = pair_of("small")
    keys = list(fixed.state_dict())
    assert keys and all(k.startswith("network.") for k in keys)
    params = dict(fixed.named_parameters())
    assert params and all(name.startswith("network.") for name in params)
    stripped = {k.removeprefix("network."): v for k, v in fixed.state_dict().items()}
    ref = build_reference_network(fixed.config)
    ref.load_state_dict(stripped)  # strict: same keys, same shapes
    fresh = FixedGraphNetwork(fixed.config)
    fresh.load_state_dict({f"network.{k}": v for k, v in ref.state_dict().items()})  # and back, strict
    frames = probe_frames()
    with torch.no_grad():
        assert torch.equal(fresh(frames), fixed(frames))


def test_dense_linear_maps_match_e3nn(default_fixed):
    for conv in [lay.first if hasattr(lay, "first") else lay for lay in default_fixed.network.layers]:
        for lin in (conv.sc, conv.lin1, conv.lin2):
            idx, coef = _fctp_structure(lin)
            d_in = lin.irreps_in1.dim
            with torch.no_grad():
                want = lin(torch.eye(d_in), torch.ones(d_in, 1))
                weights = torch.cat([lin.weight, lin.weight.new_zeros(1)])
                got = weights[torch.from_numpy(idx)] * torch.from_numpy(coef).float()
            assert torch.allclose(got, want, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
def test_equivariance_float64(default_fixed):
    net = copy.deepcopy(default_fixed).double()
    frames = probe_frames(torch.float64)
    with torch.no_grad():
        out = net(frames)
        rot = rotation(7)
        assert torch.allclose(net(frames @ rot.T), out @ rot.T, atol=1e-10)
        assert torch.allclose(net(-frames), -out, atol=1e-10)  # 1x1o flips under inversion
        shift = torch.tensor([3.0, -1.5, 0.25], dtype=torch.float64)
        assert torch.allclose(net(frames + shift), out, atol=1e-10)
        perm = torch.randperm(12, generator=torch.Generator().manual_seed(8))
        assert torch.allclose(net(frames[:, perm]), out[:, perm], atol=1e-10)
    assert float(out.abs().max()) > 0.05


def test_equivariance_with_node_features_float64():
    net = copy.deepcopy(pair_of("velocity")[0]).double()
    frames = probe_frames(torch.float64)
    feats = node_features(net.config, frames)
    rot = rotation(11)
    with torch.no_grad():
        out = net(frames, feats)
        assert torch.allclose(net(frames @ rot.T, feats @ rot.T), out @ rot.T, atol=1e-10)
        assert torch.allclose(net(-frames, -feats), -out, atol=1e-10)


def test_gradients_finite_with_coincident_beads(default_fixed):
    frames = probe_frames()[3:5].clone().requires_grad_(True)  # coincident beads
    default_fixed.zero_grad()
    out = default_fixed(frames)
    assert torch.isfinite(out).all()
    (out**2).sum().backward()
    assert torch.isfinite(frames.grad).all()
    grads = [p.grad for p in default_fixed.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)
    default_fixed.zero_grad()


def test_onnx_export_no_nonzero_and_parity():
    model = DisplacementModel(CONFIGS["default"], scale=0.05).eval()
    perturb(model, seed=13)
    ops, sess = onnx_session(model)
    assert "NonZero" not in ops and "Loop" not in ops and "If" not in ops
    for frames in (
        probe_frames()[3:4],
        probe_frames()[:6],
        torch.cat([probe_frames()[:1], probe_frames()]),
    ):  # B = 1, 6, 7
        with torch.no_grad():
            want = model(frames).numpy()
        got = sess.run(None, {"pos": frames.numpy()})[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5


def test_jit_trace_matches_eager():
    model = DisplacementModel(CONFIGS["small"], scale=0.1).eval()
    perturb(model, seed=14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (torch.randn(3, 12, 3),), check_trace=False)
    frames = probe_frames()
    with torch.no_grad():
        assert torch.allclose(traced(frames), model(frames), atol=1e-6)
