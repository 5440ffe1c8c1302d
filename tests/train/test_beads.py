"""Any number of beads (issue 19): the fixed-graph network equals e3nn's Network on the same weights, is
equivariant, and exports with parity, at N = 4, 12 and 30; N is recorded and enforced end to end."""

from __future__ import annotations

import pytest
import torch
from _nets import F32_BOUND, exact_radius_graph, perturb, reference_outputs, rotation

from e3traj.runtime import Bundle, InputError, check_bundle, resolve_data, save_trajectory
from e3traj.train import (
    E3nnConfig,
    FixedGraphNetwork,
    TrainConfig,
    checkpoint_n_beads,
    load_reference_weights,
    train_model,
)


def _frames(n: int, batch: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randn(batch, n - 1, 3, generator=gen, dtype=torch.float64)
    steps = 0.5 * steps / steps.norm(dim=-1, keepdim=True)
    return torch.cat([torch.zeros(batch, 1, 3, dtype=torch.float64), steps.cumsum(1)], dim=1)


def test_e3nn_s_own_graph_gains_self_loops_beyond_25_nodes():
    # why the parity test below gives e3nn exact distances: its Network is not a function of the positions alone
    from e3nn.nn.models import gate_points_2101 as g

    pos = torch.randn(30, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batch = torch.zeros(30, dtype=torch.long)
    loops = lambda idx: int((idx[0] == idx[1]).sum())  # noqa: E731
    assert loops(g.radius_graph(pos, 3.5, batch)) > 0 and loops(exact_radius_graph(pos, 3.5, batch)) == 0
    assert loops(g.radius_graph(pos[:25], 3.5, batch[:25])) == 0


@pytest.mark.parametrize("n", [4, 12, 30])
def test_the_fixed_graph_network_equals_e3nn_and_is_equivariant_at_any_n(n, monkeypatch):
    from e3nn.nn.models import gate_points_2101

    monkeypatch.setattr(gate_points_2101, "radius_graph", exact_radius_graph)
    config = E3nnConfig(irreps_hidden="2x0e + 2x1o", layers=2, num_nodes=n)
    assert config.num_neighbors == n - 1  # the complete graph's neighbours per node
    torch.manual_seed(n)
    fixed = FixedGraphNetwork(config)
    perturb(fixed, seed=n)
    ref = load_reference_weights(fixed)
    x = _frames(n).float()
    with torch.no_grad():
        out = fixed(x, None)
    want = reference_outputs(ref, x, None)
    assert out.shape == want.shape == (4, n, 3) and float(want.abs().max()) > 0.01
    assert float((out - want).abs().max()) <= F32_BOUND * max(1.0, float(want.abs().max()))
    q = -rotation(n).float()  # improper
    with torch.no_grad():
        moved = fixed(x @ q.T + torch.tensor([0.5, -1.0, 2.0]), None)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
        shuffled = fixed(x[:, perm], None)
    # float32 rounding scales with the largest output (36 at n = 12 with these perturbed weights), not each entry's
    atol = 4e-6 * max(1.0, float(out.abs().max()))
    torch.testing.assert_close(moved, out @ q.T, atol=atol, rtol=1e-4)
    torch.testing.assert_close(shuffled, out[:, perm], atol=atol, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("n, kind", [(4, "e3nn"), (30, "e3nn-velocity"), (4, "langevin"), (30, "langevin")])
def test_a_model_of_n_beads_trains_exports_and_checks(tmp_path, n, kind):
    from e3traj.export import export_checkpoint

    data = resolve_data("sim", sim_frames=300, n_beads=n)
    assert data.frames.shape == (300, n, 3) and data.source == f"sim(frames=300,seed=0,beads={n})"
    cfg = TrainConfig(model=kind, epochs=1, max_time=None, e3nn={"irreps_hidden": "2x0e + 2x1o", "layers": 1})
    res = train_model(data, cfg, output=tmp_path / "m.pt", progress=False)
    assert checkpoint_n_beads(res.checkpoint) == n
    manifest = export_checkpoint(tmp_path / "m.pt", tmp_path / "b")  # parity- and equivariance-gated
    assert manifest["model"]["num_nodes"] == n
    # the single-frame graph up to 16 beads (beyond, slower than the batched graph); check_bundle runs both
    assert ("single_frame" in manifest["onnx"]) is (kind.startswith("e3nn") and n <= 16)
    assert all(i["shape"][-2] == n for i in manifest["inputs"] + manifest["outputs"])
    with Bundle.open(tmp_path / "b", threads=1) as b:
        assert b.n_beads == n
        report = check_bundle(b, trials=1)
        assert report.passed, report.table()
        assert b.step(data.frames[10:12], data.frames[9:11]).shape == (2, n, 3)
    other = tmp_path / "other.npz"
    save_trajectory(other, resolve_data("sim", sim_frames=20, n_beads=n + 1).frames)
    with pytest.raises(InputError, match=rf"{n + 1} beads per frame; the model expects {n}"):
        resolve_data(str(other), n_beads=n)
