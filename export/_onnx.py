"""The ONNX format of a bundle: torch.onnx export, the graph's checks and metadata, and onnxruntime sessions of it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from e3traj.runtime import CheckFailed
from e3traj.runtime import contract as C

__all__ = ["FORBIDDEN_OPS"]

INPUT = C.POSITIONS
OUTPUT = C.OUTPUT_NAME
FORBIDDEN_OPS = {"NonZero", "Loop", "If", "Scan"}


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return sess.run([OUTPUT], {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()})[0]


def _eager(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for v in inputs.values())).numpy()


def _parity(
    run: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: dict[str, np.ndarray], ref: np.ndarray
) -> float:
    """Max abs error over the whole batch and over single frames (batch 1)."""
    err = float(np.max(np.abs(run(inputs).astype(np.float64) - ref)))
    for i in range(min(4, len(ref))):
        one = {k: v[i : i + 1] for k, v in inputs.items()}
        err = max(err, float(np.max(np.abs(run(one).astype(np.float64) - ref[i : i + 1]))))
    return err


def _torch_export(
    model: torch.nn.Module,
    x: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    dynamo: bool,
    names: list[str] | None = None,
    dynamic_batch: bool = True,
) -> None:
    names = names or [INPUT]
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        prog = torch.onnx.export(
            model,
            tuple(x),
            dynamo=True,
            input_names=names,
            output_names=[OUTPUT],
            dynamic_shapes=tuple({0: batch} for _ in names),
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
        prog.save(str(path), external_data=False)
    else:
        torch.onnx.export(
            model,
            tuple(x),
            str(path),
            dynamo=False,
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT: {0: "batch"}} if dynamic_batch else None,
            opset_version=opset,
            do_constant_folding=True,
        )


def _finish_onnx(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """Inline any external data, refuse forbidden ops, run the full checker, add metadata_props."""
    model = onnx.load(str(path), load_external_data=True)
    ops = {n.op_type for n in model.graph.node}
    bad = sorted(ops & FORBIDDEN_OPS)
    if bad:
        raise CheckFailed(f"{path.name}: the exported graph contains {', '.join(bad)} (data-dependent); not written")
    del model.metadata_props[:]
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    for extra in path.parent.glob(path.name + "*.data"):
        extra.unlink()
    for f in path.parent.iterdir():
        if f.suffix == ".data":
            f.unlink()
    onnx.save_model(model, str(path), save_as_external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    return {
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "ir_version": int(model.ir_version),
        "nodes": len(model.graph.node),
        "op_types": sorted(ops),
    }


def _metadata_props(manifest: dict[str, Any]) -> dict[str, str]:
    """Key manifest fields mirrored into the ONNX file, for Netron and other ONNX tools."""
    m = manifest["model"]
    return {
        "e3traj.format": f"{manifest['format']}/{manifest['format_version']}",
        "e3traj.version": manifest["e3traj_version"],
        "e3traj.kind": m["kind"],
        "e3traj.equivariant": str(m["equivariant"]).lower(),
        "e3traj.output_meaning": manifest["outputs"][0]["meaning"],
        "e3traj.num_nodes": str(m["num_nodes"]),
        "e3traj.hyperparameters": json.dumps(m["hyperparameters"], sort_keys=True),
        "e3traj.training_data_sha256": str(manifest["training"]["data_sha256"]),
    }


class _quiet:
    """Silence torch.onnx's warnings and progress chatter on stdout/stderr during export."""

    def __enter__(self):
        import contextlib
        import warnings

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        self._stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False
