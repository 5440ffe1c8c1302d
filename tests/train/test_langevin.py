"""The Langevin model (train/_langevin.py): pair forces, walls, equivariance, the closed-form fit and its noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import rotation

from e3traj.runtime import resolve_data, save_trajectory, thermostat_scale
from e3traj.train._checkpoint import build_model, load_checkpoint
from e3traj.train._langevin import ANGLE_DEGREE, CLASSES, AngleForces, LangevinModel, PairForces, Wall, distance_range
from e3traj.train._train import TrainConfig, train_model

REVERSE = torch.arange(11, -1, -1)
N_PAIR = sum(count for _, _, (_, _, count), _ in CLASSES)
N_FEATURES = N_PAIR + ANGLE_DEGREE


def _chain(batch=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randn(batch, 11, 3, generator=gen, dtype=torch.float64)
    steps = 0.36 * steps / steps.norm(dim=-1, keepdim=True)
    return torch.cat([torch.zeros(batch, 1, 3, dtype=torch.float64), steps.cumsum(1)], dim=1)


def _model(seed=0, n=12, **walls):
    gen = torch.Generator().manual_seed(seed)
    return LangevinModel(
        n,
        history=1,
        length_scale=0.36,
        ar_coefficients=[0.99],
        head_weights=1e-3 * torch.randn(N_FEATURES, generator=gen),
        **{"wall_low": [0.3, 0.3, 0.3, 0.3], "wall_high": [0.4, 0.7, 1.0], **walls},
    ).double()


def test_pair_forces_rotate_ignore_translation_and_reversal_but_not_a_shuffle():
    f = PairForces(12, 0.36).double()
    x = _chain()
    base = f(x)
    assert base.shape == (4, 12, 3, N_PAIR) and f.n_features == N_PAIR
    q = -rotation(3)  # improper: a rotation times the inversion
    torch.testing.assert_close(
        f(x @ q.T + torch.tensor([1.0, -2.0, 0.5], dtype=x.dtype)), torch.einsum("ij,bnjf->bnif", q, base)
    )
    torch.testing.assert_close(f(x[:, REVERSE]), base[:, REVERSE])
    shuffle = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(f(x[:, shuffle]), base[:, shuffle], atol=1e-6)


def test_pair_forces_are_central_so_they_conserve_momentum():
    # every feature is a sum of pair terms phi(r_ij) u_ij / r_ij with the same weight both ways: they cancel
    f = PairForces(12, 0.36).double()
    torch.testing.assert_close(f(_chain()).sum(dim=1), torch.zeros(4, 3, N_PAIR, dtype=torch.float64))


def test_angle_forces_are_minus_the_gradient_of_the_cosine_powers():
    f = AngleForces(0.36).double()
    x = _chain(seed=4).requires_grad_(True)
    got = f(x)
    assert got.shape == (4, 12, 3, ANGLE_DEGREE)
    a, b = x[:, :-2] - x[:, 1:-1], x[:, 2:] - x[:, 1:-1]
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    for m in range(1, ANGLE_DEGREE + 1):
        (grad,) = torch.autograd.grad((cos**m).sum(), x, retain_graph=True)
        torch.testing.assert_close(got[..., m - 1], -0.36 * grad)
    # a potential of the angles only: no net force and no net torque on the chain
    torch.testing.assert_close(got.sum(dim=1), torch.zeros(4, 3, ANGLE_DEGREE, dtype=torch.float64))
    torque = torch.linalg.cross(x[..., None].expand_as(got), got, dim=2).sum(dim=1)
    torch.testing.assert_close(torque, torch.zeros_like(torque))


def test_the_core_stops_what_the_soft_wall_lets_through():
    soft = Wall(2, low=[0.2, 0.3, 0.3, 0.3], high=[0.5, 0.9, 1.2]).double()
    hard = Wall(2, low=[0.2, 0.3, 0.3, 0.3], high=[0.5, 0.9, 1.2], core=[0.1] * 4).double()
    deep = torch.tensor([[[0.0, 0, 0], [0.05, 0, 0]]], dtype=torch.float64)
    # the soft wall: 0.01 x (0.2 - 0.05) per bead; the core adds 0.5 x (0.1 - 0.05)
    np.testing.assert_allclose(float(soft(deep)[0, 1, 0]), 0.01 * 0.15, rtol=1e-6)
    np.testing.assert_allclose(float(hard(deep)[0, 1, 0]), 0.01 * 0.15 + 0.5 * 0.05, rtol=1e-6)
    inside_core = torch.tensor([[[0.0, 0, 0], [0.15, 0, 0]]], dtype=torch.float64)
    torch.testing.assert_close(hard(inside_core), soft(inside_core))


def test_the_wall_is_zero_inside_the_range_and_pushes_back_outside():
    w = Wall(3, low=[0.2, 0.3, 0.3, 0.3], high=[0.5, 0.9, 1.2]).double()
    inside = torch.tensor([[[0.0, 0, 0], [0.4, 0, 0], [0.4, 0.4, 0]]], dtype=torch.float64)
    torch.testing.assert_close(w(inside), torch.zeros_like(inside))
    short = torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [0.1, 0.4, 0]]], dtype=torch.float64)
    push = w(short)
    assert push[0, 0, 0] < 0 < push[0, 1, 0]  # the too-short bond 0-1 is pushed apart along it
    np.testing.assert_allclose(float(push[0, 1, 0] - push[0, 0, 0]), 2 * 0.01 * 0.1, rtol=1e-6)
    long = torch.tensor([[[0.0, 0, 0], [0.7, 0, 0], [0.7, 0.4, 0]]], dtype=torch.float64)
    pull = w(long)
    assert pull[0, 0, 0] > 0 > pull[0, 1, 0]  # the stretched bond is pulled together
    # non-bonded pairs have no upper wall: far apart, nothing
    far = Wall(12, low=[0.0] * 4, high=[1e30] * 3).double()
    torch.testing.assert_close(far(10 * _chain()), torch.zeros(4, 12, 3, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"low": [0.1] * 3, "high": [1.0] * 3}, "3 lower"),
        ({"low": [0.1] * 4, "high": [1.0] * 3, "core": [0.1] * 2}, "2 core"),
        ({"low": [0.1] * 4, "high": [float("nan")] * 3}, "nan"),
        ({"low": [-0.1] + [0.1] * 3, "high": [1.0] * 3}, "-0.1"),
    ],
)
def test_bad_walls_repeat_the_value(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        Wall(12, **kwargs)


def test_the_model_is_e3_and_reversal_equivariant_and_the_range_comes_from_the_frames():
    m = _model()
    x = _chain(seed=2)
    y = m(x)
    q = -rotation(4)
    t = torch.tensor([0.3, 0.2, -1.0], dtype=x.dtype)
    torch.testing.assert_close(m(x @ q.T + t), y @ q.T, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(m(x[:, REVERSE]), y[:, REVERSE], atol=1e-12, rtol=1e-9)
    walls = distance_range(x, margin=0.0)
    low, high, core = walls["wall_low"], walls["wall_high"], walls["wall_core"]
    bonds = (x[:, 1:] - x[:, :-1]).norm(dim=-1)
    np.testing.assert_allclose(
        [low[0], high[0], core[0]], [float(bonds.min()), float(bonds.max()), 0.6 * float(bonds.min())]
    )
    assert len(low) == 4 and len(high) == 3 and len(core) == 4 and low[1] <= high[1]
    with pytest.raises(ValueError, match="history"):
        LangevinModel(12, history=0, length_scale=0.36)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        LangevinModel(12, history=1, length_scale=0.36, head_weights=[0.0, 0.0, 0.0])


def test_training_fits_in_closed_form_with_a_thermostat(tmp_path):
    data = resolve_data("sim", sim_frames=400)
    path = tmp_path / "t.npz"
    save_trajectory(path, data.frames)
    cfg = TrainConfig(model="langevin", epochs=5, max_time=None, seed=0)
    res = train_model(resolve_data(str(path)), cfg, output=tmp_path / "l.pt", progress=False)
    assert res.stopped_because == "nothing to train (fitted in closed form)"
    ckpt = load_checkpoint(tmp_path / "l.pt")
    metrics = ckpt["metrics"]
    spec = ckpt["spec"]
    assert cfg.history == 2 and spec["history"] == 1 and len(spec["head_weights"]) == N_FEATURES
    assert 0.9 < spec["ar_coefficients"][0] < 1.0  # a damping, not an amplification
    assert ckpt["noise_rule"] == "thermostat"
    n_train = int(0.8 * (len(data.frames) - 1))
    assert ckpt["noise_scale"] == pytest.approx(thermostat_scale(spec["ar_coefficients"], data.frames, 0, n_train))
    model = build_model(ckpt)
    assert float(model.wall.stiffness) == pytest.approx(0.01)
    assert metrics["val_mse"] < metrics["constant_velocity_mse"]  # forces beat the kinematics


def test_the_fit_and_the_walls_in_blocks_equal_the_fit_in_one(monkeypatch):
    # long chains are fitted in blocks of frames (memory grows as N^2); the blocks must not change the answer
    import e3traj.train._kinds as kinds
    import e3traj.train._langevin as langevin

    data = resolve_data("sim", sim_frames=300, n_beads=9)
    split = data.split()
    f = torch.as_tensor(split.frames)
    ts = split.train_index(1)
    args = (split, f[ts], f[ts - 1][:, None], f[ts + 1], 2)
    whole = kinds.KINDS["langevin"].prepare(*args)
    monkeypatch.setattr(kinds, "FIT_BLOCK_BYTES", 8 * 81 * 47 * 50)  # 50 frames per block
    monkeypatch.setattr(langevin, "PAIR_BLOCK_BYTES", 8 * 3 * 81 * 37)
    blocks = kinds.KINDS["langevin"].prepare(*args)
    np.testing.assert_allclose(blocks["head_weights"], whole["head_weights"], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(blocks["ar_coefficients"], whole["ar_coefficients"], rtol=1e-12)
    for key in ("wall_low", "wall_high", "wall_core"):
        assert blocks[key] == whole[key]


@pytest.mark.parametrize("n", [3, 4, 12, 30])
def test_the_export_form_is_the_model_with_its_walls_and_angles(n):
    model = _model(n, n, wall_low=[0.34, 0.5, 0.6, 0.45], wall_high=[0.38, 0.7, 1.0], wall_core=[0.2, 0.3, 0.35, 0.3])
    gen = torch.Generator().manual_seed(n + 100)
    steps = torch.randn(6, n - 1, 3, generator=gen, dtype=torch.float64)
    # bonds from 0.15 to 0.55: inside the core, between the walls and beyond the upper wall
    steps = (
        (0.15 + 0.4 * torch.rand(6, n - 1, 1, generator=gen, dtype=torch.float64))
        * steps
        / steps.norm(dim=-1, keepdim=True)
    )
    pos = 3.0 + torch.cat([torch.zeros(6, 1, 3, dtype=torch.float64), steps.cumsum(1)], dim=1)
    if n > 3:  # coincident beads, and a non-bonded pair 1e-9 apart (the denominators' epsilons matter there)
        pos[1, 2] = pos[1, 0]
        pos[2, -1] = pos[2, 0] + torch.tensor([1e-9, 0.0, 0.0], dtype=torch.float64)
    graph = model.graph_form().double()
    with torch.no_grad():
        want, got = model(pos), graph(pos)
        assert float(want.abs().max()) > 1e-3  # the walls and the forces act
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-15)
        # float32, as exported: as close to the float64 model as the model itself in float32
        err32 = float((graph.float()(pos.float()).double() - want).abs().max())
        assert err32 <= 4 * float((model.float()(pos.float()).double() - want).abs().max()) + 1e-9
