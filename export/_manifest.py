"""The manifest export writes: what the model is, how it was trained and verified (the format's reader is the
runtime's :mod:`e3traj.runtime._manifest`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from e3traj.runtime import build_manifest
from e3traj.runtime import contract as C
from e3traj.train import KINDS, checkpoint_n_beads

__all__ = ["MIN_ONNXRUNTIME"]

OUTPUT = C.OUTPUT_NAME
#: the oldest onnxruntime the bundles declare (IR version 10 / opset 18 need >= 1.17)
MIN_ONNXRUNTIME = "1.17.0"


def _versions() -> dict[str, str]:
    import e3nn

    return {
        "torch": torch.__version__,
        "e3nn": e3nn.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }


def _manifest(ckpt, kind, graph, exporter, s: Any, parity: float, n_frames: int) -> dict[str, Any]:
    """The bundle's manifest from the checkpoint and what export measured (the runtime's format builder)."""
    metrics = ckpt.get("metrics", {})
    hyper = dict(ckpt.get("config") or {})
    spec = ckpt.get("spec") or {}
    model_extra: dict[str, Any] = {"permutation": KINDS[kind].permutation}
    if ckpt.get("noise_scale") is not None:
        model_extra["noise_scale"] = float(ckpt["noise_scale"])  # per coordinate, fitted by noise_rule
        model_extra["noise_rule"] = str(ckpt.get("noise_rule", "residual"))
    if KINDS[kind].window:
        model_extra.update(
            history_frames=int(spec["history"]) + 1,
            ar_coefficients=[float(c) for c in spec["ar_coefficients"]],
            length_scale=float(spec["length_scale"]),
        )
    return build_manifest(
        history=int(spec.get("history", 0)),
        n_beads=checkpoint_n_beads(ckpt),
        kind=kind,
        equivariant=KINDS[kind].equivariant,
        inputs=KINDS[kind].inputs,
        output=KINDS[kind].output,
        model={
            "hyperparameters": hyper,
            "max_radius": hyper.get("max_radius"),
            "irreps": {k: hyper[k] for k in ("irreps_in", "irreps_hidden", "irreps_out") if k in hyper},
            "target_scale": float(ckpt.get("scale", 1.0)),
            "input_scale": float(ckpt.get("input_scale", 1.0)),
            **model_extra,
        },
        onnx={
            "file": "model.onnx",
            "opset": graph["opset"],
            "ir_version": graph["ir_version"],
            "min_onnxruntime": MIN_ONNXRUNTIME,
            "exporter": f"torch.onnx ({exporter})",
            "nodes": graph["nodes"],
            "op_types": graph["op_types"],
        },
        example={"file": "example.npz", "atol": s.parity_tol, "frames": n_frames},
        training={
            "data_sha256": ckpt.get("data", {}).get("sha256"),
            "data_file_sha256": ckpt.get("data", {}).get("file_sha256"),
            "data_source": ckpt.get("data", {}).get("source"),
            # several trajectories: every file's source, sha256 and frames (absent for one, as before)
            **({"data_files": ckpt["data"]["parts"]} if ckpt.get("data", {}).get("parts") else {}),
            "metrics": {
                k: metrics.get(k)
                for k in (
                    "val_mse",
                    "val_rmse",
                    "persistence_mse",
                    "constant_velocity_mse",
                    "constant_acceleration_mse",
                    "ar_mse",
                    "ar_order",
                    "ar_coefficients",
                    "best_baseline",
                    "best_baseline_mse",
                    "ratio_to_best",
                    "skill",
                    "best_epoch",
                )
                if k in metrics
            },
            "stopped_because": ckpt.get("stopped_because"),
            "history": ckpt.get("history", []),
        },
        versions=_versions(),
        verification={"parity_max_abs": parity, "parity_frames": n_frames, "parity_tolerance": s.parity_tol},
    )
