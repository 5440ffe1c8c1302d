"""A PyTorch Geometric view of a trajectory: one ``torch_geometric.data.Data`` per (frame, next frame) pair, with
its history, so any PyG or e3nn model can train on the same pairs e3traj's models do.

The pairs are the :class:`~e3traj.runtime.Split`'s: they never cross a file boundary, and a pair with
``history`` H has its H frames before it inside its own trajectory.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["pyg_samples"]


def pyg_samples(data, *, part: str = "train", history: int = 0, train_fraction: float = 0.8) -> list:
    """The pairs of ``part`` (``train`` or ``val``) of ``data`` (a :class:`~e3traj.runtime.DataSource`) as PyG
    ``Data`` objects.

    Each holds ``pos`` ``(N, 3)`` (the frame), ``y`` ``(N, 3)`` (the next frame), ``edge_index`` ``(2, N (N - 1))``
    (the complete graph without self-loops, the graph e3traj's networks use), ``t`` (the frame's index in
    ``data.frames``) and, with ``history`` H >= 1, ``x`` ``(N, 3 H)``: the H previous displacements
    ``x_{t-j+1} - x_{t-j}``, j = 1..H, the most recent first (a ``Hx1o`` node input for e3nn). Positions are
    float32 as the models see them. Batching with ``torch_geometric.loader.DataLoader`` works as for any PyG data.
    """
    from torch_geometric.data import Data

    if part not in ("train", "val"):
        raise ValueError(f"part must be 'train' or 'val', got {part!r}")
    if isinstance(history, bool) or not isinstance(history, int) or history < 0:
        raise ValueError(f"history must be an integer >= 0, got {history!r}")
    split = data.split(train_fraction)
    ts = split.train_index(history) if part == "train" else split.val_index(history)
    frames = torch.as_tensor(np.asarray(split.frames), dtype=torch.float64)
    n = frames.shape[1]
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = i != j
    edge_index = torch.stack([i[keep], j[keep]])
    out = []
    for t in ts.tolist():
        sample = Data(pos=frames[t].float(), y=frames[t + 1].float(), edge_index=edge_index, t=int(t))
        if history:
            d = [frames[t - k + 1] - frames[t - k] for k in range(1, history + 1)]
            sample.x = torch.cat(d, dim=-1).float()
        out.append(sample)
    return out
