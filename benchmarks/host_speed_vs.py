"""The host's speed at N = 12 against an earlier commit (issue 19: "speed at N = 12 unchanged").

Checks out REF (default adcfa0a, before N became a parameter) into a temporary git worktree and times, in
alternating subprocesses (REF's runtime on PYTHONPATH, then this tree's), ``Bundle.step`` at batch 1 and 64 and
a 200-step rollout of the committed ``artifacts/sim-e3nn`` and ``artifacts/sim-e3nn-history`` bundles (1 thread).
Prints the medians over the rounds and the ratio new / old. Usage:
``python benchmarks/host_speed_vs.py [REF] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = r"""
import json, sys, time
import numpy as np
from e3traj.runtime import Bundle, rollout, simulate
frames = np.concatenate([simulate(frames=300, seed=5), np.zeros((300, 12, 1))], axis=-1)
out = {}
for name in sys.argv[1:]:
    with Bundle.open(name, threads=1) as b:
        h = b.history
        for batch in (1, 64):
            x = frames[100:100 + batch]
            prev = None
            if h:
                prev = np.stack([frames[100 - h + i:100 - h + i + batch] for i in range(h)], 1)
                prev = prev[:, 0] if h == 1 else prev
            b.step(x, prev)
            reps = 400 // batch + 20
            t0 = time.perf_counter()
            for _ in range(reps):
                b.step(x, prev)
            out[f"{name} step B={batch}"] = (time.perf_counter() - t0) / reps
        prev = np.stack([frames[100 - h + i:101 - h + i] for i in range(h)], 1) if h else None
        t0 = time.perf_counter()
        rollout(b, frames[100:101], 200, previous=prev)
        out[f"{name} rollout 200"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", nargs="?", default="adcfa0a", help="the earlier commit (default adcfa0a)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args()
    ref, rounds = args.ref, args.rounds
    bundles = [str(ROOT / "artifacts" / "sim-e3nn"), str(ROOT / "artifacts" / "sim-e3nn-history")]
    with tempfile.TemporaryDirectory() as tmp:
        tree, site = Path(tmp) / "tree", Path(tmp) / "site" / "e3traj"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), ref], check=True)
        try:
            site.mkdir(parents=True)
            (site / "runtime").symlink_to(tree / "runtime")
            times: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
            for _ in range(rounds):
                for label, env_path in (("old", str(site.parent)), ("new", "")):
                    env = {"PYTHONPATH": env_path, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
                    res = subprocess.run(
                        [sys.executable, "-c", PROBE, *bundles], capture_output=True, text=True, env=env, check=True
                    )
                    for k, v in json.loads(res.stdout).items():
                        times[label].setdefault(k, []).append(v)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    print(f"{'case':<44}{'old ms':>10}{'new ms':>10}{'new/old':>9}   (medians of {rounds} alternating rounds; {ref})")
    for k in times["new"]:
        old, new = statistics.median(times["old"][k]), statistics.median(times["new"][k])
        print(f"{k.replace(str(ROOT) + '/', ''):<44}{old * 1e3:>10.3f}{new * 1e3:>10.3f}{new / old:>9.3f}")


if __name__ == "__main__":
    main()
