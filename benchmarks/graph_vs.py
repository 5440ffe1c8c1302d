"""The exported e3nn graphs of this tree against an earlier commit's, timed in one process (issue 21).

Checks out REF (default 336528c, the single-frame graph's first form) into a temporary git worktree, exports
``run.py``'s benchmark model (seeded random weights, the radial table) with REF's train and export packages and
with this tree's, then times both bundles with this tree's runtime in interleaved rounds, 1 thread: the batched
graph (``model.onnx``) at several batches through one onnxruntime session each, ``Bundle.predict`` at B = 256
(sub-batches of ``CHUNK``), and a one-start rollout step (the single-frame graph). Prints medians per frame, the
ratio new / old, the node counts and the largest difference between the two bundles' outputs. Usage:
``python benchmarks/graph_vs.py [REF] [--rounds 15]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXPORT = r"""
import sys, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1])
import run
run._build(Path(sys.argv[2]), run._frames(600), lambda msg: None)
"""
BATCHES = (1, 8, 32, 64)


def _export(tree: Path, site: Path | None, out: Path) -> Path:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": "" if site is None else str(site)}
    out.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", EXPORT, str(tree / "benchmarks"), str(out)], env=env, check=True)
    return out / "bundle"


def _nodes(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path)).graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", nargs="?", default="336528c", help="the earlier commit (default 336528c)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    args = parser.parse_args()
    ref, rounds = args.ref, args.rounds

    import onnxruntime as ort

    from e3traj.runtime import Bundle, rollout

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tree, site = tmp / "tree", tmp / "site"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), ref], check=True)
        try:
            (site / "e3traj").mkdir(parents=True)
            for part in ("runtime", "train", "export"):
                (site / "e3traj" / part).symlink_to(tree / part)
            bundles = {"old": _export(tree, site, tmp / "old"), "new": _export(ROOT, None, tmp / "new")}
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sessions = {k: ort.InferenceSession(str(b / "model.onnx"), opts, providers=["CPUExecutionProvider"])
                    for k, b in bundles.items()}  # fmt: skip
        opened = {k: Bundle.open(b, threads=1) for k, b in bundles.items()}
        rng = np.random.default_rng(0)
        xs = {batch: (rng.normal(size=(batch, 12, 3)) * 1.2).astype(np.float32) for batch in BATCHES}
        big = rng.normal(size=(256, 12, 3)) * 1.2
        start = xs[1].astype(np.float64)
        name = sessions["new"].get_inputs()[0].name
        diff = max(
            float(np.abs(sessions["old"].run(None, {name: x})[0] - sessions["new"].run(None, {name: x})[0]).max())
            for x in xs.values()
        )
        one = {"positions": xs[8].astype(np.float64)}
        diff_single = float(
            np.abs(opened["old"].predict_single_frame(one) - opened["new"].predict_single_frame(one)).max()
        )
        for b in opened.values():
            if not rollout(b, start, 200).complete:
                raise SystemExit(f"{b.path}: the 200-step rollout from the probe frame stopped early; pick another")

        cases = {}
        for batch, x in xs.items():
            for k, s in sessions.items():
                reps = max(3, 600 // batch)
                cases[(f"batched graph, B={batch}", k)] = (lambda s=s, x=x, reps=reps: [s.run(None, {name: x})
                                                           for _ in range(reps)], reps * batch)  # fmt: skip
        for k, b in opened.items():
            cases[("Bundle.predict, B=256", k)] = (lambda b=b: b.predict({"positions": big}), 256)
            cases[("rollout step, 1 start (single-frame graph)", k)] = (lambda b=b: rollout(b, start, 200), 200)
        for fn, _ in cases.values():
            fn()
        times: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
        for _ in range(rounds):
            for key, (fn, frames) in cases.items():
                t0 = time.perf_counter()
                fn()
                times[key].append((time.perf_counter() - t0) / frames)
        for b in opened.values():
            b.close()
        n_old = (_nodes(bundles["old"] / "model.onnx"), _nodes(bundles["old"] / "model_single.onnx"))
        n_new = (_nodes(bundles["new"] / "model.onnx"), _nodes(bundles["new"] / "model_single.onnx"))

    print(f"{'case':<46}{'old us':>10}{'new us':>10}{'new/old':>9}   (per frame; medians of {rounds} interleaved "
          f"rounds; {ref})")  # fmt: skip
    for case in dict.fromkeys(c for c, _ in times):
        old, new = statistics.median(times[(case, "old")]), statistics.median(times[(case, "new")])
        print(f"{case:<46}{old * 1e6:>10.1f}{new * 1e6:>10.1f}{new / old:>9.3f}")
    print(f"nodes: batched {n_old[0]} -> {n_new[0]}, single-frame {n_old[1]} -> {n_new[1]}; "
          f"largest output difference between the bundles' batched graphs {diff:.1e}, single-frame graphs "
          f"{diff_single:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
