"""Training throughput and validation MSE against wall time: e3traj's loop vs the chapter's batch-1 loop.

Both run in this one process on the same data (the chapter's paths.npz where present, else the simulator),
with the same network (e3nn's gate_points_2101 hyperparameters of the chapter):

- the chapter's loop: e3nn's own ``Network`` (radius_graph), one torch_geometric ``Data`` per frame,
  Adam lr 1e-4, batch 1, target = raw displacement;
- e3traj's loop (``e3traj.train._train.train_model``): the fixed-graph module, batch 32, Adam 1e-3, targets
  scaled by one scalar, early stopping on validation.

Run: ``.venv/bin/python benchmarks/train_throughput.py [--seconds 60] [--threads N]``. Prints a table with
frames/s, the ratio, and the validation MSE reached after given wall times next to persistence.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from e3traj.runtime._bench import cpu_model


def chapter_loop(split, seconds: float, eval_every: float):
    """The chapter's training loop for ``seconds``; returns frames/s and (time, val MSE) points."""
    from torch_geometric.data import Data

    from e3traj.train import E3nnConfig, FixedGraphNetwork, build_reference_network

    torch.manual_seed(0)
    net = build_reference_network(E3nnConfig())
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    fixed = FixedGraphNetwork(E3nnConfig())  # only to score validation quickly with the same weights
    feats = torch.as_tensor(split.train_x, dtype=torch.float32)
    labels = torch.as_tensor(split.train_y - split.train_x, dtype=torch.float32)
    vx = torch.as_tensor(split.val_x, dtype=torch.float32)
    vd = torch.as_tensor(split.val_y - split.val_x, dtype=torch.float64)
    points, steps, step_times = [], 0, []
    start = time.perf_counter()
    next_eval = 0.0
    while True:
        now = time.perf_counter() - start
        if now >= next_eval:
            fixed.network.load_state_dict(net.state_dict())
            with torch.no_grad():
                points.append((now, float(((fixed(vx).double() - vd) ** 2).mean())))
            next_eval += eval_every
            start += time.perf_counter() - start - now  # do not charge the evaluation to training time
        if now >= seconds:
            break
        i = steps % len(feats)
        t0 = time.perf_counter()
        data = Data(pos=feats[i])
        out = net(data)
        loss = torch.mean((out - labels[i]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_times.append(time.perf_counter() - t0)
        steps += 1
    return 1.0 / statistics.median(step_times), points


def e3traj_loop(data, seconds: float):
    from e3traj.train._train import TrainConfig, train_model

    cfg = TrainConfig(model="e3nn", epochs=1000, max_time=seconds, patience=1000)
    res = train_model(data, cfg, progress=False)
    hist = res.checkpoint["history"]
    n_train = res.checkpoint["data"]["n_train"]
    # frames/s over whole epochs (includes the per-epoch validation pass, which the chapter's loop does not have)
    full = [h for h in hist if h["epoch"] >= 1]
    t_prev, rates = 0.0, []
    for h in full:
        rates.append(n_train / (h["time"] - t_prev))
        t_prev = h["time"]
    return statistics.median(rates), [(h["time"], h["val_mse"]) for h in hist]


def first_time_below(points, level):
    for t, v in points:
        if v <= level:
            return t
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="wall-time budget of each loop")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from e3traj.runtime import resolve_data, split_pairs
    from e3traj.runtime._errors import InputError

    try:
        data = resolve_data("dmol")
    except InputError:
        data = resolve_data("sim")
    split = split_pairs(data.frames)
    pers = float(np.mean((split.val_y - split.val_x) ** 2))

    ours_fps, ours_pts = e3traj_loop(data, args.seconds)
    chap_fps, chap_pts = chapter_loop(split, args.seconds, eval_every=max(args.seconds / 6, 5.0))

    print(f"machine: {cpu_model()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}")
    print(
        f"data: {data.source}, {split.n_train} training / {len(split.val_x)} validation pairs; "
        f"persistence validation MSE {pers:.3g}"
    )
    print()
    print("| loop | frames/s (median) | ratio | best val MSE within budget | first time val MSE <= 1e-4 |")
    print("|---|---|---|---|---|")
    for name, fps, pts in (
        ("chapter (e3nn Network, batch 1, lr 1e-4)", chap_fps, chap_pts),
        ("e3traj (fixed graph, batch 32, scaled)", ours_fps, ours_pts),
    ):
        best = min(v for _, v in pts)
        t = first_time_below(pts, 1e-4)
        print(
            f"| {name} | {fps:,.0f} | {fps / chap_fps:.1f}x | {best:.3g} | {'never' if t is None else f'{t:.1f} s'} |"
        )
    print()
    print("validation MSE against wall time (s):")
    for name, pts in (("chapter", chap_pts), ("e3traj", ours_pts)):
        print(f"  {name:8s} " + "  ".join(f"{t:.0f}s:{v:.3g}" for t, v in pts))


if __name__ == "__main__":
    main()
