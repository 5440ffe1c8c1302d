"""Scratch benchmark: e3nn's Network vs FixedGraphNetwork (PyTorch), training step, ONNX export and onnxruntime.

Run: ``/work/main/.venv/bin/python benchmarks/model_forward.py [--quick]``. Everything is measured on 1 thread
(``torch.set_num_threads(1)``, onnxruntime intra/inter-op threads 1); each figure is the median of a few repeats.
Prints one table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from e3traj.runtime._bench import median_time
from e3traj.train import DisplacementModel, E3nnConfig, load_reference_weights


def _median_time(fn, n_inner: int, repeats: int = 5) -> float:
    fn()  # warm-up
    return median_time(fn, n_inner, repeats)


def _inner(batch: int, budget_frames: int) -> int:
    return max(2, budget_frames // batch)


def _export(model: DisplacementModel, path: Path, dynamo: bool) -> float:
    pos = torch.randn(3, 12, 3)
    kwargs = dict(input_names=["pos"], output_names=["displacement"], opset_version=18, dynamo=dynamo)
    if dynamo:
        kwargs.update(dynamic_shapes={"pos": {0: torch.export.Dim("batch")}}, external_data=False, verbose=False)
    else:
        kwargs.update(dynamic_axes={"pos": {0: "batch"}, "displacement": {0: "batch"}})
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (pos,), str(path), **kwargs)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    budget = 256 if args.quick else 1024
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows: list[tuple[str, str]] = []

    model = DisplacementModel(E3nnConfig(), scale=0.05).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    fixed = model.net
    ref = load_reference_weights(fixed).eval()

    # e3nn's own Network, one frame per call
    frame = torch.randn(12, 3) * 0.7
    with torch.no_grad():
        dt = _median_time(lambda: ref({"pos": frame}), 20)
    rows.append(("e3nn Network forward, 1 frame/call", f"{1 / dt:8.0f} frames/s  ({dt * 1e3:.2f} ms/frame)"))
    frame_r = frame.clone().requires_grad_(False)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-3)
    target1 = torch.randn(12, 3)

    def ref_step() -> None:
        opt_ref.zero_grad()
        loss = ((ref({"pos": frame_r}) - target1) ** 2).mean()
        loss.backward()
        opt_ref.step()

    dt = _median_time(ref_step, 10)
    rows.append(("e3nn Network train step, 1 frame", f"{1 / dt:8.0f} frames/s  ({dt * 1e3:.2f} ms/step)"))

    # FixedGraphNetwork forward
    for batch in (1, 64, 256):
        pos = torch.randn(batch, 12, 3) * 0.7
        with torch.no_grad():
            dt = _median_time(lambda pos=pos: fixed(pos), _inner(batch, budget))
        rows.append((f"FixedGraphNetwork forward, B={batch}", f"{batch / dt:8.0f} frames/s  ({dt * 1e3:.3f} ms/call)"))

    # training step (forward + backward + Adam) at B = 64
    train_net = DisplacementModel(E3nnConfig(), scale=0.05)
    opt = torch.optim.Adam(train_net.parameters(), lr=1e-3)
    pos = torch.randn(64, 12, 3) * 0.7
    target = torch.randn(64, 12, 3) * 0.05

    def step() -> None:
        opt.zero_grad()
        loss = ((train_net(pos) - target) ** 2).mean()
        loss.backward()
        opt.step()

    dt = _median_time(step, 5)
    rows.append(("train step fwd+bwd+Adam, B=64", f"{64 / dt:8.0f} frames/s  ({dt * 1e3:.2f} ms/step)"))

    # export and onnxruntime
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        for dynamo in (False, True):
            path = Path(tmp) / f"model_dynamo{int(dynamo)}.onnx"
            t_export = _export(model, path, dynamo)
            graph = onnx.load(str(path)).graph
            ops = Counter(node.op_type for node in graph.node)
            side = sorted(p.name for p in Path(tmp).iterdir() if p.suffix != ".onnx")
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            errs = []
            for batch in (1, 7):
                p = torch.randn(batch, 12, 3) * 0.7
                with torch.no_grad():
                    want = model(p).numpy()
                got = sess.run(None, {"pos": p.numpy()})[0]
                errs.append(float(np.abs(got - want).max()))
            tag = "dynamo=True " if dynamo else "dynamo=False"
            rows.append(
                (
                    f"export {tag}",
                    f"{t_export:6.1f} s, {len(graph.node)} nodes ({sum(v for k, v in ops.items() if k != 'Constant')}"
                    f" non-Constant), NonZero={ops.get('NonZero', 0)}, side files={side or 'none'}",
                )
            )
            rows.append((f"  ORT parity {tag} (B=1, B=7)", f"max abs {errs[0]:.1e}, {errs[1]:.1e}"))
            for batch in (1, 16, 64, 256):
                feed = {"pos": (np.random.randn(batch, 12, 3) * 0.7).astype(np.float32)}
                dt = _median_time(lambda feed=feed, sess=sess: sess.run(None, feed), _inner(batch, budget))
                rows.append((f"  ORT {tag} B={batch}", f"{batch / dt:8.0f} frames/s  ({dt * 1e3:.3f} ms/call)"))

    # jit.trace
    pos = torch.randn(5, 12, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        traced = torch.jit.trace(model, (pos,), check_trace=False)
        t_trace = time.perf_counter() - t0
    p = torch.randn(9, 12, 3)
    with torch.no_grad():
        err = float((traced(p) - model(p)).abs().max())
    rows.append(("torch.jit.trace", f"{t_trace:6.1f} s, max abs vs eager at B=9: {err:.1e}"))

    width = max(len(k) for k, _ in rows)
    print(f"{'measurement'.ljust(width)} | result (1 thread)")
    print(f"{'-' * width}-+-{'-' * 60}")
    for key, value in rows:
        print(f"{key.ljust(width)} | {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
