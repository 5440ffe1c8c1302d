"""The PyTorch Geometric view (train/_pyg.py): the split's pairs with their history, and e3nn's own Network fed
batches of it equals the fixed-graph network on the same weights."""

from __future__ import annotations

import pytest
import torch
from _nets import F32_BOUND, exact_radius_graph, perturb

from e3traj.runtime import resolve_many, save_trajectory, simulate
from e3traj.train import E3nnConfig, FixedGraphNetwork, load_reference_weights, pyg_samples

pytest.importorskip("torch_geometric")


@pytest.fixture
def two_files(tmp_path):
    out = []
    for seed in (1, 2):
        f = tmp_path / f"t{seed}.npz"
        save_trajectory(f, simulate(frames=60, seed=seed, n_beads=9))
        out.append(str(f))
    return resolve_many(out)


def test_samples_are_the_split_s_pairs_with_their_history(two_files):
    split = two_files.split()
    train = pyg_samples(two_files, history=3)
    assert [s.t for s in train] == split.train_index(3).tolist()  # never across the two files
    s = train[5]
    assert s.pos.shape == s.y.shape == (9, 3) and s.x.shape == (9, 9) and s.edge_index.shape == (2, 72)
    f = torch.as_tensor(two_files.frames)
    torch.testing.assert_close(s.y, f[s.t + 1].float())
    torch.testing.assert_close(s.x[:, 3:6], (f[s.t - 1] - f[s.t - 2]).float())  # j = 2: the one before the last
    assert len(pyg_samples(two_files, part="val")) == len(split.val_index())
    with pytest.raises(ValueError, match="part"):
        pyg_samples(two_files, part="test")


def test_e3nn_s_network_fed_pyg_batches_equals_the_fixed_graph_network(two_files, monkeypatch):
    from e3nn.nn.models import gate_points_2101
    from torch_geometric.loader import DataLoader

    # a batch of 8 chains is one graph of 72 nodes to e3nn: exact distances, or its graph gains self-loops
    monkeypatch.setattr(gate_points_2101, "radius_graph", exact_radius_graph)

    config = E3nnConfig(irreps_in="2x1o", irreps_hidden="2x0e + 2x1o", layers=2, num_nodes=9)
    torch.manual_seed(0)
    fixed = FixedGraphNetwork(config)
    perturb(fixed, seed=3)
    ref = load_reference_weights(fixed)
    batch = next(iter(DataLoader(pyg_samples(two_files, part="val", history=2), batch_size=8)))
    with torch.no_grad():
        want = ref(batch).reshape(8, 9, 3)  # e3nn's own graph, from the PyG batch
        got = fixed(batch.pos.reshape(8, 9, 3), batch.x.reshape(8, 9, 6))
    top = float(want.abs().max())
    assert top > 1e-4  # non-trivial outputs (the displacements are small inputs: ~5e-3 out)
    assert float((got - want).abs().max()) <= F32_BOUND * top  # relative to the outputs' own size
