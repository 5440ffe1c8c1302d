"""Other ONNX forms of the e3nn network against the one export writes, and the onnxruntime primitives behind them.

Run: ``.venv/bin/python benchmarks/e3nn_forms.py [--repeats 7]`` (about a minute). The issue-21 question: which
form of the same function is faster in onnxruntime at B = 1, 8 and 32 (``Bundle.predict`` runs sub-batches of 32)?
One model, ``DisplacementModel(E3nnConfig())`` with seeded random (perturbed) weights and its radial MLPs as the
export's cubic table, is written with torch's TorchScript-based exporter (as ``e3traj export`` does) in these forms:

* ``export``: the form bundles hold (the training module with its table), dynamic batch;
* ``feature-first``: :class:`_e3nn_forms.E3nnGraph`, node tensors feature-first too, dynamic batch;
* ``export, batch fixed to 1``: the export form's bytes in a session told that the batch is 1
  (``add_free_dimension_override_by_name``);
* ``static B=1``: the export form traced for batch 1 only (shapes are constants to onnxruntime);
* ``static B=1, block sums``: that, with the neighbour sums as one MatMul each (:class:`_e3nn_forms.StaticBlockSums`);
* ``dispatch``: one graph holding ``export`` and ``feature-first``, an ``If`` on the batch size (B < 8: export);
* ``single-frame (shipped)``: :class:`e3traj.train._single.SingleFrameGraph`, the second graph e3nn bundles hold
  (``model_single.onnx``), which hosts run for single-start rollouts.

Every session has 1 thread and the runtime's settings; cases are timed in interleaved rounds and reported as
medians and as medians of per-round ratios to ``export`` at the same batch. Each form's largest difference from the
eager module is printed (the export gate's bound is 1e-5). A second table times single onnxruntime operators at
the shapes of the largest layer's neighbour sum. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from run import _frames, _ratio  # benchmarks/run.py: the simulator's frames, the median of per-round ratios

DISPATCH_BELOW = 8  # the dispatch form runs ``export`` for batches smaller than this


def _session(model_bytes: bytes, fixed_batch: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    if fixed_batch is not None:
        so.add_free_dimension_override_by_name("batch", fixed_batch)
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _export(module, x, dynamic: bool) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            buf,
            dynamo=False,
            input_names=["positions"],
            output_names=["out"],
            dynamic_axes={"positions": {0: "batch"}, "out": {0: "batch"}} if dynamic else None,
            opset_version=17,
        )
    return buf.getvalue()


def _dispatch(small: bytes, big: bytes) -> bytes:
    """One model: ``If(batch < DISPATCH_BELOW, small, big)``; the branches are the two graphs as they are."""
    import onnx
    from onnx import TensorProto, helper

    def branch(data: bytes, tag: str):
        g = onnx.load_from_string(data).graph
        outs = {o.name for o in g.output}
        for node in g.node:
            for i, o in enumerate(node.output):
                if o in outs:
                    node.output[i] = f"{o}_{tag}"
        values = [helper.make_tensor_value_info(f"{o.name}_{tag}", TensorProto.FLOAT, None) for o in g.output]
        return helper.make_graph(list(g.node), tag, [], values, list(g.initializer))

    ref = onnx.load_from_string(big)
    nodes = [
        helper.make_node("Shape", ["positions"], ["batch"], start=0, end=1),
        helper.make_node(
            "Constant", [], ["below"], value=helper.make_tensor("below", TensorProto.INT64, [1], [DISPATCH_BELOW])
        ),
        helper.make_node("Less", ["batch", "below"], ["small1"]),
        helper.make_node("Squeeze", ["small1"], ["small"]),
        helper.make_node("If", ["small"], ["out"], then_branch=branch(small, "small"), else_branch=branch(big, "big")),
    ]
    graph = helper.make_graph(nodes, "dispatch", list(ref.graph.input), list(ref.graph.output))
    model = helper.make_model(graph, opset_imports=ref.opset_import, ir_version=ref.ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _time(cases: dict, feed_of, repeats: int, budget: float = 0.15) -> dict[str, list[float]]:
    """Seconds per frame of each ``name -> (session, batch)``, one value per interleaved round."""
    calls = {}
    for name, (sess, b) in cases.items():
        feed = feed_of(b)
        sess.run(None, feed)
        t0 = time.perf_counter()
        sess.run(None, feed)
        calls[name] = max(1, int(budget / max(time.perf_counter() - t0, 1e-6)))
    out: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, (sess, b) in cases.items():
            feed = feed_of(b)
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                sess.run(None, feed)
            out[name].append((time.perf_counter() - t0) / (calls[name] * b))
    return out


def _primitives(repeats: int) -> list[tuple[str, str, float]]:
    """Microseconds per call of single operators at the largest layer's neighbour-sum shapes (90 rows, 11
    neighbours, n B = 12 and 384), each in a graph of 20 copies (the per-node cost is included)."""
    from onnx import TensorProto as T
    from onnx import helper
    from onnx import numpy_helper as nh

    def graph(nodes, inits, shape, copies):
        g = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", T.FLOAT, shape)],
            [helper.make_tensor_value_info(f"y{i}", T.FLOAT, None) for i in range(copies)],
            inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
        m.ir_version = 9
        return _session(m.SerializeToString())

    rows, k, copies = 90, 11, 20
    out = []
    for nb in (12, 384):
        variants = {
            "ReduceSum over k, (rows, k, nB)": (
                [rows, k, nb],
                [helper.make_node("ReduceSum", ["x", "axes"], [f"y{i}"], keepdims=0) for i in range(copies)],
                [nh.from_array(np.array([1], np.int64), "axes")],
            ),
            "MatMul ones(1, k) @ (k, rows nB)  [k outermost]": (
                [k, rows * nb],
                [helper.make_node("MatMul", ["ones", "x"], [f"y{i}"]) for i in range(copies)],
                [nh.from_array(np.ones((1, k), np.float32), "ones")],
            ),
            "MatMul (rows, k nB) @ tile(I_nB)  [static nB]": (
                [rows, k * nb],
                [helper.make_node("MatMul", ["x", "tile"], [f"y{i}"]) for i in range(copies)],
                [nh.from_array(np.tile(np.eye(nb, dtype=np.float32), (k, 1)), "tile")],
            ),
            "Mul x * x, (rows, k, nB)  [for scale]": (
                [rows, k, nb],
                [helper.make_node("Mul", ["x", "x"], [f"y{i}"]) for i in range(copies)],
                [],
            ),
        }
        sessions = {
            name: (graph(nodes, inits, shape, copies), shape) for name, (shape, nodes, inits) in variants.items()
        }
        rng = np.random.default_rng(0)
        feeds = {name: {"x": rng.random(shape, dtype=np.float32)} for name, (_, shape) in sessions.items()}
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for name, (s, _) in sessions.items():
            s.run(None, feeds[name])
        for _ in range(repeats):
            for name, (s, _) in sessions.items():
                t0 = time.perf_counter()
                for _ in range(200):
                    s.run(None, feeds[name])
                times[name].append((time.perf_counter() - t0) / (200 * copies))
        out += [(f"nB={nb}", name, statistics.median(t) * 1e6) for name, t in times.items()]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    import onnxruntime as ort
    import torch

    torch.set_num_threads(1)
    ort.set_default_logger_severity(4)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _e3nn_forms import E3nnGraph, StaticBlockSums

    from e3traj.runtime._bench import machine_info
    from e3traj.train import DisplacementModel, E3nnConfig
    from e3traj.train._radial import tabulate_radial
    from e3traj.train._single import SingleFrameGraph

    info = machine_info()
    frames = _frames(600).astype(np.float32)
    rng = np.random.default_rng(1)
    batch = frames[rng.integers(0, len(frames), 32)]
    torch.manual_seed(0)
    model = DisplacementModel(E3nnConfig(), scale=float(np.std(np.diff(frames, axis=0)))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    table, radial = tabulate_radial(model)
    net = table.net
    x1, x2 = torch.from_numpy(batch[:1]), torch.from_numpy(batch[:2])
    with torch.no_grad():
        want = model.net(torch.from_numpy(batch)).double().numpy()  # the eager module, its MLPs

    export_b = _export(net, x2, dynamic=True)
    ff_b = _export(E3nnGraph(net), x2, dynamic=True)
    forms = {
        "export": (export_b, None),
        "feature-first": (ff_b, None),
        "export, batch fixed to 1": (export_b, 1),
        "static B=1": (_export(net, x1, dynamic=False), 1),
        "static B=1, block sums": (_export(StaticBlockSums(net, 1), x1, dynamic=False), 1),
        "single-frame (shipped)": (_export(SingleFrameGraph(net), x1, dynamic=False), 1),
        "dispatch": (_dispatch(export_b, ff_b), None),
    }
    sessions = {
        name: (_session(data, 1 if name == "export, batch fixed to 1" else None), only)
        for name, (data, only) in forms.items()
    }
    import onnx

    nodes = {name: len(onnx.load_from_string(data).graph.node) for name, (data, _) in forms.items()}
    errors = {}
    for name, (s, only) in sessions.items():
        got = np.concatenate([s.run(None, {"positions": batch[i : i + 1]})[0] for i in range(len(batch))])
        if only is None:
            got = np.concatenate([got, s.run(None, {"positions": batch})[0]])
        errors[name] = float(np.abs(got.astype(np.float64) - np.concatenate([want, want])[: len(got)]).max())

    rows = []
    for b in (1, 8, 32):
        cases = {name: (s, b) for name, (s, only) in sessions.items() if only in (None, b)}
        t = _time(cases, lambda n: {"positions": batch[:n]}, args.repeats)
        rows += [(b, name, statistics.median(v), _ratio(v, t["export"])) for name, v in t.items()]
    prims = _primitives(args.repeats)

    print(f"machine   {info['cpu']}, {info['cores']} logical CPUs, load average {info['load_average']}")
    print(f"versions  onnxruntime {ort.__version__}, torch {torch.__version__}")
    print(f"model     DisplacementModel(E3nnConfig()), random weights; radial table {radial['intervals']} intervals")
    print("settings  1 thread, onnxruntime's default optimisation (ORT_ENABLE_ALL), medians of interleaved rounds")
    print()
    print(f"{'form':28s} {'nodes':>5s} {'max |diff|':>10s}")
    for name in forms:
        print(f"{name:28s} {nodes[name]:5d} {errors[name]:10.2e}")
    print("(nodes: in the exported graph, before onnxruntime's optimiser; max |diff|: against the eager module)")
    print()
    print(f"{'B':>3s} {'form':28s} {'us/frame':>9s} {'vs export':>9s}")
    for b, name, sec, ratio in rows:
        print(f"{b:3d} {name:28s} {sec * 1e6:9.1f} {ratio:8.3f}x")
    print("(vs export: median over rounds of this form's time / the export form's; below 1 is faster)")
    print()
    print(f"{'shape':7s} {'operator (20 per graph)':48s} {'us/call':>8s}")
    for shape, name, us in prims:
        print(f"{shape:7s} {name:48s} {us:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
