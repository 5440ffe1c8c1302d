"""onnxruntime sessions for bundles: created from the verified bytes, quiet, and its errors as one line of ours."""

from __future__ import annotations

import os
import re

from ._errors import InputError
from ._manifest import _is_int, manifest_n_beads
from ._verify import _Verified

__all__ = ["make_session", "CHUNK"]

#: Frames per onnxruntime call. Larger batches are split into sub-batches of this size: the e3nn graph's
#: intermediates (a few hundred floats per edge and frame) then stay in the CPU caches. Measured on a 2-core AMD EPYC
#: with the committed sim-e3nn bundle (sparse tensor product), 1 thread, 1024 frames, medians of 9 interleaved
#: rounds: whole batch 3,021 frames/s, chunks of 256 3,613, 64 5,323, 32 5,940, 16 5,579, 8 5,602 (noisy
#: machine: the ranges overlap from 64 down; 32 is best or within noise of it).
CHUNK = 32

_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64"}


_ORT_QUIET = False


def _quiet_onnxruntime(ort) -> None:
    """onnxruntime's own logger prints errors and warnings to stderr; ours say it in one line instead."""
    global _ORT_QUIET
    if not _ORT_QUIET:
        ort.set_default_logger_severity(4)
        _ORT_QUIET = True


def _run_failed(where: str, exc: BaseException) -> InputError:
    return InputError(
        f"{where}: onnxruntime failed while running the model: {_clean_ort_error(exc)}; re-export the bundle"
    )


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _clean_ort_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    if len(text) > 160:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
        for s in reversed(sentences):
            if 10 < len(s) <= 200:
                return s
        return text[-160:]
    return text


def make_session(verified: _Verified, single_frame: bool = False):
    """A CPU onnxruntime session of the verified ONNX bytes, checked against the manifest's inputs and outputs.

    ``single_frame``: the bundle's single-frame graph (``onnx.single_frame``), whose inputs have batch 1; otherwise
    the batched graph, whose batch must be dynamic.
    """
    import onnxruntime as ort

    _quiet_onnxruntime(ort)
    manifest = verified.manifest
    onnx_file = manifest["onnx"]["single_frame"]["file"] if single_frame else manifest["onnx"]["file"]
    where = f"{verified.label}/{onnx_file}"
    data = bytes(verified.files[onnx_file])  # the verified bytes themselves
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 4  # fatal only: errors reach the user as one line of ours
    # one thread per call (no intra-op pool: no spin-waiting, faster session creation); see open(threads=)
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        onnx = manifest["onnx"]
        raise InputError(
            f"{where}: onnxruntime {ort.__version__} cannot load it (opset {onnx.get('opset', '?')}, IR "
            f"{onnx.get('ir_version', '?')}): {_clean_ort_error(exc)}; upgrade onnxruntime or re-export"
        ) from None
    sess_inputs = {i.name: i for i in session.get_inputs()}
    sess_outputs = [o.name for o in session.get_outputs()]
    names = [i["name"] for i in manifest["inputs"]]
    if set(sess_inputs) != set(names):
        raise InputError(
            f"{where}: model inputs {sorted(sess_inputs)} differ from the manifest's {sorted(names)}; re-export"
        )
    out_name = manifest["outputs"][0]["name"]
    if out_name not in sess_outputs:
        raise InputError(f"{where}: model outputs {sess_outputs} lack the manifest's {out_name!r}; re-export")
    for spec in manifest["inputs"]:
        info = sess_inputs[spec["name"]]
        shape = list(info.shape)
        want = spec.get("dtype", "float32")
        if _ORT_TYPES.get(info.type) != want:
            raise InputError(f"{where}: input {info.name!r} has type {info.type}, the manifest says {want}")
        n = manifest_n_beads(manifest)
        rest = [n, 3] if spec["meaning"] != "previous_displacements" else [spec["shape"][1], n, 3]
        if len(shape) != 1 + len(rest) or shape[1:] != rest:
            want_s = ", ".join(["batch"] + [str(d) for d in rest])
            raise InputError(f"{where}: input {info.name!r} has shape {shape}; expected ({want_s})")
        if single_frame:
            if shape[0] != 1:
                raise InputError(f"{where}: input {info.name!r} has batch {shape[0]}; the single-frame graph takes 1")
        elif _is_int(shape[0]):
            raise InputError(
                f"{where}: input {info.name!r} has a fixed batch size {shape[0]}; re-export with a dynamic batch"
            )
    return session
