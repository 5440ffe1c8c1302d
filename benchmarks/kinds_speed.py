"""Every model kind against torch.compile, at 12 and 30 beads: the host runtime and inductor in the same rounds.

Run: ``.venv/bin/python benchmarks/kinds_speed.py [--quick] [--beads 12,30]``. For each kind and N it trains a
model for one epoch on the embedded simulator (``e3traj train --epochs 1``: the weights do not change the cost),
exports it with the project's exporter (parity- and equivariance-gated), and times on 1 thread, in interleaved
rounds (a slow spell hits every case alike):

* the runtime's rollout step at B = 1 (``rollout`` over 100 steps, per step: inputs from the past frames, the
  model, the next-frame rule in float64): what a host pays per predicted frame;
* ``Bundle.predict`` at B = 256 (B = 64 at N > 12), frames/s;
* ``torch.compile`` (inductor, ``dynamic=False``) of the checkpoint's eager torch module (the fixed-graph network
  with its radial MLPs, as training runs it) at the same batch sizes, compile times printed.

The ratios are medians over rounds of per-round ratios; "vs e3nn" compares each kind's runtime with the e3nn
bundle's at the same N and batch (the issue's bar: a history bundle within 1.5x). Everything is written into a
temporary folder; nothing in the repository changes. Takes about 10 minutes (``--quick``: about 6).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from run import _ratio  # benchmarks/run.py: the median of per-round ratios

KINDS = ("baseline", "e3nn", "e3nn-velocity", "e3nn-history", "langevin")
EXE = Path(sys.executable).with_name("e3traj")


def _interleaved(cases: dict, repeats: int) -> dict:
    times = {k: [] for k in cases}
    for fn, _units in cases.values():
        fn()
    for _ in range(repeats):
        for name, (fn, units) in cases.items():
            t0 = time.perf_counter()
            calls = 0
            while True:
                fn()
                calls += 1
                if time.perf_counter() - t0 > 0.15:
                    break
            times[name].append((time.perf_counter() - t0) / (calls * units))
    return times


def _make(tmp: Path, kind: str, n: int) -> tuple[Path, Path]:
    ckpt, bundle = tmp / f"{kind}-{n}.pt", tmp / f"{kind}-{n}"
    common = ["--data", "sim", "--beads", str(n), "--threads", "1"]
    subprocess.run(
        [str(EXE), "train", "--model", kind, "--epochs", "1", "-o", str(ckpt), *common],
        check=True,
        capture_output=True,
    )
    subprocess.run([str(EXE), "export", str(ckpt), "-o", str(bundle)], check=True, capture_output=True)
    return ckpt, bundle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds instead of 5")
    ap.add_argument("--beads", default="12,30", help="comma list of N")
    args = ap.parse_args(argv)
    repeats = 3 if args.quick else 5
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from e3traj.runtime import Bundle, rollout
    from e3traj.runtime._bench import machine_info
    from e3traj.runtime._simulate import simulate
    from e3traj.train._checkpoint import build_model, load_checkpoint

    def say(msg: str) -> None:
        print(f"# {msg}", file=sys.stderr, flush=True)

    info = machine_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="e3traj-kinds-") as tmp_name:
        tmp = Path(tmp_name)
        for n in (int(v) for v in args.beads.split(",")):
            big = 256 if n <= 12 else 64
            xy = simulate(frames=400, seed=3, n_beads=n)
            frames = np.concatenate([xy, np.zeros(xy.shape[:2] + (1,))], axis=-1)
            cases, compile_s, nodes, bundles = {}, {}, {}, []
            for kind in KINDS:
                say(f"N={n} {kind}: train 1 epoch, export")
                ckpt, path = _make(tmp, kind, n)
                b = Bundle.open(path, threads=1)
                bundles.append(b)
                nodes[kind] = b.manifest["onnx"]["nodes"]
                h = b.history
                rng = np.random.default_rng(0)
                idx = rng.integers(h, len(frames), big)
                past_big = np.stack([frames[idx - h + j] for j in range(h)], axis=1) if h else None
                x_big = frames[idx]
                feeds = {1: b.model_inputs(x_big[:1], None if past_big is None else past_big[:1])}
                feeds[big] = b.model_inputs(x_big, past_big)
                steps = 100

                def step(b=b, x=x_big[:1], p=None if past_big is None else past_big[:1], steps=steps):
                    rollout(b, x, steps, previous=p)

                cases[(kind, "runtime", 1)] = (step, steps)
                cases[(kind, "runtime", big)] = (lambda b=b, f=feeds[big]: b.predict(f), big)
                model = build_model(load_checkpoint(ckpt)).eval()
                for bs in (1, big):
                    tensors = tuple(torch.from_numpy(np.asarray(v, dtype=np.float32)) for v in feeds[bs].values())
                    fn = torch.compile(model, dynamic=False)
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        want = fn(*tensors)
                    compile_s[(kind, bs)] = time.perf_counter() - t0
                    err = float(np.abs(want.double().numpy() - b.predict(feeds[bs])).max())
                    say(f"  torch.compile B={bs}: {compile_s[(kind, bs)]:.1f} s, max abs vs the bundle {err:.1e}")

                    def run(fn=fn, t=tensors):
                        with torch.no_grad():
                            fn(*t)

                    cases[(kind, "torch.compile", bs)] = (run, bs)
            say(f"N={n}: timing {len(cases)} cases, {repeats} interleaved rounds")
            rounds = _interleaved(cases, repeats)
            for b in bundles:
                b.close()
            rows.append((n, big, rounds, compile_s, nodes))

    print(f"machine   {info['cpu']}, {info['cores']} logical CPUs, load average {info['load_average']}")
    print(f"versions  torch {torch.__version__}; 1 thread; medians of {repeats} interleaved rounds\n")
    head = (
        f"{'N':>3s} {'kind':14s} {'nodes':>5s} {'B=1 ms/step':>11s} {'compile':>8s} {'ratio':>6s} {'vs e3nn':>7s}   "
        f"{'B':>3s} {'frames/s':>9s} {'compile':>8s} {'ratio':>6s} {'vs e3nn':>7s}"
    )
    print(head)
    print("-" * len(head))
    for n, big, rounds, _compile_s, nodes in rows:
        for kind in KINDS:
            r1, rc1 = rounds[(kind, "runtime", 1)], rounds[(kind, "torch.compile", 1)]
            rb, rcb = rounds[(kind, "runtime", big)], rounds[(kind, "torch.compile", big)]
            e1, eb = rounds[("e3nn", "runtime", 1)], rounds[("e3nn", "runtime", big)]
            print(
                f"{n:3d} {kind:14s} {nodes[kind]:5d} {statistics.median(r1) * 1e3:11.3f} "
                f"{statistics.median(rc1) * 1e3:8.3f} {_ratio(rc1, r1):5.2f}x {_ratio(r1, e1):6.2f}x   "
                f"{big:3d} {1 / statistics.median(rb):9.0f} {1 / statistics.median(rcb):8.0f} "
                f"{_ratio(rcb, rb):5.2f}x {_ratio(rb, eb):6.2f}x"
            )
    print(
        "\n(ratio: torch.compile's time / the runtime's, >1 = the runtime is faster; vs e3nn: the kind's runtime time /"
        "\n the e3nn bundle's at the same N and B; nodes: the exported graph's, before onnxruntime's optimizer)"
    )
    comp = ", ".join(f"{k} B={bs} {s:.0f} s" for n, _b, _r, cs, _ in rows[:1] for (k, bs), s in cs.items())
    print(f"compile times (N={rows[0][0]}; the first call, inductor's on-disk cache may be warm): {comp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
