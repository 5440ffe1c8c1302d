"""Measure a bundle's throughput and latency on this CPU, beside the machine's own matmul speed (numpy + onnxruntime).

* **Roofline.** :func:`matmul_roofline` times numpy float32 matmuls at the shapes the e3nn graph runs (the radial
  MLP on a sub-batch of pairs, the node-feature linear maps) and returns the best median GFLOP/s. numpy is pinned
  to one BLAS thread by running the measurement in a child process with ``OPENBLAS_NUM_THREADS``,
  ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` set (threadpoolctl is not a dependency); the child inherits this
  interpreter, so it uses the same numpy and BLAS.
* **Work per frame.** :func:`matmul_flops_per_frame` counts ``2 M N K`` over every MatMul/Gemm the ONNX graph
  executes, without the ``onnx`` package: the graph's nodes, initializers and constants are read from the protobuf
  wire format, and the shapes of the computed operands come from onnxruntime's own profiler on the unoptimised
  graph at two batch sizes (the difference over the batch difference is the per-frame work).
* **Throughput.** :func:`bench_bundle` opens the bundle once per thread count (timing :meth:`Bundle.open`: hashing,
  checks and the onnxruntime session), then times :meth:`Bundle.predict` per batch size (median of repeats) and
  the rollout loop at B = 1 (:func:`~e3traj.runtime.rollout`, per step). Fraction of roofline is
  ``frames/s * flops_per_frame / (roofline * threads)``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._data import N_BEADS
from ._errors import InputError, UsageError
from ._onnx_wire import _fields, _ProtoError

__all__ = [
    "ROOFLINE_SHAPES",
    "matmul_roofline",
    "matmul_roofline_detail",
    "median_time",
    "matmul_flops_per_frame",
    "reference_flops",
    "bench_bundle",
    "bundle_size",
    "machine_info",
    "format_rows",
]

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


# --------------------------------------------------------------------------------------------- roofline


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


# --------------------------------------------------------------------------------------------- FLOPs from the graph


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
    model: str | os.PathLike | bytes, input_names: Sequence[str] = ("positions",), *, where: str | None = None
) -> float:
    """MatMul/Gemm FLOPs (``2 M N K``) per frame of an ONNX model with inputs ``(batch, 12, 3)``.

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
        feed = {n: rng.normal(size=(batch, N_BEADS, 3)).astype(np.float32) for n in input_names}
        counts.append(_matmul_flops(nodes, consts, _profile_shapes(data, feed, where)))
    return (counts[1] - counts[0]) / 4.0


# --------------------------------------------------------------------------------------------- throughput


def bundle_size(path: str | os.PathLike) -> int:
    """Bytes of a bundle: the sum of its regular files (a folder) or the archive's size."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.iterdir() if f.is_file())
    return p.stat().st_size


def median_time(fn, inner: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean seconds per call of ``fn`` over ``inner`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def _inner_for(fn, budget: float) -> int:
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    return max(1, int(budget / one))


def _frames_like(example: dict[str, np.ndarray], batch: int, seed: int) -> dict[str, np.ndarray]:
    """``batch`` frames near the bundle's example frames (tiled, with a small jitter)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, arr in example.items():
        idx = np.arange(batch) % len(arr)
        scale = 0.01 * max(float(np.std(arr)), 1e-3)
        out[name] = arr[idx] + rng.normal(scale=scale, size=(batch,) + arr.shape[1:])
    return out


def _check_list(name: str, values: Sequence[int]) -> list[int]:
    vals = list(values)
    if not vals or any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in vals):
        raise UsageError(f"{name}: got {values!r}; pass positive integers")
    return [int(v) for v in vals]


def bench_bundle(
    bundle_path: str | os.PathLike,
    batch_sizes: Sequence[int] = (1, 64, 256, 1024),
    threads: Sequence[int] = (1, 2),
    repeats: int = 5,
    seconds: float = 0.5,
    rollout_steps: int = 100,
    roofline: float | None = None,
    flops_per_frame: float | None = None,
) -> list[dict[str, Any]]:
    """Time ``Bundle.predict`` per (threads, batch) and the B = 1 rollout loop per thread count.

    Args:
        bundle_path: bundle folder or ``.tar.gz``.
        batch_sizes: frames per ``predict`` call.
        threads: onnxruntime intra-op thread counts.
        repeats: timed repeats per setting (the median is reported).
        seconds: time budget of one setting (split over the repeats).
        rollout_steps: steps of each timed B = 1 rollout (0: no rollout rows).
        roofline: single-thread GFLOP/s to compare with (default: :func:`matmul_roofline` measured now).
        flops_per_frame: MatMul FLOPs per frame (default: counted from the graph).

    Returns:
        One dict per row with keys ``mode`` (``predict`` | ``rollout``), ``threads``, ``batch``, ``latency_ms``
        (per call; per step for a rollout), ``frames_per_s``, ``us_per_frame``, ``gflops``, ``roofline_fraction``
        (vs ``roofline * threads``), ``open_s`` (median :meth:`Bundle.open` time), ``bundle_bytes``,
        ``flops_per_frame``, ``roofline_gflops``; ``reference_flops_per_frame`` (e3nn's own Network's work per frame,
        from the manifest; None for bundles without it) and ``reference_roofline_fraction`` (the roofline fraction
        by that work, the Performance issue's definition; None likewise).
    """
    from ._bundle import Bundle
    from ._rollout import rollout

    batch_sizes = _check_list("--batch-sizes", batch_sizes)
    threads = _check_list("--threads", threads)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UsageError(f"--repeats: got {repeats!r}; pass a positive integer")
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"--seconds: got {seconds!r}; pass a positive number")
    if isinstance(rollout_steps, bool) or not isinstance(rollout_steps, int) or rollout_steps < 0:
        raise UsageError(f"--rollout-steps: got {rollout_steps!r}; pass a non-negative integer")
    size = bundle_size(bundle_path)
    rows: list[dict[str, Any]] = []
    for n_threads in threads:
        open_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            bundle = Bundle.open(bundle_path, threads=n_threads)
            open_times.append(time.perf_counter() - t0)
            if len(open_times) < 3:
                bundle.close()
        open_s = statistics.median(open_times)
        with bundle:
            if flops_per_frame is None:
                onnx_bytes = bundle.file_bytes(bundle.manifest["onnx"]["file"])
                flops_per_frame = matmul_flops_per_frame(
                    onnx_bytes,
                    [i["name"] for i in bundle.inputs],
                    where=f"{bundle_path}/{bundle.manifest['onnx']['file']}",
                )
            if roofline is None:
                roofline = matmul_roofline(seconds=max(0.3, seconds))
            example, _ = bundle.load_example()
            base = dict(threads=n_threads, open_s=open_s, bundle_bytes=size, flops_per_frame=flops_per_frame)
            base["roofline_gflops"] = roofline
            base["reference_flops_per_frame"] = reference_flops(bundle.manifest)
            for batch in batch_sizes:
                feed = _frames_like(example, batch, seed=batch)
                fn = lambda feed=feed, b=bundle: b.predict(feed)  # noqa: E731
                inner = _inner_for(fn, seconds / repeats)
                dt = median_time(fn, inner, repeats)
                rows.append(_row("predict", batch, dt, batch, base))
            if rollout_steps:
                pos_name = next(n for n, m in bundle.input_meanings.items() if m == "positions")
                start = _frames_like({pos_name: example[pos_name]}, 1, seed=7)[pos_name]
                previous = start - 1e-3 if bundle.needs_previous else None
                times = []
                run_repeats = max(3, repeats)
                for _ in range(run_repeats):
                    t0 = time.perf_counter()
                    res = rollout(bundle, start, rollout_steps, previous=previous)
                    times.append((time.perf_counter() - t0) / max(res.steps_done, 1))
                rows.append(_row("rollout", 1, statistics.median(times), 1, base))
    return rows


def _row(mode: str, batch: int, dt: float, frames: int, base: dict[str, Any]) -> dict[str, Any]:
    fps = frames / dt
    gflops = fps * base["flops_per_frame"] / 1e9
    return {
        "mode": mode,
        "batch": batch,
        "latency_ms": dt * 1e3,
        "frames_per_s": fps,
        "us_per_frame": 1e6 / fps,
        "gflops": gflops,
        "roofline_fraction": gflops / (base["roofline_gflops"] * base["threads"]),
        "reference_roofline_fraction": (
            None
            if base["reference_flops_per_frame"] is None
            else fps * base["reference_flops_per_frame"] / 1e9 / (base["roofline_gflops"] * base["threads"])
        ),
        **base,
    }


def reference_flops(manifest: dict[str, Any]) -> float | None:
    """``model.reference_flops_per_frame`` of a manifest (e3nn's own Network's work per frame, recorded at
    export), or None where absent or not a positive finite number."""
    model = manifest.get("model")
    value = model.get("reference_flops_per_frame") if isinstance(model, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


# --------------------------------------------------------------------------------------------- reporting


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what :mod:`platform` knows elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, load average and library versions of this host."""
    import onnxruntime

    cpu = cpu_model()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": load,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`bench_bundle` as an aligned text table."""
    ref = any(r.get("reference_roofline_fraction") is not None for r in rows)
    head = f"{'mode':8s} {'threads':>7s} {'batch':>6s} {'ms/call':>9s} {'frames/s':>9s} {'us/frame':>9s} "
    head += f"{'GFLOP/s':>8s} {'roofline':>8s}" + (f" {'(e3nn)':>8s}" if ref else "")
    lines = [head, "-" * len(head)]
    for r in rows:
        unit = "ms/step" if r["mode"] == "rollout" else ""
        frac = r.get("reference_roofline_fraction")
        lines.append(
            f"{r['mode']:8s} {r['threads']:7d} {r['batch']:6d} {r['latency_ms']:9.3f} {r['frames_per_s']:9.0f} "
            f"{r['us_per_frame']:9.1f} {r['gflops']:8.2f} {r['roofline_fraction'] * 100:7.1f}%"
            + ((f" {frac * 100:7.1f}%" if frac is not None else f" {'-':>8s}") if ref else "")
            + (f"  ({unit})" if unit else "")
        )
    return "\n".join(lines)
