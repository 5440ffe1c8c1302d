"""FixedGraphNetwork against e3nn's own gate_points_2101.Network: parity, equivariance, gradients, export."""

from __future__ import annotations

import copy
import dataclasses
import io
import warnings

import numpy as np
import pytest
import torch

from e3traj.train import (
    DisplacementModel,
    E3nnConfig,
    FixedGraphNetwork,
    build_reference_network,
    load_reference_weights,
    reference_flops_per_frame,
    tabulate_radial,
)
from e3traj.train._plan import _fctp_structure, _path_classes, _path_pattern

CONFIGS = {
    "default": E3nnConfig(),
    "small": E3nnConfig(irreps_hidden="2x0e + 2x1o", layers=2),
    "velocity": E3nnConfig(irreps_in="1x1o"),
    # l = 2 features: paths with 5 terms per component and l1 = 2 groups (the sparse products' other patterns)
    "l2": E3nnConfig(irreps_hidden="2x0e + 2x1o + 2x2e + 1x2o", layers=2),
}


#: Relative float32 agreement of two implementations of the same network (the product's parity bar is 1e-5).
F32_BOUND = 1e-5


def _perturb(module: torch.nn.Module, seed: int, amount: float = 0.15) -> None:
    """Random, non-default weights (so parity cannot hold by accident of the initialisation)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(amount * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _frames(dtype=torch.float32) -> torch.Tensor:
    """Random frames, a stretched chain (pairs beyond and exactly at max_radius), coincident beads."""
    gen = torch.Generator().manual_seed(1)
    frames = torch.randn(6, 12, 3, generator=gen, dtype=torch.float64) * 0.7
    line = torch.arange(12, dtype=torch.float64)[:, None]
    frames[1] = line * torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)  # 0.5 apart: r = 3.5 at 7 steps
    frames[2] = line * torch.tensor([0.45, 0.2, -0.1], dtype=torch.float64) + 0.01 * frames[2]
    frames[3, 3] = frames[3, 7]  # two coincident beads
    frames[4, 0] = frames[4, 1]  # two coincident pairs
    frames[4, 5] = frames[4, 9]
    frames[5, :, 2] = 0.0  # planar, as in the chapter's data (z = 0)
    return frames.to(dtype)


def _node_features(config: E3nnConfig, frames: torch.Tensor) -> torch.Tensor | None:
    if config.irreps_in is None:
        return None
    gen = torch.Generator().manual_seed(2)
    return (0.5 * torch.randn(frames.shape, generator=gen, dtype=torch.float64)).to(frames.dtype)


def _reference_outputs(ref, frames: torch.Tensor, feats: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        outs = []
        for b in range(frames.shape[0]):
            data = {"pos": frames[b]}
            if feats is not None:
                data["x"] = feats[b]
            outs.append(ref(data))
    return torch.stack(outs)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny ops with 2 OpenMP threads on a busy 2-core machine are ~100x slower (spin-waits)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


_CACHE: dict[str, tuple[FixedGraphNetwork, torch.nn.Module]] = {}


def _pair(name: str) -> tuple[FixedGraphNetwork, torch.nn.Module]:
    """(FixedGraphNetwork with perturbed weights, e3nn Network with the same weights), float32, built once.

    Tests must not modify them (deepcopy first).
    """
    if name not in _CACHE:
        torch.manual_seed(len(name))  # the initial weights too: the same model on every run and machine
        fixed = FixedGraphNetwork(CONFIGS[name])
        _perturb(fixed, seed=len(name))
        _CACHE[name] = (fixed, load_reference_weights(fixed))
    return _CACHE[name]


@pytest.fixture(params=sorted(CONFIGS))
def pair(request):
    return (request.param, *_pair(request.param))


@pytest.fixture
def default_fixed() -> FixedGraphNetwork:
    return _pair("default")[0]


def _rotation(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# ---------------------------------------------------------------------------------------------------------------
def test_parity_float32_with_e3nn_network(pair):
    name, fixed, ref = pair
    frames = _frames()
    feats = _node_features(fixed.config, frames)
    with torch.no_grad():
        out = fixed(frames, feats)
    want = _reference_outputs(ref, frames, feats)
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
        _perturb(fixed, seed=5, amount=0.3)
        ref = load_reference_weights(fixed)
    finally:
        torch.set_default_dtype(previous)
    frames = _frames(torch.float64)
    feats = _node_features(fixed.config, frames)
    with torch.no_grad():
        out = fixed(frames, feats)
    want = _reference_outputs(ref, frames, feats)
    assert out.dtype == torch.float64
    assert float((out - want).abs().max()) <= 1e-10 * max(1.0, float(want.abs().max()))


def test_state_dict_is_e3nns():
    fixed, _ = _pair("small")
    keys = list(fixed.state_dict())
    assert keys and all(k.startswith("network.") for k in keys)
    params = dict(fixed.named_parameters())
    assert params and all(name.startswith("network.") for name in params)
    stripped = {k.removeprefix("network."): v for k, v in fixed.state_dict().items()}
    ref = build_reference_network(fixed.config)
    ref.load_state_dict(stripped)  # strict: same keys, same shapes
    fresh = FixedGraphNetwork(fixed.config)
    fresh.load_state_dict({f"network.{k}": v for k, v in ref.state_dict().items()})  # and back, strict
    frames = _frames()
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
    frames = _frames(torch.float64)
    with torch.no_grad():
        out = net(frames)
        rot = _rotation(7)
        assert torch.allclose(net(frames @ rot.T), out @ rot.T, atol=1e-10)
        assert torch.allclose(net(-frames), -out, atol=1e-10)  # 1x1o flips under inversion
        shift = torch.tensor([3.0, -1.5, 0.25], dtype=torch.float64)
        assert torch.allclose(net(frames + shift), out, atol=1e-10)
        perm = torch.randperm(12, generator=torch.Generator().manual_seed(8))
        assert torch.allclose(net(frames[:, perm]), out[:, perm], atol=1e-10)
    assert float(out.abs().max()) > 0.05


def test_equivariance_with_node_features_float64():
    net = copy.deepcopy(_pair("velocity")[0]).double()
    frames = _frames(torch.float64)
    feats = _node_features(net.config, frames)
    rot = _rotation(11)
    with torch.no_grad():
        out = net(frames, feats)
        assert torch.allclose(net(frames @ rot.T, feats @ rot.T), out @ rot.T, atol=1e-10)
        assert torch.allclose(net(-frames, -feats), -out, atol=1e-10)


def test_gradients_finite_with_coincident_beads(default_fixed):
    frames = _frames()[3:5].clone().requires_grad_(True)  # coincident beads
    default_fixed.zero_grad()
    out = default_fixed(frames)
    assert torch.isfinite(out).all()
    (out**2).sum().backward()
    assert torch.isfinite(frames.grad).all()
    grads = [p.grad for p in default_fixed.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)
    default_fixed.zero_grad()


# ---------------------------------------------------------------------------------------------------------------
def test_displacement_model_scales_the_network():
    model = DisplacementModel(CONFIGS["default"], scale=0.05)
    fixed, ref = _pair("default")
    model.net.load_state_dict(fixed.state_dict())
    frames = _frames()[:3]
    with torch.no_grad():
        got = model(frames)
    want = _reference_outputs(ref, frames, None) * 0.05
    assert float(want.abs().max()) > 1e-3
    assert float((got - want).abs().max()) <= F32_BOUND * max(0.05, float(want.abs().max()))  # float32 noise floor
    with pytest.raises(ValueError, match="irreps_out"):
        DisplacementModel(E3nnConfig(irreps_out="1x0e"), scale=1.0)
    with pytest.raises(ValueError, match="irreps_in"):  # node features are the velocity model's
        DisplacementModel(CONFIGS["velocity"], scale=1.0)
    with pytest.raises(ValueError, match="scale"):
        DisplacementModel(E3nnConfig(), scale=0.0)
    assert float(model.state_dict()["scale"]) == pytest.approx(0.05)


def test_velocity_model_feeds_the_scaled_previous_displacement():
    from e3traj.train._velocity import VelocityModel

    config = CONFIGS["velocity"]
    model = VelocityModel(config, scale=0.05, input_scale=0.02)
    fixed, ref = _pair("velocity")
    model.net.load_state_dict(fixed.state_dict())
    frames = _frames()[:3]
    prev = 0.02 * _node_features(config, frames)
    with torch.no_grad():
        got = model(frames, prev)
    want = _reference_outputs(ref, frames, prev / 0.02) * 0.05
    assert float(want.abs().max()) > 1e-3
    assert float((got - want).abs().max()) <= F32_BOUND * max(0.05, float(want.abs().max()))


def _onnx_session(model: torch.nn.Module):
    """(op types, onnxruntime session) of ``model`` exported with input ``pos`` and a dynamic batch axis."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(  # the TorchScript-based exporter: under 2 s here (dynamo=True works too, ~20 s)
            model,
            (torch.randn(3, 12, 3),),
            buf,
            dynamo=False,
            opset_version=18,
            input_names=["pos"],
            output_names=["displacement"],
            dynamic_axes={"pos": {0: "batch"}, "displacement": {0: "batch"}},
        )
    ops = {node.op_type for node in onnx.load_from_string(buf.getvalue()).graph.node}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ops, ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])


def test_onnx_export_no_nonzero_and_parity():
    model = DisplacementModel(CONFIGS["default"], scale=0.05).eval()
    _perturb(model, seed=13)
    ops, sess = _onnx_session(model)
    assert "NonZero" not in ops and "Loop" not in ops and "If" not in ops
    for frames in (_frames()[3:4], _frames()[:6], torch.cat([_frames()[:1], _frames()])):  # B = 1, 6, 7
        with torch.no_grad():
            want = model(frames).numpy()
        got = sess.run(None, {"pos": frames.numpy()})[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5


def test_jit_trace_matches_eager():
    model = DisplacementModel(CONFIGS["small"], scale=0.1).eval()
    _perturb(model, seed=14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (torch.randn(3, 12, 3),), check_trace=False)
    frames = _frames()
    with torch.no_grad():
        assert torch.allclose(traced(frames), model(frames), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_radial_table_copy_matches_e3nn_and_leaves_the_model_alone(name):
    fixed, ref = _pair(name)
    tab, info = tabulate_radial(fixed)
    assert info["form"] == "table" and info["intervals"] >= 64 and info["max_abs_value"] > 0.1
    assert info["max_abs_error"] <= 1e-6 * info["max_abs_value"]
    assert fixed._radial_table is None and all(p.requires_grad for p in fixed.parameters())
    assert tab._radial_table.shape == (info["intervals"], 4 * fixed._n_w_all)
    assert not any(p.requires_grad for p in tab.parameters()) and list(tab.state_dict()) == list(fixed.state_dict())
    frames = _frames()
    feats = _node_features(fixed.config, frames)
    with torch.no_grad():
        out, mlp = tab(frames, feats), fixed(frames, feats)
    want = _reference_outputs(ref, frames, feats)
    scale = max(1.0, float(want.abs().max()))
    assert float((out - want).abs().max()) <= F32_BOUND * scale, name  # the float32 bound of the MLP path itself
    assert float((out - mlp).abs().max()) <= F32_BOUND * scale


def test_radial_table_error_is_what_it_reports_and_it_refuses_an_unreachable_tolerance():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        fixed = FixedGraphNetwork(CONFIGS["velocity"])
        _perturb(fixed, seed=21, amount=0.3)
    finally:
        torch.set_default_dtype(previous)
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
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        fixed = FixedGraphNetwork(CONFIGS["default"])
        _perturb(fixed, seed=22, amount=0.3)
    finally:
        torch.set_default_dtype(previous)
    tab, _ = tabulate_radial(fixed)
    frames = _frames(torch.float64)
    rot = _rotation(7)
    with torch.no_grad():
        out = tab(frames)
        rotated = tab(frames @ rot.T + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))
        perm = torch.randperm(12, generator=torch.Generator().manual_seed(4))
        permuted = tab(frames[:, perm])
    assert float((rotated - out @ rot.T).abs().max()) <= 1e-10
    assert float((permuted - out[:, perm]).abs().max()) <= 1e-10


def test_radial_table_onnx_parity_and_bad_frames():
    model = DisplacementModel(CONFIGS["default"], scale=0.05).eval()
    _perturb(model, seed=13)
    tab, info = tabulate_radial(model)
    ops, sess = _onnx_session(tab)
    assert "NonZero" not in ops and "Exp" not in ops  # no radial basis left: the MLPs are the table
    frames = _frames()
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


# ---------------------------------------------------------------------------------------------------------------
def test_config_round_trip_and_validation():
    config = E3nnConfig(irreps_in="1x1o", layers=2, num_neighbors=11)
    assert isinstance(config.num_neighbors, float)
    data = config.to_dict()
    assert data["irreps_in"] == "1x1o" and data["layers"] == 2
    assert E3nnConfig.from_dict(data) == config
    assert E3nnConfig.from_dict({}) == E3nnConfig()
    assert E3nnConfig().to_dict()["irreps_hidden"] == "5x0e + 5x0o + 5x1e + 5x1o"
    with pytest.raises(ValueError, match="bogus"):
        E3nnConfig.from_dict({"layers": 3, "bogus": 1})
    with pytest.raises(ValueError, match="layers"):
        E3nnConfig(layers=-1)
    with pytest.raises(ValueError, match="max_radius"):
        E3nnConfig(max_radius=float("nan"))
    with pytest.raises(ValueError, match="5xq"):
        E3nnConfig(irreps_hidden="5xq")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.layers = 4  # type: ignore[misc]


def test_path_patterns_and_product_classes():
    """Which (m, a) terms of Q the sparse products multiply, and when a group is split into two products."""
    assert _path_pattern(1, 0, 1) == [[0], [1], [2]]  # diagonal
    assert _path_pattern(1, 1, 0) == [[0], [0], [0]]  # dot product
    assert _path_pattern(1, 1, 1) == [[1, 2], [0, 2], [0, 1]]  # cross product: never m == a
    assert _path_pattern(1, 2, 1) == [[0, 1, 2]] * 3
    combos = ((0, 1), (1, 0), (1, 1), (2, 1))
    # 10 channels: 4 x 3 x 3 = 36 terms per channel padded, (1 + 1 + 2 + 3) x 3 = 21 split
    assert _path_classes(1, combos, 10) == [(((0, 1), (1, 0)), 1), (((1, 1),), 2), (((2, 1),), 3)]
    # one channel saves 12 multiplications per edge: not worth three more nodes
    assert _path_classes(1, combos, 1) == [(combos, 3)]
    assert _path_classes(1, ((1, 1),), 10) == [(((1, 1),), 2)]
