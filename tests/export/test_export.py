"""Export: verified bundles for both model kinds and both formats; refusals leave nothing behind."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from e3traj.export import ExportSettings, export_checkpoint
from e3traj.export import _export as ex
from e3traj.runtime import Bundle, resolve_data, save_trajectory, verify_bundle
from e3traj.runtime._errors import CheckFailed, InputError, UsageError
from e3traj.runtime._simulate import simulate
from e3traj.runtime.cli import main
from e3traj.train._checkpoint import load_checkpoint
from e3traj.train._train import TrainConfig, train_model

TINY = {"irreps_hidden": "3x0e + 2x0o + 2x1e + 3x1o", "layers": 2, "radial_neurons": 16}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    save_trajectory(d / "sim.npz", simulate(frames=120, seed=2))
    data = resolve_data(str(d / "sim.npz"))
    train_model(
        data, TrainConfig(model="e3nn", epochs=1, batch_size=16, e3nn=TINY), output=d / "e3nn.pt", progress=False
    )
    train_model(data, TrainConfig(model="baseline", epochs=2), output=d / "baseline.pt", progress=False)
    return d


@pytest.mark.parametrize("kind", ["e3nn", "baseline"])
def test_export_both_formats_parity(ckpts, tmp_path, kind):
    out = tmp_path / f"{kind}-bundle"
    manifest = export_checkpoint(ckpts / f"{kind}.pt", out, ExportSettings(formats=("onnx", "torchscript")))
    assert sorted(p.name for p in out.iterdir()) == [
        "example.npz",
        "manifest.json",
        "model.onnx",
        "model.torchscript.pt",
        *(["model_single.onnx"] if kind == "e3nn" else []),
    ]
    v = manifest["verification"]
    assert v["parity_max_abs"] <= 1e-5 and v["torchscript_parity_max_abs"] <= 1e-5
    assert manifest["outputs"][0]["meaning"] == ("displacement" if kind == "e3nn" else "next_positions")
    assert manifest["model"]["equivariant"] is (kind == "e3nn")
    assert v["equivariance"]["passed"] is (kind == "e3nn")
    verify_bundle(out)
    # self-contained ONNX: no NonZero, weights inside, metadata mirrored, dynamic batch
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert "NonZero" not in {n.op_type for n in model.graph.node}
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    meta = {p.key: p.value for p in model.metadata_props}
    assert (
        meta["e3traj.kind"] == kind
        and json.loads(meta["e3traj.hyperparameters"]) == manifest["model"]["hyperparameters"]
    )
    assert manifest["onnx"]["opset"] >= 17
    if kind == "e3nn":  # the radial MLPs went out as a table, its measured error recorded
        radial = manifest["onnx"]["radial"]
        assert radial["form"] == "table" and radial["intervals"] >= 64
        assert 0 < radial["max_abs_error"] <= radial["rtol"] * radial["max_abs_value"]
        assert "Exp" not in {n.op_type for n in model.graph.node}
        assert manifest["model"]["reference_flops_per_frame"] > 1e5  # e3nn's own Network's work per frame
    else:
        assert "radial" not in manifest["onnx"] and "reference_flops_per_frame" not in manifest["model"]
    with Bundle.open(out) as b:
        assert b.recheck_example() <= 1e-5
        x = np.random.default_rng(0).normal(size=(7, 12, 3))
        assert b.predict({"positions": x}).shape == (7, 12, 3)
    # the TorchScript file matches eager too (dev machines only; hosts never load it)
    ts = torch.jit.load(str(out / "model.torchscript.pt"))
    ck = load_checkpoint(ckpts / f"{kind}.pt")
    from e3traj.train._checkpoint import build_model

    eager = build_model(ck)
    xt = torch.randn(5, 12, 3)
    torch.testing.assert_close(ts(xt), eager(xt), atol=1e-5, rtol=0)


def test_wrong_graph_is_refused(ckpts, tmp_path, monkeypatch):
    """Negative control: an exporter that writes a subtly different graph must not produce a bundle."""
    real = ex._torch_export

    def wrong(model, x, path, opset, dynamo, names=None, dynamic_batch=True):
        class Off(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, pos):
                return self.m(pos) * 1.01

        real(Off(model), x, path, opset, dynamo, names, dynamic_batch)

    monkeypatch.setattr(ex, "_torch_export", wrong)
    out = tmp_path / "b"
    with pytest.raises(CheckFailed, match="parity"):
        export_checkpoint(ckpts / "e3nn.pt", out, ExportSettings(exporter="torchscript"))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_non_equivariant_e3nn_graph_is_refused(ckpts, tmp_path, monkeypatch):
    """If the exported e3nn model were not equivariant, export refuses (the checker is the runtime's)."""
    real = ex._torch_export

    class Broken(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m
            self.net = m.net  # what the radial table is built on (and shared with self.m in the copy)

        def forward(self, pos):
            return self.m(pos) + 1e-3 * pos[..., :1]  # breaks rotation and translation

    monkeypatch.setattr(ex, "build_model", lambda ck, name="": Broken(ex_build(ck)))
    from e3traj.train._checkpoint import build_model as ex_build

    monkeypatch.setattr(ex, "_torch_export", real)
    with pytest.raises(CheckFailed, match="not equivariant"):
        export_checkpoint(ckpts / "e3nn.pt", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_cli_export_radial_mlp_keeps_the_mlps(ckpts, tmp_path):
    out = tmp_path / "mlp"
    r = CliRunner().invoke(main, ["export", str(ckpts / "e3nn.pt"), "-o", str(out), "--radial", "mlp"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["onnx"]["radial"] == {"form": "mlp"} and manifest["verification"]["parity_max_abs"] <= 1e-5
    assert "Exp" in {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}  # the radial basis
    assert "single_frame" not in manifest["onnx"] and not (out / "model_single.onnx").exists()  # needs the table
    r = CliRunner().invoke(main, ["export", str(ckpts / "e3nn.pt"), "-o", str(tmp_path / "x"), "--radial", "lut"])
    assert r.exit_code == 2 and "--radial" in r.output and not (tmp_path / "x").exists()


def test_refusals(ckpts, tmp_path):
    ck = torch.load(ckpts / "e3nn.pt", weights_only=True)
    name = next(k for k, v in ck["state_dict"].items() if v.is_floating_point())
    ck["state_dict"][name] = ck["state_dict"][name].clone().fill_(float("nan"))
    torch.save(ck, tmp_path / "nan.pt")
    with pytest.raises(InputError, match="NaN"):
        export_checkpoint(tmp_path / "nan.pt", tmp_path / "nan-bundle")
    assert not (tmp_path / "nan-bundle").exists()
    ck = torch.load(ckpts / "e3nn.pt", weights_only=True)
    ck["format_version"] = 7
    torch.save(ck, tmp_path / "new.pt")
    with pytest.raises(InputError, match="newer"):
        export_checkpoint(tmp_path / "new.pt", tmp_path / "x")
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep").write_text("mine")
    with pytest.raises(UsageError, match="--force"):
        export_checkpoint(ckpts / "e3nn.pt", tmp_path / "exists")
    assert (tmp_path / "exists" / "keep").read_text() == "mine"
    with pytest.raises(UsageError, match="radial 'lut' is unknown"):
        ExportSettings(radial="lut")
    with pytest.raises(UsageError, match="radial_rtol 0 is not a number in"):
        ExportSettings(radial_rtol=0)


def test_cli_export_force_replaces_only_when_complete(ckpts, tmp_path):
    out = tmp_path / "bundle"
    r = CliRunner().invoke(main, ["export", str(ckpts / "baseline.pt"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "parity" in r.output
    r = CliRunner().invoke(main, ["export", str(ckpts / "baseline.pt"), "-o", str(out)])
    assert r.exit_code == 2 and "--force" in r.output
    r = CliRunner().invoke(main, ["export", str(ckpts / "baseline.pt"), "-o", str(out), "--force"])
    assert r.exit_code == 0, r.output
    verify_bundle(out)
    r = CliRunner().invoke(main, ["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m")])
    assert r.exit_code == 3 and "not found" in r.output and "Traceback" not in r.output


def test_velocity_bundle_two_inputs_and_rollout(ckpts, tmp_path):
    from e3traj.runtime._rollout import rollout

    data = resolve_data(str(ckpts / "sim.npz"))
    train_model(
        data,
        TrainConfig(model="e3nn-velocity", epochs=1, batch_size=16, e3nn=TINY),
        output=tmp_path / "v.pt",
        progress=False,
    )
    manifest = export_checkpoint(tmp_path / "v.pt", tmp_path / "vb")
    assert [i["meaning"] for i in manifest["inputs"]] == ["positions", "previous_displacement"]
    assert manifest["outputs"][0]["meaning"] == "velocity_correction"
    assert manifest["verification"]["equivariance"]["passed"]
    with Bundle.open(tmp_path / "vb") as b:
        x, prev = data.frames[100:102], data.frames[99:101]
        res = rollout(b, x, 5, previous=prev)
        assert res.traj.shape == (6, 2, 12, 3) and res.complete
        # the first step is constant velocity plus the model's correction
        corr = b.predict({"positions": x, "previous_displacement": x - prev})
        np.testing.assert_allclose(res.traj[1], 2 * x - prev + corr, atol=1e-12)
        # one start: the single-frame graph, the same correction within the export's parity
        assert manifest["verification"]["single_frame"]["equivariance"]["passed"]
        one = rollout(b, x[:1], 1, previous=prev[:1])
        single = b.predict_single_frame({"positions": x[:1], "previous_displacement": x[:1] - prev[:1]})
        np.testing.assert_allclose(one.traj[1], 2 * x[:1] - prev[:1] + single, atol=1e-12)
        np.testing.assert_allclose(single, corr[:1], atol=1e-5 * max(1.0, float(np.abs(corr).max())))
    r = CliRunner().invoke(
        main,
        [
            "rollout",
            str(tmp_path / "vb"),
            str(ckpts / "sim.npz"),
            "--frames",
            "0",
            "--steps",
            "3",
            "-o",
            str(tmp_path / "r.npz"),
        ],
    )
    assert r.exit_code != 0 and "frame" in r.output and not (tmp_path / "r.npz").exists()


@pytest.mark.parametrize("kind", ["e3nn", "baseline", "e3nn-velocity"])
def test_every_model_path_through_the_runtime_checker(ckpts, tmp_path, kind):
    """Eager, TorchScript and ONNX are each checked for rotation, reflection, translation and permutation;
    the baseline is the negative control on every path."""
    from e3traj.runtime._equivariance import check_equivariance
    from e3traj.train._checkpoint import build_model

    if kind == "e3nn-velocity":
        data = resolve_data(str(ckpts / "sim.npz"))
        train_model(
            data, TrainConfig(model=kind, epochs=1, batch_size=16, e3nn=TINY), output=ckpts / "vel.pt", progress=False
        )
        ckpt_path = ckpts / "vel.pt"
    else:
        ckpt_path = ckpts / f"{kind}.pt"
    out = tmp_path / "b"
    manifest = export_checkpoint(ckpt_path, out, ExportSettings(formats=("onnx", "torchscript")))
    names = [i["name"] for i in manifest["inputs"]]
    meanings = {i["name"]: i["meaning"] for i in manifest["inputs"]}
    with np.load(out / "example.npz", allow_pickle=False) as z:
        frames = {n: z[n].astype(np.float64) for n in names}
    eager = build_model(load_checkpoint(ckpt_path))
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))

    def torch_path(m):
        def predict(inp):
            with torch.no_grad():
                return m(*(torch.as_tensor(inp[n], dtype=torch.float32) for n in names)).double().numpy()

        return predict

    with Bundle.open(out, threads=1) as b:
        paths = {"eager": torch_path(eager), "torchscript": torch_path(scripted), "onnx": b.predict}
        for name, predict in paths.items():
            rep = check_equivariance(predict, meanings, manifest["outputs"][0]["meaning"], frames, trials=2, seed=3)
            if kind == "baseline":
                assert not rep.case("rotation").passed and not rep.case("translation").passed, name
                assert not rep.case("mirror_z").passed and rep.case("permutation").passed, name
            else:
                assert rep.passed, f"{name}\n{rep.table()}"


def test_a_history_bundle_exports_checks_and_steps_like_torch(tmp_path):
    """e3nn-history: (B, H, 12, 3) input, ar_correction output, the AR coefficients in the manifest, the chain's
    reversal as the promised permutation; the host's step equals the checkpoint's."""
    from e3traj.runtime import check_bundle, rollout
    from e3traj.train._checkpoint import build_model
    from e3traj.train._train import step_function

    save_trajectory(tmp_path / "sim.npz", simulate(frames=160, seed=4))
    data = resolve_data(str(tmp_path / "sim.npz"))
    cfg = TrainConfig(model="e3nn-history", history=3, epochs=2, batch_size=16, e3nn=TINY)
    train_model(data, cfg, output=tmp_path / "h.pt", progress=False)
    manifest = export_checkpoint(tmp_path / "h.pt", tmp_path / "hb")
    ck = load_checkpoint(tmp_path / "h.pt")
    assert manifest["model"]["ar_coefficients"] == ck["spec"]["ar_coefficients"]
    assert manifest["model"]["permutation"] == "chain_reversal" and manifest["model"]["history_frames"] == 3
    assert [i["shape"] for i in manifest["inputs"]] == [["batch", 12, 3], ["batch", 2, 12, 3]]
    assert manifest["outputs"][0]["meaning"] == "ar_correction"
    assert manifest["verification"]["parity_max_abs"] <= 1e-5
    perm = next(c for c in manifest["verification"]["equivariance"]["cases"] if c["case"] == "permutation")
    assert perm["passed"] and "reversal" in perm["note"]
    frames = data.frames[100:110]
    x, past = frames[-1:].repeat(3, 0), np.stack([frames[-3:-1]] * 3)
    p = step_function(build_model(ck), "e3nn-history", ck["spec"])
    with Bundle.open(tmp_path / "hb") as b:
        assert b.history == 2 and b.permutation == "chain_reversal"
        np.testing.assert_allclose(b.step(x, past), p.step(x, past), atol=1e-6, rtol=0)
        report = check_bundle(b)
        assert report.passed
        # one start: the single-frame graph (gated at export, checked by check), the checkpoint's step within parity
        assert b.has_single_frame and manifest["verification"]["single_frame"]["equivariance"]["passed"]
        assert any(c.case.startswith("single-frame") for c in report.cases)
        one = rollout(b, x[:1], 1, previous=past[:1], run_starts=1)
        np.testing.assert_allclose(one.traj[1], p.step(x[:1], past[:1]), atol=1e-6, rtol=0)
        feed = b.model_inputs(x[:1], past[:1])
        single = b.predict_single_frame(feed)
        np.testing.assert_allclose(single, b.predict(feed), atol=1e-5, rtol=0)
        # the rollout ran the single-frame graph: AR(2) in float64 plus its correction, to rounding
        d1, d2 = x[:1] - past[:1, 1], past[:1, 1] - past[:1, 0]
        coef = b.ar_coefficients
        np.testing.assert_allclose(one.traj[1], x[:1] + coef[0] * d1 + coef[1] * d2 + single, atol=1e-12, rtol=0)


def test_e3nn_bundle_has_a_checked_single_frame_graph(ckpts, tmp_path):
    out = tmp_path / "b"
    manifest = export_checkpoint(ckpts / "e3nn.pt", out)
    single = manifest["onnx"]["single_frame"]
    assert single["file"] == "model_single.onnx" and single["batch"] == 1
    assert single["nodes"] < manifest["onnx"]["nodes"] and "ReduceSum" in single["op_types"]
    v = manifest["verification"]["single_frame"]
    assert v["parity_max_abs"] <= 1e-5 and v["equivariance"]["passed"] is True
    assert manifest["files"]["model_single.onnx"]["size"] == (out / "model_single.onnx").stat().st_size
    model = onnx.load(str(out / "model_single.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    ex_in = np.load(out / "example.npz")
    with Bundle.open(out) as b:
        sess = b.single_frame_session()
        one = np.concatenate([sess.run(None, {"positions": ex_in["positions"][i : i + 1]})[0] for i in range(4)])
        assert np.abs(one - ex_in["prediction"][:4]).max() <= 1e-5
    r = CliRunner().invoke(main, ["export", str(ckpts / "e3nn.pt"), "-o", str(tmp_path / "bare"), "--no-single-frame"])
    assert r.exit_code == 0, r.output
    bare = json.loads((tmp_path / "bare" / "manifest.json").read_text())
    assert "single_frame" not in bare["onnx"] and not (tmp_path / "bare" / "model_single.onnx").exists()


@pytest.mark.parametrize(
    "damage, message, tol",
    [
        (lambda f, pos: f(pos) * 1.01, "single-frame parity", 1e-5),
        # within a parity tolerance loosened to let it through, so that the equivariance gate must catch it
        (lambda f, pos: f(pos) + 1e-3 * pos[..., :1], "single-frame graph is not equivariant", 0.1),
    ],
    ids=["parity", "equivariance"],
)
def test_a_wrong_single_frame_graph_is_refused(ckpts, tmp_path, monkeypatch, damage, message, tol):
    """Negative controls: a single-frame form off by 1%, or not equivariant, writes no bundle."""
    from e3traj.train._model import DisplacementModel

    real = DisplacementModel.single_frame_form

    class Damaged(torch.nn.Module):
        def __init__(self, form):
            super().__init__()
            self.form = form

        def forward(self, pos):
            return damage(self.form, pos)

    monkeypatch.setattr(DisplacementModel, "single_frame_form", lambda self: Damaged(real(self)))
    with pytest.raises(CheckFailed, match=message):
        export_checkpoint(ckpts / "e3nn.pt", tmp_path / "b", ExportSettings(parity_tol=tol))
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []
