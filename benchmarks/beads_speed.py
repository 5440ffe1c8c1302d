"""Frames per second against the number of beads N (issue 19): the e3nn bundle's complete graph has N (N - 1)
edges, so its work grows about quadratically; the langevin bundle's pair terms too.

For each N, a model of the kind is trained for one epoch on a simulated N-bead chain (speed does not depend on
the weights), exported, and timed through ``Bundle.predict`` (medians of 5, batch 1 and 64, 1 thread), all in one
run; the table prints frames/s and the ratio to N = 12. Usage: ``python benchmarks/beads_speed.py [--quick]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from e3traj.export import export_checkpoint
from e3traj.runtime import Bundle, resolve_data
from e3traj.runtime._bench import median_time
from e3traj.train import TrainConfig, train_model


def frames_per_second(bundle: Bundle, frames: np.ndarray, batch: int) -> float:
    x = frames[1 : batch + 1]
    prev = frames[:batch] if bundle.history else None
    bundle.step(x, prev)  # warm up
    dt = median_time(lambda: bundle.step(x, prev), inner=max(1, 256 // batch), repeats=5)
    return batch / dt


def main() -> None:
    ns = (6, 12, 20) if "--quick" in sys.argv else (6, 12, 20, 30, 48)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("e3nn", "langevin"):
            for n in ns:
                data = resolve_data("sim", sim_frames=400, n_beads=n)
                ckpt = Path(tmp) / f"{kind}-{n}.pt"
                train_model(
                    data, TrainConfig(model=kind, epochs=1, max_time=None, threads=1), output=ckpt, progress=False
                )
                out = Path(tmp) / f"{kind}-{n}"
                export_checkpoint(ckpt, out)
                with Bundle.open(out, threads=1) as b:
                    rows.append((kind, n, *(frames_per_second(b, data.frames, bs) for bs in (1, 64))))
    print(f"{'kind':<10}{'N':>4}{'edges':>7}{'frames/s B=1':>15}{'x N=12':>8}{'frames/s B=64':>16}{'x N=12':>8}")
    for kind, n, f1, f64 in rows:
        base = next(r for r in rows if r[0] == kind and r[1] == 12)
        print(f"{kind:<10}{n:>4}{n * (n - 1):>7}{f1:>15.0f}{f1 / base[2]:>8.2f}{f64:>16.0f}{f64 / base[3]:>8.2f}")


if __name__ == "__main__":
    main()
