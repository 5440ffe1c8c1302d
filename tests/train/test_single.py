"""The single-frame graph (train/_single.py): the tabulated network's function for one frame, term by term."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _nets import (
    CONFIGS,
    F32_BOUND,
    float64_network,
    node_features,
    pair_of,
    perturb,
    probe_frames,
    reference_outputs,
    rotation,
)

from e3traj.train import DisplacementModel, FixedGraphNetwork, tabulate_radial
from e3traj.train._single import SingleFrameGraph


def _float64_table(name: str, seed: int) -> FixedGraphNetwork:
    return tabulate_radial(float64_network(name, seed))[0]


def _frame_by_frame(graph, frames, feats):
    with torch.no_grad():
        return torch.cat(
            [graph(frames[i : i + 1], None if feats is None else feats[i : i + 1]) for i in range(len(frames))]
        )


@pytest.mark.parametrize("name", ["history", "l2"])  # 5 vector node inputs; l = 2 paths (no node input: below)
def test_float64_it_is_the_tabulated_network_to_rounding(name):
    """Every configuration (node features or none, l = 2 paths, two layers): coincident beads, pairs at and beyond
    max_radius included (probe_frames)."""
    table = _float64_table(name, seed=31)
    frames = probe_frames(torch.float64)
    feats = node_features(table.config, frames)
    with torch.no_grad():
        want = table(frames, feats)
    graph = SingleFrameGraph(table)
    got = _frame_by_frame(graph, frames, feats)
    # both configurations drop padding terms and run the output layer's neighbour sum after lin2
    terms = [sum(c.S * c.C * g.U * (2 * g.l1 + 1) for g in m.groups for c in g.classes) for m in table._metas]
    assert sum(spec["D"] for spec in graph._layers) < sum(terms)
    assert graph._layers[-1]["late"] and not graph._layers[1]["late"]
    assert float(want.abs().max()) > 0.05
    assert float((got - want).abs().max()) <= 1e-12 * max(1.0, float(want.abs().max())), name


def test_float32_onnx_matches_e3nns_network_and_has_few_nodes():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import io

    fixed, ref = pair_of("default")
    table, _ = tabulate_radial(copy.deepcopy(fixed))
    graph = SingleFrameGraph(table).eval()
    frames = probe_frames()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(graph, (frames[:1],), buf, dynamo=False, input_names=["pos"], opset_version=17)
    model = onnx.load_from_string(buf.getvalue())
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # static batch 1
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"pos": frames[i : i + 1].numpy()})[0] for i in range(len(frames))])
    want = reference_outputs(ref, frames, None).numpy()
    assert np.abs(got - want).max() <= F32_BOUND * max(1.0, float(np.abs(want).max()))
    ops = [n.op_type for n in model.graph.node if n.op_type != "Constant"]
    assert ops.count("ReduceSum") == 1  # the edge lengths'; every neighbour sum is a MatMul
    assert len(ops) <= 115, len(ops)  # the batched graph: 223 besides its Constants


def test_float64_equivariance_rotation_inversion_translation_permutation():
    table = _float64_table("default", seed=32)
    graph = SingleFrameGraph(table)
    frames = probe_frames(torch.float64)[:3]
    out = _frame_by_frame(graph, frames, None)
    for det in (1.0, -1.0):  # a rotation, then a rotation times the inversion
        rot = rotation(9) * det
        moved = _frame_by_frame(graph, frames @ rot.T + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64), None)
        assert float((moved - out @ rot.T).abs().max()) <= 1e-10
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(4))
    assert float((_frame_by_frame(graph, frames[:, perm], None) - out[:, perm]).abs().max()) <= 1e-10


def test_displacement_model_single_frame_form_is_scaled():
    model = DisplacementModel(CONFIGS["small"], scale=0.05).eval()
    perturb(model, seed=3)
    table, _ = tabulate_radial(model)
    form = table.single_frame_form().eval()
    frames = probe_frames()
    with torch.no_grad():
        want = table(frames)
        got = torch.cat([form(frames[i : i + 1]) for i in range(len(frames))])
    assert float((got - want).abs().max()) <= 1e-6 * max(1.0, float(want.abs().max()))


def test_velocity_model_single_frame_form_folds_both_scales():
    """The output scale and the node features' input scale, folded into the matrices, act as the model's do."""
    from e3traj.train._velocity import VelocityModel

    config = CONFIGS["velocity"]
    model = VelocityModel(config, scale=0.05, input_scale=0.02).eval()
    perturb(model, seed=5)
    table, _ = tabulate_radial(model)
    form = table.single_frame_form().eval()
    frames = probe_frames()
    prev = 0.02 * node_features(config, frames)
    with torch.no_grad():
        want = table(frames, prev)
    got = _frame_by_frame(form, frames, prev)
    assert float(want.abs().max()) > 1e-4
    assert float((got - want).abs().max()) <= 1e-6 * max(1.0, float(want.abs().max()))
    unscaled = _frame_by_frame(SingleFrameGraph(table.net), frames, prev / 0.02) * 0.05
    assert float((got - unscaled).abs().max()) <= 1e-6 * max(1.0, float(want.abs().max()))


def _with_any_table(config) -> FixedGraphNetwork:
    """A network with a zero radial table of the right shape (the refusals need no accurate one)."""
    fixed = FixedGraphNetwork(config)
    fixed._radial_table = torch.zeros(8, 4 * fixed._n_w_all)
    return fixed


def test_refusals():
    with pytest.raises(ValueError, match="needs the radial table"):
        SingleFrameGraph(FixedGraphNetwork(CONFIGS["small"]))
    with pytest.raises(ValueError, match="needs a FixedGraphNetwork, got Linear"):
        SingleFrameGraph(torch.nn.Linear(2, 2))
    graph = SingleFrameGraph(_with_any_table(CONFIGS["small"]))
    with pytest.raises(ValueError, match="takes one frame, got a batch of 2"):
        graph(probe_frames()[:2])
    with pytest.raises(ValueError, match="takes no node_features"):
        graph(probe_frames()[:1], torch.zeros(1, 12, 3))
    for bad in (0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"scale must be finite and non-zero, got {bad}"):
            SingleFrameGraph(_with_any_table(CONFIGS["small"]), scale=bad)
    with pytest.raises(ValueError, match="input_scale=0.5 given, but this network takes no node_features"):
        SingleFrameGraph(_with_any_table(CONFIGS["small"]), input_scale=0.5)
    velocity = SingleFrameGraph(_with_any_table(CONFIGS["velocity"]))
    with pytest.raises(ValueError, match="node_features of irreps '1x1o' are required"):
        velocity(probe_frames()[:1])
