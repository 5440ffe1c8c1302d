"""One benchmark run: e3nn's Network vs the fixed-graph model (eager, TorchScript) vs the ONNX bundle (runtime).

Run: ``/work/main/.venv/bin/python benchmarks/run.py [--quick]`` (or ``make bench``). Everything runs in this one
process on this machine, 1 thread unless stated, so the ratios compare like with like; machines are noisy, so every
figure is the median of repeats and the implementations are timed in interleaved rounds (a slow spell hits all).

* e3nn's own ``gate_points_2101.Network``, eager, one frame per call (it builds its graph with ``radius_graph``, as
  in the chapter); at B=256 it is timed over a subset of the batch's frames, one per call.
* ``DisplacementModel`` (the fixed-graph module training uses), eager, and ``torch.jit.trace`` of it.
* The ONNX bundle through the runtime: ``Bundle.predict`` (sub-batched) and, at B=1, the ``rollout`` loop per step.
* ``torch.compile`` (inductor) of ``DisplacementModel``, one compiled function per batch size (compile times printed):
  the strongest PyTorch peer and the stable anchor the targets are ratios to (issue 21); e3nn's eager Network runs
  anywhere between 50 and 260 frames/s on these machines depending on load.

The model is ``DisplacementModel(E3nnConfig(), scale)`` with seeded random (perturbed) weights, exported with the
project's own exporter (parity-checked) into a temporary folder; frames come from the embedded simulator. Nothing
is written into the repository. The roofline is numpy's float32 matmul speed at the model's shapes on one thread
(:func:`e3traj.runtime._flops.matmul_roofline`). The fraction of it is judged, as the Performance issue defines it,
by the work of e3nn's Network on the complete 12-node graph as torch's FlopCounterMode counts it (≈ 5.0 MFLOP,
"roofline ≈ 11,700 frames/s per thread"); the MatMul work each implementation itself runs is printed beside it for
information (the exported graph's radial MLPs are a table, so it does far less MatMul work than the eager module).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

#: the targets of the "Performance" issue
TARGETS = {
    "batch_fps": 5000.0,
    "roofline_fraction": 0.40,
    "batch_vs_e3nn": 100.0,
    "rollout_ms": 0.5,
    "single_vs_e3nn": 50.0,
    "two_thread_ratio": 1.8,  # issue 21 (1.6 before it)
    "open_s": 0.2,
    "single_vs_compile": 5.0,
    "batch_vs_compile": 8.0,
}


def _interleaved(cases: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per unit of each case, one per round; cases ``name -> (fn, calls, units)`` run in interleaved rounds."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn, _calls, _units in cases.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, (fn, calls, units) in cases.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / (calls * units))
    return times


def _ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of ``num[r] / den[r]``: a ratio of two cases timed moments apart (robust to drift)."""
    return statistics.median(a / b for a, b in zip(num, den))


def _calls_for(fn, budget: float) -> int:
    t0 = time.perf_counter()
    fn()
    return max(1, int(budget / max(time.perf_counter() - t0, 1e-6)))


def _frames(n: int) -> np.ndarray:
    """``n`` frames of the embedded simulator's planar polymer lifted to 3D (z = 0). Shapes: ``(n, 12, 3)``."""
    from e3traj.runtime._simulate import simulate

    xy = simulate(frames=n, seed=0, dim=2)
    return np.concatenate([xy, np.zeros(xy.shape[:2] + (1,))], axis=-1)


def _build(tmp: Path, frames: np.ndarray, say) -> tuple[torch.nn.Module, torch.nn.Module, Path, float]:
    """The model (seeded random weights), e3nn's Network with the same weights, the exported bundle, export time."""
    from e3traj.export._export import ExportSettings, export_checkpoint
    from e3traj.train import DisplacementModel, E3nnConfig, load_reference_weights
    from e3traj.train._checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = E3nnConfig()
    scale = float(np.std(np.diff(frames, axis=0)))
    model = DisplacementModel(config, scale=scale).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref = load_reference_weights(model.net).eval()
    ckpt = {
        "kind": "e3nn",
        "config": config.to_dict(),
        "state_dict": model.state_dict(),
        "scale": scale,
        "sample_frames": torch.from_numpy(frames[:16]).float(),
    }
    ckpt_path = save_checkpoint(tmp / "bench.pt", ckpt)
    t0 = time.perf_counter()
    export_checkpoint(ckpt_path, tmp / "bundle", ExportSettings(n_random=8))
    t_export = time.perf_counter() - t0
    say(f"exported the bundle in {t_export:.1f} s")
    return model, ref, tmp / "bundle", t_export


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and frames (about a minute)")
    args = parser.parse_args(argv)
    quick = args.quick
    repeats = 3 if quick else 7
    budget = 0.15 if quick else 0.4  # seconds per timed repeat of one case
    big = 256

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    warnings.filterwarnings("ignore")

    import e3nn
    import onnxruntime

    from e3traj.runtime import Bundle, rollout
    from e3traj.runtime._bench import bundle_size, machine_info
    from e3traj.runtime._flops import matmul_flops_per_frame, matmul_roofline_detail
    from e3traj.train import reference_flops_per_frame

    def say(msg: str) -> None:
        print(f"# {msg}", file=sys.stderr, flush=True)

    info = machine_info()
    frames = _frames(600)
    rng = np.random.default_rng(1)
    batch = frames[rng.integers(0, len(frames), big)]
    one = batch[:1]

    with tempfile.TemporaryDirectory(prefix="e3traj-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model, ref, bundle_dir, t_export = _build(tmp, frames, say)
        onnx_file = bundle_dir / "model.onnx"
        flops = matmul_flops_per_frame(onnx_file)
        ref_flops = reference_flops_per_frame(model.config)  # the same count export records in the manifest
        ref_edges = model.config.num_nodes * (model.config.num_nodes - 1)
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.from_numpy(frames[:1]).float())  # the eager module: its radial MLPs, not the table
        mlp_flops = float(counter.get_total_flops())
        say("measuring the numpy matmul roofline (1 thread)")
        roof = matmul_roofline_detail(seconds=1.0 if quick else 3.0, threads=1)
        roofline = roof["gflops"]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, (torch.from_numpy(batch[:2]).float(),), check_trace=False)
        x1, xb = torch.from_numpy(one).float(), torch.from_numpy(batch).float()
        with torch.no_grad():
            want = model(xb).double().numpy()
            ts_err = float((traced(xb) - model(xb)).abs().max())

        opens = []
        for _ in range(5):
            t0 = time.perf_counter()
            b = Bundle.open(bundle_dir, threads=1)
            opens.append(time.perf_counter() - t0)
            b.close()
        t0 = time.perf_counter()
        ort_opts = onnxruntime.SessionOptions()
        ort_opts.intra_op_num_threads = 1
        onnxruntime.InferenceSession(str(onnx_file), ort_opts, providers=["CPUExecutionProvider"])
        t_session = time.perf_counter() - t0

        b1 = Bundle.open(bundle_dir, threads=1)
        onnx_err = float(np.abs(b1.predict({"positions": batch}) - want).max())
        feed1, feedb = {"positions": one}, {"positions": batch}
        n_e3nn_big = 16 if quick else 48
        e3nn_frames = [torch.from_numpy(f).float() for f in batch[:n_e3nn_big]]
        steps = 50 if quick else 200

        def e3nn_one():
            with torch.no_grad():
                ref({"pos": x1[0]})

        def e3nn_loop():
            with torch.no_grad():
                for f in e3nn_frames:
                    ref({"pos": f})

        def run_rollout():  # one start: the bundle's single-frame graph (model_single.onnx)
            res = rollout(b1, one, steps)
            run_rollout.steps = max(res.steps_done, 1)

        def run_rollout_batched():  # the same start as a shard of a 2-start run: the batched graph at B = 1
            rollout(b1, one, steps, run_starts=2)

        run_rollout()

        compiled, compile_s = {}, {}
        try:
            for bs, x in ((1, x1), (big, xb)):
                fn = torch.compile(model, dynamic=False)
                t0 = time.perf_counter()
                with torch.no_grad():
                    fn(x)
                compile_s[bs] = time.perf_counter() - t0
                compiled[bs] = fn
            with torch.no_grad():
                compile_err = float((compiled[big](xb) - model(xb)).abs().max())
        except Exception as exc:  # no C compiler, an unsupported op...: the peer is left out, and said so
            compiled, compile_note = (
                {},
                f"torch.compile unavailable here ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})",
            )
        else:
            compile_note = (
                f"torch.compile (inductor) compiled in {compile_s[1]:.1f} s (B=1) and {compile_s[big]:.1f} s "
                f"(B={big}); max abs vs eager {compile_err:.1e}"
            )
        say(compile_note)

        def nograd(fn):
            def inner():
                with torch.no_grad():
                    fn()

            return inner

        say("timing B=1 and B=256 (interleaved rounds)")
        cases = {
            ("e3nn Network (eager, radius_graph)", 1): (e3nn_one, 1, 1),
            ("e3nn Network (eager, radius_graph)", big): (e3nn_loop, 1, n_e3nn_big),
            ("DisplacementModel (eager)", 1): (nograd(lambda: model(x1)), 1, 1),
            ("DisplacementModel (eager)", big): (nograd(lambda: model(xb)), 1, big),
            ("TorchScript (jit.trace)", 1): (nograd(lambda: traced(x1)), 1, 1),
            ("TorchScript (jit.trace)", big): (nograd(lambda: traced(xb)), 1, big),
            ("ONNX runtime Bundle.predict", 1): (lambda: b1.predict(feed1), 1, 1),
            ("ONNX runtime rollout step", 1): (run_rollout, 1, steps),
            ("ONNX runtime Bundle.predict", big): (lambda: b1.predict(feedb), 1, big),
        }
        if compiled:
            cases[("torch.compile (inductor)", 1)] = (nograd(lambda: compiled[1](x1)), 1, 1)
            cases[("torch.compile (inductor)", big)] = (nograd(lambda: compiled[big](xb)), 1, big)
        cases = {
            k: (fn, _calls_for(fn, budget / (4 if k[1] == 1 and "e3nn" in k[0] else 1)), units)
            for k, (fn, _c, units) in cases.items()
        }
        cases[("ONNX runtime rollout step", 1)] = (run_rollout, 1, steps)
        if b1.has_single_frame:
            cases[("ONNX rollout step, batched graph", 1)] = (run_rollout_batched, 1, steps)
        rounds = _interleaved(cases, repeats)
        per_frame = {k: statistics.median(v) for k, v in rounds.items()}

        say("timing 1 vs 2 threads at B=1024 (interleaved rounds)")
        large = frames[rng.integers(0, len(frames), 1024)]
        b2 = Bundle.open(bundle_dir, threads=2)
        thr_rounds = _interleaved(
            {
                1: (lambda: b1.predict({"positions": large}), 1, 1024),
                2: (lambda: b2.predict({"positions": large}), 1, 1024),
            },
            repeats,
        )
        thr = {k: statistics.median(v) for k, v in thr_rounds.items()}
        b2.close()
        b1.close()
        size = bundle_size(bundle_dir)
        onnx_entry = __import__("json").loads((bundle_dir / "manifest.json").read_text())["onnx"]
        nodes, single_nodes = onnx_entry["nodes"], onnx_entry.get("single_frame", {}).get("nodes")

    # ---------------------------------------------------------------------------------------------- report
    vs_e3nn = {k: _ratio(rounds[("e3nn Network (eager, radius_graph)", k[1])], v) for k, v in rounds.items()}
    print(f"machine   {info['cpu']}, {info['cores']} logical CPUs, load average {info['load_average']}")
    print(
        f"versions  python {info['python']}, torch {torch.__version__}, e3nn {e3nn.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}"
    )
    shapes = ", ".join(f"{tuple(p['shape'])} {p['gflops']:.1f}" for p in roof["per_shape"])
    print(f"roofline  {roofline:.1f} GFLOP/s (numpy float32 matmul, 1 thread, best of (M, K, N): {shapes})")
    print(f"work      {flops / 1e6:.3f} MFLOP of MatMul per frame (counted from the ONNX graph, {nodes} nodes)")
    print(
        f"reference {ref_flops / 1e6:.3f} MFLOP per frame: e3nn's Network on the complete graph ({ref_edges} edges, "
        f"FlopCounterMode); roofline {roofline * 1e9 / flops:,.0f} frames/s by the graph's work, "
        f"{roofline * 1e9 / ref_flops:,.0f} by the reference work"
    )
    print(f"parity    ONNX vs eager max abs {onnx_err:.1e}; TorchScript vs eager {ts_err:.1e} (B={big})")
    print(f"peer      {compile_note}")
    print(f"settings  {'quick' if quick else 'full'}: {repeats} interleaved repeats, medians; 1 thread unless stated\n")
    head = (
        f"{'implementation':38s} {'B':>5s} {'frames/s':>10s} {'ms/frame':>9s} {'vs e3nn':>8s} "
        f"{'% roofline':>10s} {'(graph)':>8s}"
    )
    print(head)
    print("-" * len(head))
    for (name, bs), dt in per_frame.items():
        if name.startswith("e3nn"):
            frac = graph_frac = "-"
        else:
            frac = f"{1 / dt * ref_flops / 1e9 / roofline * 100:9.1f}%"
            work = flops if name.startswith("ONNX") else mlp_flops  # eager and TorchScript run the MLPs
            graph_frac = f"{1 / dt * work / 1e9 / roofline * 100:7.1f}%"
        print(
            f"{name:38s} {bs:5d} {1 / dt:10.0f} {dt * 1e3:9.3f} {vs_e3nn[(name, bs)]:7.1f}x "
            f"{frac:>10s} {graph_frac:>8s}"
        )
    print(
        "(frames/s, ms/frame: medians over rounds; 'vs e3nn': median over rounds of the per-round ratio;\n"
        " % roofline: frames/s x the reference work / roofline, the issue's definition; (graph): x the MatMul work\n"
        " that implementation runs, which the radial table makes small for the ONNX rows)"
    )
    ratio2 = _ratio(thr_rounds[1], thr_rounds[2])
    print(
        f"\nONNX runtime B=1024: 1 thread {1 / thr[1]:.0f} frames/s, 2 threads {1 / thr[2]:.0f} frames/s: {ratio2:.2f}x"
    )
    print(
        f"open      Bundle.open (verify + session) median {statistics.median(opens) * 1e3:.0f} ms; "
        f"bare onnxruntime session {t_session * 1e3:.0f} ms; export {t_export:.1f} s"
    )
    print(f"size      bundle {size / 1024:.0f} KiB ({size} bytes)")
    if ("ONNX rollout step, batched graph", 1) in rounds:
        gain = _ratio(rounds[("ONNX rollout step, batched graph", 1)], rounds[("ONNX runtime rollout step", 1)])
        print(
            f"single    the rollout step runs the single-frame graph ({single_nodes} nodes): {gain:.2f}x faster than "
            "the same rollout through the batched graph (the row below it)"
        )
    if os.cpu_count() and os.cpu_count() < 2:
        print("note      one CPU: the 2-thread figure is meaningless here")

    rollout_dt = per_frame[("ONNX runtime rollout step", 1)]
    big_dt = per_frame[("ONNX runtime Bundle.predict", big)]
    # (label with {} for the target, measured value, target key, format of both); "<=" in a label: lower is better
    checks = [
        (f"batched B={big} frames/s >= {{}}", 1 / big_dt, "batch_fps", "{:.0f}"),
        (f"batched B={big} >= {{}} of roofline (e3nn's work)", 1 / big_dt * ref_flops / 1e9 / roofline,
         "roofline_fraction", "{:.1%}"),
        (f"batched B={big} >= {{}} e3nn per frame", vs_e3nn[("ONNX runtime Bundle.predict", big)], "batch_vs_e3nn",
         "{:.0f}x"),
        ("B=1 rollout <= {} per step", rollout_dt * 1e3, "rollout_ms", "{:.3f} ms"),
        ("B=1 rollout >= {} e3nn", vs_e3nn[("ONNX runtime rollout step", 1)], "single_vs_e3nn", "{:.0f}x"),
        ("2 threads >= {} one thread (B=1024)", ratio2, "two_thread_ratio", "{:.2f}x"),
        ("Bundle.open <= {}", statistics.median(opens), "open_s", "{:.3f} s"),
    ]  # fmt: skip
    if compiled:  # issue 21: judged against the strongest PyTorch peer, measured in the same rounds
        vs_compile = {
            bs: _ratio(rounds[("torch.compile (inductor)", bs)], rounds[(name, bs)])
            for bs, name in ((1, "ONNX runtime rollout step"), (big, "ONNX runtime Bundle.predict"))
        }
        checks += [
            ("B=1 rollout >= {} torch.compile", vs_compile[1], "single_vs_compile", "{:.2f}x"),
            (f"B={big} >= {{}} torch.compile", vs_compile[big], "batch_vs_compile", "{:.2f}x"),
        ]
    print("\ntargets")
    for label, value, key, fmt in checks:
        target = TARGETS[key]
        ok = value <= target if "<=" in label else value >= target
        print(f"  {'MET ' if ok else 'MISS'}  {label.format(fmt.format(target)):48s} measured {fmt.format(value)}")
    print(
        f"  info  B=256 by the graph's own MatMul work ({flops / 1e6:.3f} MFLOP/frame; "
        f"{mlp_flops / 1e6:.3f} with the MLPs): {1 / big_dt * flops / 1e9 / roofline:.1%} of roofline"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
