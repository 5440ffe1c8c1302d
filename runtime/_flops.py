"""The work a model does and what this machine could do: the matmul roofline and MatMul FLOPs per frame.

* **Roofline.** :func:`matmul_roofline` times numpy float32 matmuls at the shapes the e3nn graph runs (the radial
  MLP on a sub-batch of pairs, the node-feature linear maps) and returns the best median GFLOP/s. numpy is pinned
  to one BLAS thread by running the measurement in a child process with ``OPENBLAS_NUM_THREADS``,
  ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` set (threadpoolctl is not a dependency); the child inherits this
  interpreter, so it uses the same numpy and BLAS.
* **Work per frame.** :func:`matmul_flops_per_frame` counts ``2 M N K`` over every MatMul/Gemm the ONNX graph
  executes, without the ``onnx`` package: the graph's nodes, initializers and constants are read from the protobuf
  wire format, and the shapes of the computed operands come from onnxruntime's own profiler on the unoptimised
  graph at two batch sizes (the difference over the batch difference is the per-frame work).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._contract import DEFAULT_N_BEADS
from ._errors import InputError, UsageError
from ._onnx_wire import _fields, _ProtoError

__all__ = ["ROOFLINE_SHAPES", "matmul_roofline", "matmul_roofline_detail", "matmul_flops_per_frame", "reference_flops"]


#: ``(M, K, N)`` of numpy matmuls timed by :func:`matmul_roofline`: the radial MLP on a 64-frame sub-batch of the
#: 66 bead pairs (10 -> 128 -> 64) and a node linear map (150 -> 50 over 64 frames x 12 beads).
ROOFLINE_SHAPES: tuple[tuple[int, int, int], ...] = ((4224, 128, 64), (4224, 10, 128), (50, 150, 768))


_MATMUL_OPS = ("MatMul", "Gemm", "FusedMatMul")


_ROOFLINE_CHILD = r"""
import json, statistics, sys, time
import numpy as np
shapes, seconds = json.loads(sys.argv[1]), float(sys.argv[2])
rng = np.random.default_rng(0)
out = []
for m, k, n in shapes:
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.empty((m, n), dtype=np.float32)
    np.matmul(a, b, out=c)
    t0 = time.perf_counter()
    np.matmul(a, b, out=c)
    one = max(time.perf_counter() - t0, 1e-7)
    per_repeat = seconds / len(shapes) / 7
    inner = max(1, int(per_repeat / one))
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(inner):
            np.matmul(a, b, out=c)
        times.append((time.perf_counter() - t0) / inner)
    out.append(2.0 * m * k * n / statistics.median(times) / 1e9)
print(json.dumps(out))
"""


def matmul_roofline_detail(
    seconds: float = 1.0, threads: int = 1, shapes: Sequence[tuple[int, int, int]] = ROOFLINE_SHAPES
) -> dict[str, Any]:
    """numpy float32 matmul speed per shape, on ``threads`` BLAS threads (a child process; see the module doc).

    Returns ``{"gflops": best median GFLOP/s, "per_shape": [{"shape": (M, K, N), "gflops": ...}], "threads": ...,
    "pinned_by": "env OPENBLAS/OMP/MKL_NUM_THREADS in a child process"}``.

    Raises:
        UsageError: ``seconds`` <= 0 or ``threads`` < 1.
    """
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"roofline seconds: got {seconds!r}; pass a positive number")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UsageError(f"roofline threads: got {threads!r}; pass a positive integer")
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        env[var] = str(threads)
    shapes = [tuple(int(v) for v in s) for s in shapes]
    proc = subprocess.run(
        [sys.executable, "-c", _ROOFLINE_CHILD, json.dumps(shapes), repr(float(seconds))],
        env=env,
        capture_output=True,
        text=True,
        timeout=max(60.0, 20 * seconds),
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the numpy matmul measurement failed in its child process: {last}")
    gflops = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "gflops": max(gflops),
        "per_shape": [{"shape": s, "gflops": g} for s, g in zip(shapes, gflops)],
        "threads": threads,
        "pinned_by": "OPENBLAS_NUM_THREADS/OMP_NUM_THREADS/MKL_NUM_THREADS in a child process",
    }


def matmul_roofline(seconds: float = 1.0, threads: int = 1) -> float:
    """GFLOP/s of numpy float32 matmul on this machine at the model's shapes (best median over :data:`ROOFLINE_SHAPES`).

    numpy is pinned to ``threads`` BLAS threads by measuring in a child process with the thread variables set.
    """
    return float(matmul_roofline_detail(seconds, threads)["gflops"])


def _str(buf: memoryview, span: tuple[int, int]) -> str:
    return bytes(buf[span[0] : span[1]]).decode("utf-8", "replace")


def _tensor_dims(buf: memoryview, start: int, end: int) -> tuple[str, list[int]]:
    name, dims = "", []
    for field, wire, val in _fields(buf, start, end):
        if field == 1 and wire == 0:
            dims.append(val)
        elif field == 1 and wire == 2:  # packed dims
            for _f, _w, v in _fields_packed(buf, *val):
                dims.append(v)
        elif field == 8 and wire == 2:
            name = _str(buf, val)
    return name, dims


def _fields_packed(buf: memoryview, start: int, end: int):
    from ._onnx_wire import _varint

    pos = start
    while pos < end:
        val, pos = _varint(buf, pos, end)
        yield 1, 0, val


def _graph_tables(data: bytes) -> tuple[list[dict], dict[str, list[int]]]:
    """Nodes (name, op_type, inputs, int attributes) and the dims of every constant tensor, from the main graph."""
    buf = memoryview(data)
    nodes: list[dict] = []
    consts: dict[str, list[int]] = {}
    graph = None
    for field, wire, val in _fields(buf, 0, len(buf)):
        if field == 7 and wire == 2:
            graph = val
    if graph is None:
        raise _ProtoError("no graph")
    for field, wire, val in _fields(buf, *graph):
        if field == 5 and wire == 2:
            name, dims = _tensor_dims(buf, *val)
            consts[name] = dims
        elif field == 1 and wire == 2:
            node = {"name": "", "op": "", "inputs": [], "outputs": [], "ints": {}, "tensor": None}
            for f2, w2, v2 in _fields(buf, *val):
                if w2 != 2:
                    continue
                if f2 == 1:
                    node["inputs"].append(_str(buf, v2))
                elif f2 == 2:
                    node["outputs"].append(_str(buf, v2))
                elif f2 == 3:
                    node["name"] = _str(buf, v2)
                elif f2 == 4:
                    node["op"] = _str(buf, v2)
                elif f2 == 5:
                    aname, aint, atensor = "", None, None
                    for f3, w3, v3 in _fields(buf, *v2):
                        if f3 == 1 and w3 == 2:
                            aname = _str(buf, v3)
                        elif f3 == 3 and w3 == 0:
                            aint = v3
                        elif f3 == 5 and w3 == 2:
                            atensor = _tensor_dims(buf, *v3)[1]
                    if aint is not None:
                        node["ints"][aname] = aint
                    if atensor is not None and aname == "value":
                        node["tensor"] = atensor
            if node["op"] == "Constant" and node["tensor"] is not None and node["outputs"]:
                consts[node["outputs"][0]] = node["tensor"]
            nodes.append(node)
    return nodes, consts


def _profile_shapes(data: bytes, feed: dict[str, np.ndarray], where: str = "model") -> dict[str, dict]:
    """Per node name: onnxruntime's profiled input and output shapes (unoptimised graph, 1 thread)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="e3traj-bench-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4  # our one-line errors say it
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        try:
            sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
            sess.run(None, feed)
            events = json.loads(Path(sess.end_profiling()).read_text())
        except Exception as exc:  # onnxruntime's own error classes
            from ._session import _clean_ort_error

            raise InputError(
                f"{where}: onnxruntime failed while running the model to count its work: {_clean_ort_error(exc)}; "
                "re-export the bundle"
            ) from None
    shapes = {}
    for ev in events:
        args = ev.get("args", {})
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time") and args.get("op_name"):
            shapes[ev["name"][: -len("_kernel_time")]] = {
                "op": args["op_name"],
                "index": int(args.get("node_index", -1)),
                "inputs": [next(iter(s.values())) for s in args.get("input_type_shape", [])],
                "outputs": [next(iter(s.values())) for s in args.get("output_type_shape", [])],
            }
    return shapes


def _operand_shapes(node: dict, consts: dict[str, list[int]], listed: list[list[int]]) -> list:
    """Shapes of a node's inputs: onnxruntime lists them in order but leaves out constants it pre-packed."""
    names = node["inputs"]
    if len(listed) == len(names):
        return list(listed)
    n_omit = len(names) - len(listed)
    const_slots = [i for i, name in enumerate(names) if name in consts]
    for omit in itertools.combinations(const_slots, n_omit):
        shapes, it, ok = [], iter(listed), True
        for i, name in enumerate(names):
            if i in omit:
                shapes.append(consts[name])
                continue
            shape = next(it)
            if name in consts and list(consts[name]) != list(shape):
                ok = False
                break
            shapes.append(shape)
        if ok:
            return shapes
    raise InputError(f"node {node['name'] or node['op']!r}: cannot match its profiled input shapes {listed}")


def _matmul_flops(nodes: list[dict], consts: dict[str, list[int]], prof: dict[str, dict]) -> float:
    # unnamed nodes: onnxruntime makes up names; match them per op type in graph order
    named = {n["name"] for n in nodes if n["name"]}
    spare: dict[str, list[dict]] = {}
    for key, got in sorted(prof.items(), key=lambda kv: kv[1]["index"]):
        if key not in named:
            spare.setdefault(got["op"], []).append(got)
    total = 0.0
    for node in nodes:
        if node["op"] not in _MATMUL_OPS:
            continue
        got = prof.get(node["name"]) if node["name"] else None
        if got is None and not node["name"] and spare.get(node["op"]):
            got = spare[node["op"]].pop(0)
        if got is None or not got["outputs"]:
            raise InputError(f"node {node['name'] or node['op']!r} was not profiled; cannot count its FLOPs")
        out = got["outputs"][0]
        a, b = _operand_shapes(node, consts, got["inputs"])[:2]
        trans_a = node["ints"].get("transA", 0)
        if node["op"] == "Gemm":
            k = a[0] if trans_a else a[-1]
        else:  # MatMul / FusedMatMul: A (..., M, K) @ B (..., K, N)
            k = a[-2] if (trans_a and len(a) > 1) else a[-1]
        total += 2.0 * math.prod(out) * k
    return total


def matmul_flops_per_frame(
    model: str | os.PathLike | bytes,
    input_names: Sequence[str] | Mapping[str, tuple[int, ...]] = ("positions",),
    *,
    where: str | None = None,
) -> float:
    """MatMul/Gemm FLOPs (``2 M N K``) per frame of an ONNX model with inputs ``(batch, 12, 3)`` (or, given a
    mapping name -> per-frame shape, ``(batch, *shape)``).

    Counted at batch 1 and 5 with onnxruntime's profiler on the unoptimised graph; returns ``(F(5) - F(1)) / 4``.

    Raises:
        InputError: the file is not a parsable ONNX model or a MatMul was not profiled.
    """
    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    try:
        nodes, consts = _graph_tables(data)
    except _ProtoError as exc:
        where = where or ("model" if isinstance(model, bytes) else str(model))
        raise InputError(f"{where}: not a valid ONNX model ({exc}); re-export the bundle") from None
    where = where or ("model" if isinstance(model, bytes) else str(model))
    rng = np.random.default_rng(0)
    counts = []
    for batch in (1, 5):
        shapes = input_names if isinstance(input_names, Mapping) else {n: (DEFAULT_N_BEADS, 3) for n in input_names}
        feed = {n: rng.normal(size=(batch, *shape)).astype(np.float32) for n, shape in shapes.items()}
        counts.append(_matmul_flops(nodes, consts, _profile_shapes(data, feed, where)))
    return (counts[1] - counts[0]) / 4.0


def reference_flops(manifest: dict[str, Any]) -> float | None:
    """``model.reference_flops_per_frame`` of a manifest (e3nn's own Network's work per frame, recorded at
    export), or None where absent or not a positive finite number."""
    model = manifest.get("model")
    value = model.get("reference_flops_per_frame") if isinstance(model, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)
