"""The history model (train/_history.py): chain features, equivariance, AR(K) + head + network, its training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import rotation

from e3traj.runtime import fit_ar, resolve_data, save_trajectory, split_pairs
from e3traj.runtime._simulate import simulate
from e3traj.train import E3nnConfig, tabulate_radial
from e3traj.train._checkpoint import build_model, load_checkpoint
from e3traj.train._history import ChainFeatures, HistoryModel
from e3traj.train._train import TrainConfig, step_function, train_model

TINY = {"irreps_hidden": "2x0e + 2x1o", "layers": 1, "radial_neurons": 16}
REVERSE = torch.arange(11, -1, -1)


def _chain(batch=4, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randn(batch, 11, 3, generator=gen, dtype=torch.float64)
    steps = 0.36 * steps / steps.norm(dim=-1, keepdim=True)
    x = torch.cat([torch.zeros(batch, 1, 3, dtype=torch.float64), steps.cumsum(1)], dim=1)
    return x.to(dtype)


def _model(h=3, seed=0):
    torch.manual_seed(seed)
    cfg = E3nnConfig(irreps_in=f"{h + 1}x1o", **TINY)
    gen = torch.Generator().manual_seed(seed)
    m = HistoryModel(
        cfg,
        history=h,
        scale=0.01,
        input_scale=0.02,
        length_scale=0.36,
        ar_coefficients=[1.5, -0.7, 0.2][:h],
        head_weights=0.01 * torch.randn(30, generator=gen),
    ).double()
    with torch.no_grad():
        m.gain.fill_(0.7)  # a trained-like model: the network's share is on
    return m


def test_chain_features_rotate_ignore_translation_and_reversal_but_not_a_shuffle():
    f = ChainFeatures(12, 0.36).double()
    x = _chain()
    d = 0.02 * torch.randn(4, 12, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    q = rotation(3)
    base = f(x, d)
    assert base.shape == (4, 12, 3, 30) and f.n_features == 30
    moved = f(x @ q.T + torch.tensor([1.0, -2.0, 0.5], dtype=x.dtype), d @ q.T)
    torch.testing.assert_close(moved, torch.einsum("ij,bnjf->bnif", q, base))
    torch.testing.assert_close(f(x[:, REVERSE], d[:, REVERSE]), base[:, REVERSE])
    shuffle = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(f(x[:, shuffle], d[:, shuffle]), base[:, shuffle], atol=1e-6)


def test_history_model_is_e3_and_reversal_equivariant():
    m = _model()
    x = _chain(seed=2)
    d = 0.02 * torch.randn(4, 3, 12, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = m(x, d)
    q = -rotation(4)  # improper
    t = torch.tensor([0.3, 0.2, -1.0], dtype=x.dtype)
    torch.testing.assert_close(m(x @ q.T + t, d @ q.T), y @ q.T, atol=1e-10, rtol=1e-7)
    torch.testing.assert_close(m(x[:, REVERSE], d[:, :, REVERSE]), y[:, REVERSE], atol=1e-10, rtol=1e-7)
    shuffle = torch.randperm(12, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(m(x[:, shuffle], d[:, :, shuffle]), y[:, shuffle], atol=1e-8)


def test_an_untrained_model_is_ar_plus_head():
    m = _model()
    with torch.no_grad():
        m.gain.zero_()
    x = _chain(seed=6)
    d = 0.02 * torch.randn(4, 3, 12, 3, dtype=torch.float64)
    torch.testing.assert_close(m(x, d), m.head(x, d))


def test_bad_arguments_are_refused():
    cfg = E3nnConfig(irreps_in="4x1o", **TINY)
    with pytest.raises(ValueError, match="irreps_in '3x1o'"):
        HistoryModel(cfg, history=2, scale=1.0, input_scale=1.0, length_scale=0.3)
    with pytest.raises(ValueError, match="history must be"):
        HistoryModel(cfg, history=0, scale=1.0, input_scale=1.0, length_scale=0.3)
    with pytest.raises(ValueError, match="length_scale"):
        ChainFeatures(12, 0.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("hist")
    save_trajectory(d / "sim.npz", simulate(frames=240, seed=3))
    data = resolve_data(str(d / "sim.npz"))
    cfg = TrainConfig(model="e3nn-history", history=4, epochs=3, max_time=60, batch_size=16, e3nn=TINY)
    res = train_model(data, cfg, output=d / "h.pt", progress=False)
    return data, res, d / "h.pt"


def test_training_fits_the_runtime_ar_and_never_ends_worse_than_its_start(trained):
    data, res, path = trained
    ck = res.checkpoint
    split = split_pairs(data.frames)
    assert ck["spec"]["history"] == 3
    assert ck["spec"]["ar_coefficients"] == list(fit_ar(split, 4).coefficients)  # the suite's AR(4), exactly
    m = ck["metrics"]
    for key in ("ar_mse", "constant_acceleration_mse", "best_baseline", "ratio_to_best"):
        assert key in m
    assert m["ratio_to_best"] == pytest.approx(m["val_mse"] / m["best_baseline_mse"])
    # the best epoch is never worse than epoch 0 (AR(4) + the ridge head, the network's gain at 0)
    model = build_model(load_checkpoint(path))
    assert ck["sample_past"].shape == (16, 3, 12, 3)
    p = step_function(model, "e3nn-history", ck["spec"])
    assert p.history == 3
    frames = split.frames
    x, past = frames[200:210], np.stack([frames[197 + i : 207 + i] for i in range(3)], axis=1)
    want = fit_ar(split, 4).step(x, past)
    got = p.step(x, past)
    assert np.abs(got - want).max() < 10 * np.abs(np.diff(frames, axis=0)).max()  # a correction, not a new frame


def test_resume_keeps_the_fitted_spec(trained, tmp_path):
    data, res, path = trained
    ck = load_checkpoint(path)
    cfg = TrainConfig(model="e3nn-history", history=4, epochs=4, max_time=60, batch_size=16, e3nn=dict(ck["config"]))
    again = train_model(data, cfg, output=tmp_path / "r.pt", resume=ck, progress=False).checkpoint
    assert again["spec"] == ck["spec"]


def test_history_defaults_to_the_suites_ar_order_and_unrolled_losses_train(tmp_path):
    from e3traj.runtime import choose_ar
    from e3traj.runtime._errors import UsageError

    save_trajectory(tmp_path / "sim.npz", simulate(frames=200, seed=5))
    data = resolve_data(str(tmp_path / "sim.npz"))
    cfg = TrainConfig(model="e3nn-history", epochs=1, batch_size=16, unroll=3, e3nn=TINY)
    ck = train_model(data, cfg, progress=False).checkpoint
    want = max(2, choose_ar(split_pairs(data.frames))[0].order)
    assert ck["train"]["history"] == want and ck["spec"]["history"] == want - 1
    assert ck["train"]["unroll"] == 3 and np.isfinite(ck["history"][0]["train_loss"])
    with pytest.raises(UsageError, match="unroll must be"):
        TrainConfig(model="e3nn-history", unroll=0)


def test_unrolled_training_skips_batches_without_future_frames(tmp_path):
    """batch size 1 and --unroll 2: the pairs at the end of the training part have no second target frame;
    their batches are skipped instead of adding a NaN loss."""
    save_trajectory(tmp_path / "sim.npz", simulate(frames=60, seed=6))
    data = resolve_data(str(tmp_path / "sim.npz"))
    cfg = TrainConfig(model="e3nn-history", history=3, epochs=1, batch_size=1, unroll=2, e3nn=TINY)
    ck = train_model(data, cfg, progress=False).checkpoint
    assert np.isfinite(ck["history"][0]["train_loss"])


@pytest.mark.parametrize("h", [1, 3])
def test_the_export_form_folds_the_head_and_is_the_model(h):
    m = _model(h=h)
    x = _chain(seed=4)
    x[0, 5] = x[0, 4] + 0.01  # a close pair: the basis' short end and a sharp bend
    x[1, 7] = x[1, 6]  # coincident beads
    d = 0.02 * torch.randn(4, h, 12, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        want = m(x, d)
        graph = m.graph_form()
        head = graph.head(x, d[:, 0])
        torch.testing.assert_close(head, m.head(x, d), rtol=1e-10, atol=1e-14)
        assert float(head.abs().max()) > 1e-3 and float((want - head).abs().max()) > 1e-4  # both parts act
        torch.testing.assert_close(graph(x, d), want, rtol=1e-10, atol=1e-14)
        # the single-frame form (export writes it with the radial table): the tabulated graph, frame by frame
        tab = tabulate_radial(m)[0].graph_form()
        single = tab.single_frame_form()
        table_out = tab(x, d)
        got = torch.cat([single(x[i : i + 1], d[i : i + 1]) for i in range(len(x))])
        assert float((table_out - head).abs().max()) > 1e-4
        assert float((got - table_out).abs().max()) <= 1e-12 * max(1.0, float(table_out.abs().max()))


@pytest.mark.parametrize("n", [3, 64])
def test_the_folded_head_is_the_features_product_at_any_n(n):
    from e3traj.train._history import ChainFeatures, ChainHead

    feats = ChainFeatures(n, 0.36).double()
    w = 0.01 * torch.randn(feats.n_features, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    gen = torch.Generator().manual_seed(n + 1)
    steps = torch.randn(3, n - 1, 3, generator=gen, dtype=torch.float64)
    x = torch.cat(
        [torch.zeros(3, 1, 3, dtype=torch.float64), (0.36 * steps / steps.norm(dim=-1, keepdim=True)).cumsum(1)], 1
    )
    d = 0.02 * torch.randn(3, n, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        want = feats(x, d) @ w
        torch.testing.assert_close(ChainHead(feats, w)(x, d), want, rtol=1e-10, atol=1e-14)
