"""Measure a bundle's throughput and latency on this CPU, beside the machine's own matmul speed (numpy + onnxruntime).

The roofline and the MatMul work per frame are :mod:`e3traj.runtime._flops`'s.

* **Throughput.** :func:`bench_bundle` opens the bundle once per thread count (timing :meth:`Bundle.open`: hashing,
  checks and the onnxruntime session), then times :meth:`Bundle.predict` per batch size (median of repeats) and
  the rollout loop at B = 1 (:func:`~e3traj.runtime.rollout`, per step). Fraction of roofline is
  ``frames/s * flops_per_frame / (roofline * threads)``.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import UsageError
from ._flops import matmul_flops_per_frame, matmul_roofline, reference_flops

__all__ = [
    "median_time",
    "bench_bundle",
    "bundle_size",
    "machine_info",
    "format_rows",
]


# --------------------------------------------------------------------------------------------- roofline


# --------------------------------------------------------------------------------------------- FLOPs from the graph


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

    batch_sizes = _check_list("batch_sizes", batch_sizes)
    threads = _check_list("threads", threads)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UsageError(f"repeats: got {repeats!r}; pass a positive integer")
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"seconds: got {seconds!r}; pass a positive number")
    if isinstance(rollout_steps, bool) or not isinstance(rollout_steps, int) or rollout_steps < 0:
        raise UsageError(f"rollout_steps: got {rollout_steps!r}; pass a non-negative integer")
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
                    {i["name"]: bundle._input_shape(i["name"]) for i in bundle.inputs},
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
                h = bundle.history
                previous = np.stack([start - 1e-3 * (h - i) for i in range(h)], axis=1) if h else None
                times = []
                run_repeats = max(3, repeats)
                for _ in range(run_repeats):
                    t0 = time.perf_counter()
                    res = rollout(bundle, start, rollout_steps, previous=previous)
                    times.append((time.perf_counter() - t0) / max(res.steps_done, 1))
                row = _row("rollout", 1, statistics.median(times), 1, base)
                row["graph"] = "single-frame" if bundle.has_single_frame else "batched"  # which graph rollout ran
                rows.append(row)
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
