"""The e3nn networks the train tests share: configurations, seeded weights, frames that probe the cutoff and
coincident beads, e3nn's own outputs, and an ONNX session of a model (an importable module, see pyproject)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from e3traj.train import E3nnConfig, FixedGraphNetwork, load_reference_weights

CONFIGS = {
    "default": E3nnConfig(),
    "small": E3nnConfig(irreps_hidden="2x0e + 2x1o", layers=2),
    "velocity": E3nnConfig(irreps_in="1x1o"),
    "history": E3nnConfig(irreps_in="5x1o"),  # e3nn-history at K = 5: 4 displacements and the head's vector
    # l = 2 features: paths with 5 terms per component and l1 = 2 groups (the sparse products' other patterns)
    "l2": E3nnConfig(irreps_hidden="2x0e + 2x1o + 2x2e + 1x2o", layers=2),
}


#: Relative float32 agreement of two implementations of the same network (the product's parity bar is 1e-5).
F32_BOUND = 1e-5


def perturb(module: torch.nn.Module, seed: int, amount: float = 0.15) -> None:
    """Random, non-default weights (so parity cannot hold by accident of the initialisation)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(amount * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def probe_frames(dtype=torch.float32) -> torch.Tensor:
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


def node_features(config: E3nnConfig, frames: torch.Tensor) -> torch.Tensor | None:
    if config.irreps_in is None:
        return None
    from e3nn import o3

    gen = torch.Generator().manual_seed(2)
    shape = (*frames.shape[:2], o3.Irreps(config.irreps_in).dim)
    return (0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(frames.dtype)


def reference_outputs(ref, frames: torch.Tensor, feats: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        outs = []
        for b in range(frames.shape[0]):
            data = {"pos": frames[b]}
            if feats is not None:
                data["x"] = feats[b]
            outs.append(ref(data))
    return torch.stack(outs)


_CACHE: dict[str, tuple[FixedGraphNetwork, torch.nn.Module]] = {}


def pair_of(name: str) -> tuple[FixedGraphNetwork, torch.nn.Module]:
    """(FixedGraphNetwork with perturbed weights, e3nn Network with the same weights), float32, built once.

    Tests must not modify them (deepcopy first).
    """
    if name not in _CACHE:
        torch.manual_seed(len(name))  # the initial weights too: the same model on every run and machine
        fixed = FixedGraphNetwork(CONFIGS[name])
        perturb(fixed, seed=len(name))
        _CACHE[name] = (fixed, load_reference_weights(fixed))
    return _CACHE[name]


def float64_network(name: str, seed: int) -> FixedGraphNetwork:
    """A FixedGraphNetwork of ``CONFIGS[name]`` built in float64 (e3nn's buffers too), with perturbed weights."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        fixed = FixedGraphNetwork(CONFIGS[name])
        perturb(fixed, seed=seed, amount=0.3)
    finally:
        torch.set_default_dtype(previous)
    return fixed


def rotation(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def onnx_session(model: torch.nn.Module):
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


def exact_radius_graph(pos, r_max, batch):
    """e3nn's radius_graph with exact distances: for more than 25 points torch.cdist switches to a matrix-product
    formula whose rounding leaves some self-distances at ~3e-8 > 0, so e3nn's own graph gains self-loops there."""
    r = torch.cdist(pos, pos, compute_mode="donot_use_mm_for_euclid_dist")
    index = ((r < r_max) & (r > 0)).nonzero().T
    return index[:, batch[index[0]] == batch[index[1]]]
