"""Training loop, checkpoints and the train/evaluate commands (tiny budgets)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from e3traj.runtime._data import save_trajectory
from e3traj.runtime._errors import InputError, UsageError
from e3traj.runtime._simulate import simulate
from e3traj.runtime.cli import main
from e3traj.train._checkpoint import build_model, load_checkpoint, save_checkpoint
from e3traj.train._train import TrainConfig, train_model


@pytest.fixture(scope="module")
def traj(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sim.npz"
    save_trajectory(path, simulate(frames=200, seed=1))
    return path


@pytest.fixture(scope="module")
def data(traj):
    from e3traj.runtime import resolve_data

    return resolve_data(str(traj))


TINY = {"irreps_hidden": "2x0e + 2x1o", "layers": 1, "radial_neurons": 16}


@pytest.fixture(scope="module")
def e3nn_ckpt(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "e3nn.pt"
    cfg = TrainConfig(model="e3nn", epochs=2, max_time=30, batch_size=16, seed=0, e3nn=TINY)
    train_model(data, cfg, output=out, progress=False)
    return out


def test_baseline_trains_and_reports_trivial_predictors(data, tmp_path):
    res = train_model(
        data, TrainConfig(model="baseline", epochs=3, max_time=20), output=tmp_path / "b.pt", progress=False
    )
    m = res.checkpoint["metrics"]
    for key in ("val_mse", "persistence_mse", "constant_velocity_mse", "skill"):
        assert np.isfinite(m[key])
    assert m["skill"] == pytest.approx(1 - m["val_mse"] / m["persistence_mse"])
    ck = load_checkpoint(tmp_path / "b.pt")
    assert ck["kind"] == "baseline" and ck["data"]["sha256"] == data.sha256
    assert len(ck["history"]) == 3 and ck["sample_frames"].shape == (16, 12, 3)


def test_e3nn_training_is_reproducible(data, tmp_path):
    cfg = TrainConfig(model="e3nn", epochs=1, max_time=30, batch_size=16, seed=3, e3nn=TINY)
    a = train_model(data, cfg, progress=False).checkpoint
    b = train_model(data, cfg, progress=False).checkpoint
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(v, b["state_dict"][k], rtol=0, atol=0)
    assert a["metrics"]["val_mse"] == b["metrics"]["val_mse"]


def test_e3nn_checkpoint_roundtrip_and_scale(e3nn_ckpt, data):
    ck = load_checkpoint(e3nn_ckpt)
    from e3traj.runtime._data import split_pairs

    s = split_pairs(data.frames)
    disp = s.train_y - s.train_x  # the RMS training displacement, computed in float32 by the trainer
    assert ck["scale"] == pytest.approx(float(np.sqrt(np.mean(disp**2))), rel=1e-6)
    model = build_model(ck)
    x = torch.as_tensor(data.frames[:4], dtype=torch.float32)
    assert model(x).shape == (4, 12, 3)
    assert ck["config"]["irreps_hidden"] == TINY["irreps_hidden"]


def test_resume_continues_epochs(e3nn_ckpt, data, tmp_path):
    ck = load_checkpoint(e3nn_ckpt)
    cfg = TrainConfig(model="e3nn", epochs=3, max_time=30, batch_size=16, seed=0, e3nn=ck["config"])
    res = train_model(data, cfg, output=tmp_path / "r.pt", resume=ck, progress=False)
    assert [h["epoch"] for h in res.checkpoint["history"]] == [1, 2, 3]


def test_resume_refuses_other_kind_or_data(e3nn_ckpt, data):
    ck = load_checkpoint(e3nn_ckpt)
    with pytest.raises(UsageError, match="resume"):
        train_model(data, TrainConfig(model="baseline", epochs=1), resume=ck, progress=False)
    from e3traj.runtime import DataSource

    other = DataSource(data.frames + 1.0, "file", "0" * 64)
    with pytest.raises(UsageError, match="other data"):
        train_model(other, TrainConfig(model="e3nn", epochs=2, e3nn=ck["config"]), resume=ck, progress=False)


def test_unknown_model_kind():
    with pytest.raises(UsageError, match="transformer"):
        TrainConfig(model="transformer")


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda ck: ck.update(format_version=99), "newer"),
        (lambda ck: ck.update(kind="mystery"), "kind"),
        (lambda ck: ck["state_dict"].__setitem__(next(iter(ck["state_dict"])), torch.tensor([float("nan")])), "NaN"),
        (lambda ck: ck.update(format="other"), "not an e3traj checkpoint"),
    ],
)
def test_bad_checkpoints(e3nn_ckpt, tmp_path, mutate, needle):
    ck = torch.load(e3nn_ckpt, weights_only=True)
    mutate(ck)
    bad = tmp_path / "bad.pt"
    torch.save(ck, bad)
    with pytest.raises(InputError, match=needle):
        load_checkpoint(bad)


def test_corrupt_and_truncated_checkpoint(e3nn_ckpt, tmp_path):
    data = e3nn_ckpt.read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "t.pt")
    (tmp_path / "g.pt").write_bytes(b"garbage" * 10)
    with pytest.raises(InputError):
        load_checkpoint(tmp_path / "g.pt")


def test_pickled_object_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "e3traj-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="refused|not a readable"):
        load_checkpoint(tmp_path / "evil.pt")


def test_weights_of_other_kind_refused(e3nn_ckpt, tmp_path):
    ck = load_checkpoint(e3nn_ckpt)
    ck["kind"] = "baseline"
    with pytest.raises(InputError, match="do not fit"):
        build_model(ck)
    save_checkpoint(tmp_path / "x.pt", {k: v for k, v in ck.items() if k not in ("format", "format_version")})
    assert load_checkpoint(tmp_path / "x.pt")["kind"] == "baseline"


def test_cli_train_and_evaluate(traj, tmp_path):
    out = tmp_path / "b.pt"
    r = CliRunner().invoke(
        main, ["train", "--model", "baseline", "--data", str(traj), "-o", str(out), "--epochs", "2", "--quiet"]
    )
    assert r.exit_code == 0, r.output
    assert "persistence" in r.output and out.exists()
    r = CliRunner().invoke(main, ["evaluate", str(out), "--data", str(traj), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    suite = {"persistence", "constant_velocity", "constant_acceleration", "ar"}
    assert set(rep["rollout_rmsd"]) == {"model"} | suite
    one = rep["one_step"]
    assert one["best_baseline"] in suite and one["best_baseline_mse"] == min(one[f"{n}_mse"] for n in suite)
    assert one["ratio_to_best"] == pytest.approx(one["val_mse"] / one["best_baseline_mse"])
    assert set(rep["rollout_best"].values()) <= suite
    assert rep["one_step"]["n_val_pairs"] == 40
    r = CliRunner().invoke(main, ["evaluate", str(out), "--data", str(traj)])
    assert r.exit_code == 0 and "constant velocity" in r.output and "k=10" in r.output
    assert "<- best trivial predictor" in r.output and "model / best" in r.output and "fitted" in r.output


def test_cli_train_refuses_existing_output_and_bad_data(traj, tmp_path):
    out = tmp_path / "b.pt"
    out.write_bytes(b"keep me")
    r = CliRunner().invoke(main, ["train", "--model", "baseline", "--data", str(traj), "-o", str(out), "--quiet"])
    assert r.exit_code == 2 and "--force" in r.output and out.read_bytes() == b"keep me"
    bad = tmp_path / "bad.npz"
    np.savez(bad, arr=np.zeros((10, 2, 2)))
    r = CliRunner().invoke(main, ["train", "--data", str(bad), "-o", str(tmp_path / "n.pt"), "--quiet"])
    assert r.exit_code == 3 and "2 beads per frame" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "n.pt").exists()
    r = CliRunner().invoke(main, ["train", "--data", str(traj), "--beads", "20", "-o", str(tmp_path / "n.pt")])
    assert r.exit_code == 3 and "12 beads per frame; the model expects 20" in r.output
    assert not (tmp_path / "n.pt").exists()
    r = CliRunner().invoke(main, ["train", "--model", "transformer", "--data", str(traj), "-o", str(tmp_path / "m.pt")])
    assert r.exit_code == 2 and "transformer" in r.output
    r = CliRunner().invoke(main, ["train", "--data", str(traj), "-o", str(traj), "--force"])
    assert r.exit_code == 2 and "also an input" in r.output


def test_velocity_model_trains_on_the_same_validation_pairs(data, tmp_path):
    cfg = TrainConfig(model="e3nn-velocity", epochs=1, max_time=30, batch_size=16, e3nn=TINY)
    res = train_model(data, cfg, output=tmp_path / "v.pt", progress=False)
    ck = load_checkpoint(tmp_path / "v.pt")
    m = res.checkpoint["metrics"]
    base = train_model(data, TrainConfig(model="baseline", epochs=1), progress=False).checkpoint["metrics"]
    # same validation pairs for every kind: the trivial predictors score the same
    assert m["persistence_mse"] == base["persistence_mse"]
    assert m["constant_velocity_mse"] == base["constant_velocity_mse"]
    assert ck["config"]["irreps_in"] == "1x1o" and ck["input_scale"] > 0
    model = build_model(ck)
    from e3traj.runtime._data import split_pairs

    s = split_pairs(data.frames)
    target = s.train_y[1:] - 2 * s.train_x[1:] + s.frames[: s.n_train - 1]
    assert ck["scale"] == pytest.approx(float(np.sqrt(np.mean(target**2))), rel=1e-6)
    x = torch.as_tensor(s.val_x[:3], dtype=torch.float32)
    v = torch.as_tensor(s.val_x[:3] - s.val_prev[:3], dtype=torch.float32)
    assert model(x, v).shape == (3, 12, 3)


def test_resume_into_an_existing_file_needs_force(e3nn_ckpt, traj, tmp_path):
    existing = tmp_path / "existing.pt"
    existing.write_bytes(b"someone's checkpoint")
    args = ["train", "--model", "e3nn", "--data", str(traj), "--resume", str(e3nn_ckpt), "-o", str(existing)]
    r = CliRunner().invoke(main, [*args, "--quiet"])
    assert r.exit_code == 2 and "already exists" in r.output and "--force" in r.output, r.output
    assert existing.read_bytes() == b"someone's checkpoint"
