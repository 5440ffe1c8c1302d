"""Small ONNX bundles built without torch (with ``onnx.helper``), shared by the tests as an importable module.

Bundles:
- ``toy``: y = 0.01 (centroid(x) - x), meaning ``displacement``; exactly E(3)- and permutation-equivariant.
- ``baseline``: y = x @ W + b, meaning ``next_positions``, ``equivariant: false`` (like the chapter's baseline).
- ``velocity``: y = 0.01 (centroid(x) - x) + 0.1 v, inputs positions + previous_displacement,
  meaning ``velocity_correction``.
- ``history``: y = 0.01 (centroid(x) - x) + mean_j w_j d_j with w = :data:`HISTORY_W` (unequal, so the order of
  the displacements matters), inputs positions + previous_displacements
  ``(B, 3, 12, 3)``, meaning ``ar_correction`` with the AR coefficients :data:`AR`.
- ``blowup``: y = 1e30 x, meaning ``displacement``: overflows float32 to Inf at the second step (rows that
  start at exactly 0 stay finite).

onnx is imported inside the builders only, so merely importing this module does not load it (a no-torch/no-onnx
check elsewhere may look at sys.modules).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from e3traj.runtime import build_manifest, write_manifest

N = 12
OPSET = 17
IR_VERSION = 8

W = np.array([[0.9, 0.1, 0.05], [-0.1, 0.95, 0.02], [0.03, -0.02, 0.9]], dtype=np.float32)
B = np.float32(0.01)

KINDS = {
    # name: (model.kind, equivariant, output meaning, input meanings)
    "toy": ("e3nn", True, "displacement", ["positions"]),
    "baseline": ("baseline", False, "next_positions", ["positions"]),
    "velocity": ("e3nn-velocity", True, "velocity_correction", ["positions", "previous_displacement"]),
    "blowup": ("e3nn", True, "displacement", ["positions"]),
    "history": ("e3nn-history", True, "ar_correction", ["positions", "previous_displacements"]),
}
#: The history toy's AR coefficients (one per previous displacement) and H.
AR = (2.2, -1.6, 0.4)
H = len(AR)
HISTORY_W = np.array([0.15, 0.05, -0.1], dtype=np.float32)
INPUT_NAMES = {"positions": "positions", "previous_displacement": "previous_displacement"}


def _vi(name: str, batch="batch"):
    from onnx import TensorProto, helper

    shape = [batch, H, N, 3] if name == "previous_displacements" else [batch, N, 3]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def build_model(kind: str, *, opset: int = OPSET, batch="batch"):
    """The ONNX graph (``onnx.ModelProto``) of one toy kind (opset 17, dynamic batch unless ``batch`` is an int)."""
    from onnx import helper, numpy_helper

    inits = []
    if kind == "history":
        inits += [
            numpy_helper.from_array(np.array(0.01, dtype=np.float32), "k_centroid"),
            numpy_helper.from_array(HISTORY_W.reshape(1, H, 1, 1), "w_history"),
        ]
        nodes = [
            helper.make_node("ReduceMean", ["positions"], ["centroid"], axes=[1], keepdims=1),
            helper.make_node("Sub", ["centroid", "positions"], ["rel"]),
            helper.make_node("Mul", ["rel", "k_centroid"], ["pull"]),
            helper.make_node("Mul", ["previous_displacements", "w_history"], ["weighted"]),
            helper.make_node("ReduceMean", ["weighted"], ["push"], axes=[1], keepdims=0),
            helper.make_node("Add", ["pull", "push"], ["prediction"]),
        ]
        inputs = [_vi("positions", batch), _vi("previous_displacements", batch)]
    elif kind in ("toy", "velocity"):
        inits.append(numpy_helper.from_array(np.array(0.01, dtype=np.float32), "k_centroid"))
        nodes = [
            helper.make_node("ReduceMean", ["positions"], ["centroid"], axes=[1], keepdims=1),
            helper.make_node("Sub", ["centroid", "positions"], ["rel"]),
            helper.make_node("Mul", ["rel", "k_centroid"], ["pull" if kind == "velocity" else "prediction"]),
        ]
        inputs = [_vi("positions", batch)]
        if kind == "velocity":
            inits.append(numpy_helper.from_array(np.array(0.1, dtype=np.float32), "k_velocity"))
            nodes += [
                helper.make_node("Mul", ["previous_displacement", "k_velocity"], ["push"]),
                helper.make_node("Add", ["pull", "push"], ["prediction"]),
            ]
            inputs.append(_vi("previous_displacement", batch))
    elif kind == "baseline":
        inits += [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array(B), "b")]
        nodes = [
            helper.make_node("MatMul", ["positions", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["prediction"]),
        ]
        inputs = [_vi("positions", batch)]
    elif kind == "blowup":
        inits.append(numpy_helper.from_array(np.array(1e30, dtype=np.float32), "big"))
        nodes = [helper.make_node("Mul", ["positions", "big"], ["prediction"])]
        inputs = [_vi("positions", batch)]
    else:  # pragma: no cover
        raise ValueError(kind)
    graph = helper.make_graph(nodes, f"e3traj_{kind}", inputs, [_vi("prediction", batch)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="e3traj-tests")
    model.ir_version = IR_VERSION
    return model


def build_fixed_batch_model(batch: int = 8):
    """A graph that declares a dynamic batch but reshapes to ``batch`` frames: onnxruntime fails at run time."""
    from onnx import TensorProto, helper, numpy_helper

    model = build_model("toy")
    shape = numpy_helper.from_array(np.array([batch, 12, 3], dtype=np.int64), "fixed_shape")
    graph = model.graph
    graph.initializer.append(shape)
    out = graph.node[-1].output[0]
    graph.node[-1].output[0] = "pre"
    graph.node.append(helper.make_node("Reshape", ["pre", "fixed_shape"], [out]))
    assert TensorProto.FLOAT  # the value infos stay (batch, 12, 3)
    return model


def reference(kind: str, x: np.ndarray, v: np.ndarray | None = None) -> np.ndarray:
    """The model's output computed with numpy in float32 (float64 result).

    Shapes: ``x``, ``v`` ``(B, 12, 3)`` (history: ``v`` ``(B, H, 12, 3)``) -> ``(B, 12, 3)``.
    """
    x32 = np.asarray(x, dtype=np.float32)
    if kind == "toy":
        return (np.float32(0.01) * (x32.mean(axis=1, keepdims=True) - x32)).astype(np.float64)
    if kind == "history":
        d32 = np.asarray(v, dtype=np.float32)
        pull = np.float32(0.01) * (x32.mean(axis=1, keepdims=True) - x32)
        return (pull + (HISTORY_W[None, :, None, None] * d32).mean(axis=1)).astype(np.float64)
    if kind == "velocity":
        v32 = np.asarray(v, dtype=np.float32)
        return (np.float32(0.01) * (x32.mean(axis=1, keepdims=True) - x32) + np.float32(0.1) * v32).astype(np.float64)
    if kind == "baseline":
        return (x32 @ W + B).astype(np.float64)
    if kind == "blowup":
        with np.errstate(over="ignore"):
            return (x32 * np.float32(1e30)).astype(np.float64)
    raise ValueError(kind)


def make_traj(frames: int = 24, seed: int = 0, dim: int = 2) -> np.ndarray:
    """A smooth zig-zag 12-bead chain drifting by a random walk. Shapes: ``(frames, 12, dim)`` float64."""
    rng = np.random.default_rng(seed)
    base = np.zeros((N, 3))
    base[:, 0] = np.arange(N) * 0.9
    base[:, 1] = 0.4 * (np.arange(N) % 2)
    if dim == 3:
        base[:, 2] = 0.3 * np.sin(np.arange(N))
    steps = rng.normal(scale=0.02, size=(frames, N, 3))
    if dim == 2:
        steps[..., 2] = 0.0
    traj = base + np.cumsum(steps, axis=0)
    return traj[..., :dim].copy()


def near_example(bundle, n: int, seed: int = 0) -> np.ndarray:
    """``n`` frames near an open bundle's example positions (cycled, plus 0.01 noise). Shapes: ``(n, 12, 3)``."""
    ex, _ = bundle.load_example()
    x = ex["positions"]
    rng = np.random.default_rng(seed)
    return x[np.arange(n) % len(x)] + rng.normal(scale=0.01, size=(n,) + x.shape[1:])


def manifest_for(kind: str, *, example_atol: float = 1e-5) -> dict:
    """The toy's manifest, made by the format's own builder (as export makes a real one)."""
    import onnx

    model_kind, equivariant, meaning, in_meanings = KINDS[kind]
    model = {"hyperparameters": {"toy": kind, "layers": 0}, "target_scale": 1.0}
    if kind == "history":
        model.update(ar_coefficients=list(AR), history_frames=H + 1)
    return build_manifest(
        history=H if kind == "history" else 0,
        kind=model_kind,
        equivariant=equivariant,
        inputs=in_meanings,
        output=meaning,
        model=model,
        onnx={
            "file": "model.onnx",
            "opset": OPSET,
            "ir_version": IR_VERSION,
            "min_onnxruntime": "1.17.0",
            "exporter": "onnx.helper (tests)",
        },
        example={"file": "example.npz", "atol": example_atol},
        training={"data_sha256": "0" * 64, "data_source": "sim", "metrics": {"val_mse": 0.001, "skill": 0.5}},
        versions={"onnx": onnx.__version__, "numpy": np.__version__},
        verification={"parity_max_abs": 0.0, "parity_frames": 8},
        created_utc="2026-01-01T00:00:00Z",
    )


def write_bundle(
    directory: Path,
    kind: str = "toy",
    *,
    external_data: bool = False,
    model=None,
    example_atol: float = 1e-5,
    manifest_extra: dict | None = None,
    single_frame=None,
) -> Path:
    """Write model.onnx + example.npz + manifest.json (via ``write_manifest``) into ``directory``.

    ``single_frame``: also a single-frame graph ``model_single.onnx`` (``onnx.single_frame``): a ModelProto, or
    True for the kind's own graph with batch 1."""
    import onnx

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else build_model(kind)
    if external_data:
        onnx.save_model(
            model,
            str(directory / "model.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="weights.bin",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(directory / "model.onnx"))
    frames = make_traj(12, seed=1, dim=3 if kind in ("velocity", "history") else 2)
    frames = np.concatenate([frames, np.zeros(frames.shape[:2] + (3 - frames.shape[2],))], axis=-1)
    x = frames[1:9]
    arrays = {"positions": x.astype(np.float32)}
    v = None
    if kind == "velocity":
        v = frames[1:9] - frames[0:8]
        arrays["previous_displacement"] = v.astype(np.float32)
    if kind == "history":
        x = frames[3:11]
        arrays["positions"] = x.astype(np.float32)
        v = np.stack([frames[4 - j : 12 - j] - frames[3 - j : 11 - j] for j in range(1, H + 1)], axis=1)
        arrays["previous_displacements"] = v.astype(np.float32)
    arrays["prediction"] = reference(kind, x, v).astype(np.float32)
    np.savez(directory / "example.npz", **arrays)
    manifest = manifest_for(kind, example_atol=example_atol)
    if single_frame is not None:
        single = build_model(kind, batch=1) if single_frame is True else single_frame
        onnx.save_model(single, str(directory / "model_single.onnx"))
        manifest["onnx"]["single_frame"] = {"file": "model_single.onnx", "batch": 1}
    if manifest_extra:
        manifest.update(manifest_extra)
    write_manifest(directory, manifest)
    return directory


def rehash(directory: Path) -> dict:
    """Re-list every file of ``directory`` in its manifest (so only deeper checks can catch a tampered file)."""
    manifest = json.loads((Path(directory) / "manifest.json").read_text())
    return write_manifest(directory, manifest)


def read_manifest(directory: Path) -> dict:
    """The parsed manifest.json of a bundle folder."""
    return json.loads((Path(directory) / "manifest.json").read_text())


def save_manifest(directory: Path, manifest: dict) -> None:
    """Write manifest.json as given (no re-hashing: see :func:`rehash` for that)."""
    (Path(directory) / "manifest.json").write_text(json.dumps(manifest))
