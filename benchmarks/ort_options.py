"""onnxruntime's optimisation levels and session options on a committed bundle, at B = 1 and B = 32, 1 thread.

Run: ``.venv/bin/python benchmarks/ort_options.py [--bundle artifacts/sim-e3nn] [--repeats 7]``. Every variant is
a session of the same ``model.onnx``; they are timed in interleaved rounds (``run_with_iobinding``, inputs and
output bound once, as the runtime's rollout step does) and reported as medians and as medians of per-round ratios
to the runtime's own settings (``ORT_ENABLE_ALL``, memory pattern and arena on, sequential, 1 thread). The node
count after each level's optimiser is read from the graph onnxruntime saves (``optimized_model_filepath``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "artifacts" / "sim-e3nn")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    import onnx
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    model = args.bundle / "model.onnx"
    level = ort.GraphOptimizationLevel

    def options(opt=level.ORT_ENABLE_ALL, mem_pattern=True, arena=True, spinning=None, saved=None):
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = opt
        so.enable_mem_pattern, so.enable_cpu_mem_arena = mem_pattern, arena
        so.log_severity_level = 4
        if spinning is not None:
            so.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        if saved is not None:
            so.optimized_model_filepath = str(saved)
        return so

    with tempfile.TemporaryDirectory() as tmp:
        nodes = {"as exported (Constant nodes included)": len(onnx.load(str(model)).graph.node)}
        for name, opt in (("BASIC", level.ORT_ENABLE_BASIC), ("EXTENDED", level.ORT_ENABLE_EXTENDED)):
            path = Path(tmp) / f"{name}.onnx"
            ort.InferenceSession(str(model), options(opt, saved=path), providers=["CPUExecutionProvider"])
            nodes[f"after {name}"] = len(onnx.load(str(path)).graph.node)
        pre = Path(tmp) / "ALL.onnx"
        ort.InferenceSession(str(model), options(saved=pre), providers=["CPUExecutionProvider"])
        nodes["after ALL (CPU-specific fusions)"] = len(onnx.load(str(pre)).graph.node)
        variants = {
            "runtime's (ALL)": (model, options()),
            "EXTENDED": (model, options(level.ORT_ENABLE_EXTENDED)),
            "BASIC": (model, options(level.ORT_ENABLE_BASIC)),
            "no optimisation": (model, options(level.ORT_DISABLE_ALL)),
            "memory pattern off": (model, options(mem_pattern=False)),
            "CPU arena off": (model, options(arena=False)),
            "allow_spinning 0": (model, options(spinning="0")),
            "pre-optimised file, ALL": (pre, options()),
        }
        sessions = {
            k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, (p, so) in variants.items()
        }
        first = next(iter(sessions.values()))
        ins = first.get_inputs()
        rng = np.random.default_rng(0)
        example = np.load(args.bundle / "example.npz", allow_pickle=False)
        rounds: dict[tuple[str, int], list[float]] = {}
        cases = {}
        for batch in (1, 32):
            feeds = {}
            for i in ins:
                src = example[i.name] if i.name in example.files else None
                shape = [batch] + [d for d in (src.shape[1:] if src is not None else i.shape[1:])]
                base = src[np.arange(batch) % len(src)] if src is not None else rng.normal(size=shape)
                feeds[i.name] = np.ascontiguousarray(base, dtype=np.float32)
            for name, sess in sessions.items():
                binding = sess.io_binding()
                for k, v in feeds.items():
                    binding.bind_cpu_input(k, v)
                binding.bind_output(sess.get_outputs()[0].name, "cpu")
                cases[(name, batch)] = (sess, binding, batch)
        for sess, binding, _ in cases.values():
            sess.run_with_iobinding(binding)
        for _ in range(args.repeats):
            for key, (sess, binding, _batch) in cases.items():
                calls, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < 0.2:
                    sess.run_with_iobinding(binding)
                    calls += 1
                rounds.setdefault(key, []).append((time.perf_counter() - t0) / calls)

    print(f"bundle    {args.bundle} (onnxruntime {ort.__version__}, 1 thread, medians of {args.repeats} rounds)")
    for k, v in nodes.items():
        print(f"nodes     {k}: {v}")
    print(f"\n{'variant':28s} {'B=1 us/call':>11s} {'ratio':>6s} {'B=32 us/frame':>13s} {'ratio':>6s}")
    base = "runtime's (ALL)"
    for name in variants:
        r1 = statistics.median(rounds[(name, 1)]) * 1e6
        r32 = statistics.median(rounds[(name, 32)]) * 1e6 / 32
        q1 = statistics.median(a / b for a, b in zip(rounds[(name, 1)], rounds[(base, 1)]))
        q32 = statistics.median(a / b for a, b in zip(rounds[(name, 32)], rounds[(base, 32)]))
        print(f"{name:28s} {r1:11.1f} {q1:5.3f}x {r32:13.2f} {q32:5.3f}x")
    print("\n(ratio: the variant's time / the runtime's settings' time in the same round; < 1 is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
