"""Fixtures that build small ONNX bundles without torch (with ``onnx.helper``) and drive the host CLI.

Bundles:
- ``toy``: y = 0.01 (centroid(x) - x), meaning ``displacement``; exactly E(3)- and permutation-equivariant.
- ``baseline``: y = x @ W + b, meaning ``next_positions``, ``equivariant: false`` (like the chapter's baseline).
- ``velocity``: y = 0.01 (centroid(x) - x) + 0.1 v, inputs positions + previous_displacement,
  meaning ``velocity_correction``.
- ``blowup``: y = 1e30 x, meaning ``displacement``: overflows float32 to Inf at the second step (rows that
  start at exactly 0 stay finite).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from e3traj.runtime import build_manifest, write_manifest

# onnx is imported inside the builders only, so merely collecting these tests does not load it
# (a no-torch/no-onnx check elsewhere may look at sys.modules).

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
}
INPUT_NAMES = {"positions": "positions", "previous_displacement": "previous_displacement"}


def _vi(name: str, batch="batch"):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, N, 3])


def build_model(kind: str, *, opset: int = OPSET, batch="batch"):
    """The ONNX graph (``onnx.ModelProto``) of one toy kind (opset 17, dynamic batch unless ``batch`` is an int)."""
    from onnx import helper, numpy_helper

    inits = []
    if kind in ("toy", "velocity"):
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


def reference(kind: str, x: np.ndarray, v: np.ndarray | None = None) -> np.ndarray:
    """The model's output computed with numpy in float32 (float64 result).

    Shapes: ``x``, ``v`` ``(B, 12, 3)`` -> ``(B, 12, 3)``.
    """
    x32 = np.asarray(x, dtype=np.float32)
    if kind == "toy":
        return (np.float32(0.01) * (x32.mean(axis=1, keepdims=True) - x32)).astype(np.float64)
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


def manifest_for(kind: str, *, example_atol: float = 1e-5) -> dict:
    """The toy's manifest, made by the format's own builder (as export makes a real one)."""
    import onnx

    model_kind, equivariant, meaning, in_meanings = KINDS[kind]
    return build_manifest(
        kind=model_kind,
        equivariant=equivariant,
        inputs=in_meanings,
        output=meaning,
        model={"hyperparameters": {"toy": kind, "layers": 0}, "target_scale": 1.0},
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
) -> Path:
    """Write model.onnx + example.npz + manifest.json (via ``write_manifest``) into ``directory``."""
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
    frames = make_traj(12, seed=1, dim=3 if kind == "velocity" else 2)
    frames = np.concatenate([frames, np.zeros(frames.shape[:2] + (3 - frames.shape[2],))], axis=-1)
    x = frames[1:9]
    arrays = {"positions": x.astype(np.float32)}
    v = None
    if kind == "velocity":
        v = frames[1:9] - frames[0:8]
        arrays["previous_displacement"] = v.astype(np.float32)
    arrays["prediction"] = reference(kind, x, v).astype(np.float32)
    np.savez(directory / "example.npz", **arrays)
    manifest = manifest_for(kind, example_atol=example_atol)
    if manifest_extra:
        manifest.update(manifest_extra)
    write_manifest(directory, manifest)
    return directory


def rehash(directory: Path) -> dict:
    """Re-list every file of ``directory`` in its manifest (so only deeper checks can catch a tampered file)."""
    manifest = json.loads((Path(directory) / "manifest.json").read_text())
    return write_manifest(directory, manifest)


@pytest.fixture
def make_bundle(tmp_path):
    """Factory: ``make_bundle(kind="toy", name=None, **kw) -> Path`` of a fresh bundle folder under tmp_path."""
    counter = {"n": 0}

    def _make(kind: str = "toy", name: str | None = None, **kw) -> Path:
        counter["n"] += 1
        return write_bundle(tmp_path / (name or f"{kind}-bundle-{counter['n']}"), kind, **kw)

    return _make


@pytest.fixture
def toy_bundle(make_bundle) -> Path:
    return make_bundle("toy", "toy")


@pytest.fixture
def baseline_bundle(make_bundle) -> Path:
    return make_bundle("baseline", "baseline")


@pytest.fixture
def velocity_bundle(make_bundle) -> Path:
    return make_bundle("velocity", "velocity")


@pytest.fixture
def blowup_bundle(make_bundle) -> Path:
    return make_bundle("blowup", "blowup")


@pytest.fixture
def traj_file(tmp_path) -> Path:
    """A 20-frame planar trajectory in the dmol-book format (.npz, key 'arr', shape (20, 12, 2))."""
    path = tmp_path / "init.npz"
    np.savez(path, arr=make_traj(20, seed=3, dim=2))
    return path


@pytest.fixture
def cli():
    """Run ``e3traj ARGS...`` in-process; returns click's Result (stdout and stderr kept apart)."""
    from e3traj.runtime.cli import main

    runner = CliRunner()

    def _run(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=True)

    return _run


def _assert_cli_error(result, code: int, *fragments: str) -> str:
    """Assert a CLI failure: exit ``code``, exactly one ``Error: ...`` line on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: "), lines[0]
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


@pytest.fixture
def cli_error():
    """``cli_error(result, code, *fragments) -> str``: assert a one-line error with that exit code."""
    return _assert_cli_error


@pytest.fixture
def one_line():
    """``one_line(exc_info, *fragments)``: assert an E3TrajError message is one line containing the fragments."""

    def _check(excinfo, *fragments):
        msg = str(excinfo.value)
        assert "\n" not in msg, msg
        for frag in fragments:
            assert frag in msg, (frag, msg)
        return msg

    return _check


@pytest.fixture
def no_leftovers():
    """``no_leftovers(folder, *names)``: assert none of ``names`` nor any atomic temp file exists in ``folder``."""

    def _check(folder, *names):
        folder = Path(folder)
        for name in names:
            assert not (folder / name).exists(), name
        temps = [n for n in os.listdir(folder) if n.startswith(".") and not n.startswith(".pytest")]
        assert not temps, temps

    return _check


class _Toys:
    """The builders above, handed to tests as a fixture (tests cannot import conftest under importlib mode)."""

    KINDS = KINDS
    W = W
    B = B
    build_model = staticmethod(build_model)
    reference = staticmethod(reference)
    make_traj = staticmethod(make_traj)
    manifest_for = staticmethod(manifest_for)
    write_bundle = staticmethod(write_bundle)
    rehash = staticmethod(rehash)


@pytest.fixture
def toys() -> type[_Toys]:
    """Namespace of the bundle builders: ``build_model``, ``reference``, ``make_traj``, ``write_bundle``, ``rehash``."""
    return _Toys
