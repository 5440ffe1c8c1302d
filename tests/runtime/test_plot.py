"""``e3traj plot`` and ``e3traj.runtime._plot``: every figure renders, is a valid PNG/SVG, and follows the data."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from e3traj.runtime._data import split_pairs  # noqa: E402
from e3traj.runtime._errors import InputError, UsageError  # noqa: E402
from e3traj.runtime._metrics import constant_velocity_step, persistence_step, rmsd, rollout_starts  # noqa: E402
from e3traj.runtime._plot import figure_format, plot_parity, plot_rmsd, plot_trajectory  # noqa: E402
from e3traj.runtime._plot_data import TrainingCurve, r2_score, rollout_rmsd_curves, training_curve  # noqa: E402
from e3traj.runtime._plot_reports import plot_equivariance, plot_training  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, data[:8]
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def pixels(path) -> np.ndarray:
    from matplotlib.image import imread

    png_size(path)
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img


def assert_svg(path) -> bool:
    text = path.read_text(encoding="utf-8")
    assert "<svg" in text
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag.endswith("svg")
    return True


def history(n: int = 6, scale: float = 1e-3, dt: float = 1.5) -> list[dict]:
    return [
        {"epoch": i + 1, "time": dt * (i + 1), "train_loss": scale / (i + 1), "val_mse": scale / (i + 1), "lr": 1e-3}
        for i in range(n)
    ]


def training_section(hist: list | None) -> dict:
    section = {
        "data_sha256": "0" * 64,
        "data_source": "sim",
        "metrics": {"val_mse": 1e-4, "persistence_mse": 2e-3, "constant_velocity_mse": 3e-5},
    }
    if hist is not None:
        section["history"] = hist
    return {"training": section}


@pytest.fixture
def data_file(tmp_path, toys):
    """40 planar frames (dmol-book format): 39 pairs, 31 for training, 8 for validation."""
    path = tmp_path / "data.npz"
    np.savez(path, arr=toys.make_traj(40, seed=5, dim=2))
    return path


@pytest.fixture
def frames(data_file):
    arr = np.load(data_file)["arr"]
    return np.concatenate([arr, np.zeros(arr.shape[:2] + (1,))], axis=-1)


def _rollout(cli, bundle, data, out, frames="10,20", steps=12):
    r = cli("rollout", bundle, data, "-o", out, "--steps", steps, "--frames", frames)
    assert r.exit_code == 0, r.output
    return out


# --------------------------------------------------------------------------------------------- library


def test_figure_format_and_r2():
    assert figure_format("a/b.png") == "png" and figure_format("B.SVG") == "svg"
    with pytest.raises(UsageError, match=r"'\.jpg' is not supported"):
        figure_format("fig.jpg")
    t = np.array([1.0, 2.0, 3.0, 4.0])
    assert r2_score(t, t) == 1.0
    assert r2_score(np.full(4, t.mean()), t) == pytest.approx(0.0)
    assert r2_score(t[::-1], t) == pytest.approx(1 - np.sum((t[::-1] - t) ** 2) / np.sum((t - t.mean()) ** 2))
    assert np.isnan(r2_score(t, np.ones(4)))
    with pytest.raises(UsageError):
        r2_score(t, t[:3])


def test_trajectory_png_size_and_changes_with_the_rollout(tmp_path, frames):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    true = frames[5:25]
    plot_trajectory(true, true + 0.05, a, start=5, source="toy", kind="e3nn")
    plot_trajectory(true, true[:1].repeat(20, axis=0), b, start=5, source="toy", kind="e3nn")
    assert png_size(a) == (1575, 750)  # 10.5 x 5 inches at 150 dpi
    pa, pb = pixels(a), pixels(b)
    assert pa.shape == pb.shape and not np.array_equal(pa, pb)
    with pytest.raises(UsageError, match=r"shape \(20, 12, 2\)"):
        plot_trajectory(true[..., :2], true, a)


def test_parity_svg_is_xml_deterministic_and_follows_the_data(tmp_path):
    rng = np.random.default_rng(0)
    t = rng.normal(size=(50, 12, 2))
    s1, s2, s3 = (tmp_path / f"p{i}.svg" for i in range(1, 4))
    noisy = t + 0.1 * rng.normal(size=t.shape)
    plot_parity(t, noisy, s1)
    plot_parity(t, noisy, s2)
    plot_parity(t, np.where(t > 2.0, np.inf, -t), s3)  # non-finite predictions are left out, not fatal
    assert_svg(s1) and assert_svg(s3)
    assert s1.read_bytes() == s2.read_bytes()  # same data, same file (no date, fixed ids)
    assert s1.read_bytes() != s3.read_bytes()
    assert "non-finite predictions left out" in s3.read_text()  # the legend says so (SVG keeps text as comments)
    assert "non-finite" not in s1.read_text()


def test_rollout_rmsd_curves_match_a_direct_computation(frames):
    starts = np.array([10, 20, 30])
    curves = rollout_rmsd_curves(
        {"persistence": persistence_step, "constant_velocity": constant_velocity_step}, frames, starts, 5
    )
    assert curves["persistence"].shape == (5, 3)
    for k in range(1, 6):
        np.testing.assert_allclose(curves["persistence"][k - 1], rmsd(frames[starts], frames[starts + k]))
    cv1 = 2 * frames[starts] - frames[starts - 1]
    np.testing.assert_allclose(curves["constant_velocity"][0], rmsd(cv1, frames[starts + 1]))

    calls = []

    def explode(x, prev):  # one good step, then NaN
        calls.append(1)
        return x + 0.01 if len(calls) == 1 else np.full_like(x, np.nan)

    bad = rollout_rmsd_curves({"model": explode}, frames, starts, 5)["model"]
    assert np.isfinite(bad[0]).all() and np.isnan(bad[-1]).all()  # NaN once the rollout diverged
    with pytest.raises(UsageError, match="start"):
        rollout_rmsd_curves({"p": persistence_step}, frames, np.array([0]), 5)
    with pytest.raises(UsageError, match="start"):
        rollout_rmsd_curves({"p": persistence_step}, frames, np.array([38]), 5)


def test_rmsd_training_and_equivariance_plots_draw_the_edge_cases(tmp_path):
    # (that these figures change with the data is checked through the CLI below)
    k = np.arange(1, 11)[:, None] * np.ones((1, 4))
    r = tmp_path / "r.svg"
    diverged = 0.01 * k
    diverged[5:] = np.nan  # a model whose rollout became non-finite after 5 steps
    plot_rmsd({"model": diverged, "persistence": 0.02 * k}, r, band="std", labels={"model": "my model"})
    assert assert_svg(r)
    assert "mean of 4 starts; bands: mean ± std" in r.read_text() and "my model" in r.read_text()
    with pytest.raises(UsageError, match="band"):
        plot_rmsd({"model": k}, r, band="iqr")

    t = tmp_path / "t.svg"
    curve = TrainingCurve("e3nn", np.arange(1.0, 6.0), np.array([1e-3, 5e-4, 2e-4, np.nan, 1e-4]), 2e-3, 3e-5)
    other = TrainingCurve("baseline", np.arange(1.0, 4.0), np.array([3e-3, 2e-3, 1e-3]), 1e-3, 3e-5)
    plot_training([curve, other], t)
    text = t.read_text()
    assert assert_svg(t) and "e3nn (best 0.0001)" in text and "baseline (best 0.001)" in text
    # different persistence MSE per model: one line each; the shared constant-velocity MSE: one grey line
    assert "persistence (e3nn) 0.002" in text and "persistence (baseline) 0.001" in text
    assert "constant velocity MSE 3e-05" in text

    def report(rel: float, passed: bool) -> dict:
        cases = [
            {"case": c, "max_abs_error": rel, "max_rel_error": rel, "passed": passed, "trials": 3, "threshold": 1e-4}
            for c in ("rotation", "translation")
        ]
        cases.append({"case": "planar", "max_abs_error": 0.0, "max_rel_error": 0.0, "passed": True})
        return {"passed": passed, "tolerance": 1e-4, "trials": 3, "seed": 0, "cases": cases}

    e = tmp_path / "e.svg"
    plot_equivariance([("e3nn", report(1e-7, True)), ("baseline", report(float("inf"), False))], e)
    text = e.read_text()
    assert assert_svg(e) and "FAIL" in text and "inf" in text and "tolerance 0.0001" in text
    assert "<!-- 0 -->" in text  # the exact-zero planar errors are labelled "0"


def test_training_curve_reads_the_manifest():
    m = training_section(history(4))
    c = training_curve(m, "e3nn", "b/manifest.json")
    np.testing.assert_allclose(c.time, [1.5, 3.0, 4.5, 6.0])
    np.testing.assert_allclose(c.val_mse, [1e-3 / i for i in range(1, 5)])
    assert c.persistence_mse == 2e-3 and c.constant_velocity_mse == 3e-5
    with pytest.raises(InputError, match=r"b/manifest.json: training.history is empty"):
        training_curve(training_section([]), "x", "b/manifest.json")
    with pytest.raises(InputError, match="training.history is missing"):
        training_curve(training_section(None), "x", "b/manifest.json")
    with pytest.raises(InputError, match=r"training.history\[1\]"):
        training_curve(training_section([history(1)[0], {"epoch": 2, "time": "soon"}]), "x", "b/manifest.json")


# --------------------------------------------------------------------------------------------- CLI


def test_cli_trajectory_follows_the_rollout(cli, make_bundle, data_file, tmp_path):
    toy, base = make_bundle("toy"), make_bundle("baseline")
    r_toy = _rollout(cli, toy, data_file, tmp_path / "toy.npz")
    r_base = _rollout(cli, base, data_file, tmp_path / "base.npz")
    outs = {}
    for name, roll, start in (("toy0", r_toy, 0), ("toy1", r_toy, 1), ("base0", r_base, 0)):
        outs[name] = tmp_path / f"{name}.png"
        r = cli("plot", "trajectory", data_file, roll, "-o", outs[name], "--start", start)
        assert r.exit_code == 0, r.output
        assert f"true frames {10 + 10 * start}..{22 + 10 * start} vs 12 predicted steps" in r.stdout
    imgs = {k: pixels(v) for k, v in outs.items()}
    assert not np.array_equal(imgs["toy0"], imgs["toy1"])
    assert not np.array_equal(imgs["toy0"], imgs["base0"])


def test_cli_trajectory_errors_are_one_line(cli, cli_error, toy_bundle, data_file, tmp_path, toys):
    roll = _rollout(cli, toy_bundle, data_file, tmp_path / "roll.npz")
    out = tmp_path / "fig.svg"
    cli_error(cli("plot", "trajectory", data_file, roll, "-o", out, "--start", 2), 2, "start: got 2", "0..1")
    cli_error(cli("plot", "trajectory", data_file, roll, "-o", tmp_path / "f.jpg"), 2, "'.jpg'", ".png or .svg")
    cli_error(cli("plot", "trajectory", data_file, tmp_path / "none.npz", "-o", out), 3, "none.npz", "not found")
    other = tmp_path / "other.npz"
    np.savez(other, arr=toys.make_traj(40, seed=9, dim=2))
    cli_error(cli("plot", "trajectory", other, roll, "-o", out), 3, "differs from frame 10", "other.npz")
    short = tmp_path / "short.npz"
    np.savez(short, arr=toys.make_traj(5, seed=5, dim=2))
    cli_error(cli("plot", "trajectory", short, roll, "-o", out), 3, "starts at frame 10", "5 frames")
    not_rollout = tmp_path / "not_rollout.npz"
    np.savez(not_rollout, arr=np.zeros((3, 12, 2)))
    cli_error(cli("plot", "trajectory", data_file, not_rollout, "-o", out), 3, "['traj', 'starts'] missing")
    assert not out.exists()
    # inputs are never overwritten, whatever their suffix (trajectory files are recognised by content)
    disguised = tmp_path / "data.png"
    disguised.write_bytes(data_file.read_bytes())
    before = disguised.read_bytes()
    cli_error(cli("plot", "trajectory", disguised, roll, "-o", disguised, "--force"), 2, "also an input")
    assert disguised.read_bytes() == before
    # an existing figure is kept without --force and replaced with it
    assert cli("plot", "trajectory", data_file, roll, "-o", out).exit_code == 0
    assert assert_svg(out) and "bundle " in out.read_text()  # default label: the rollout's bundle sha256
    cli_error(cli("plot", "trajectory", data_file, roll, "-o", out), 2, "already exists", "--force")
    assert cli("plot", "trajectory", data_file, roll, "-o", out, "--force", "--label", "my model").exit_code == 0
    assert "my model" in out.read_text()


def test_cli_trajectory_of_an_incomplete_rollout(cli, blowup_bundle, data_file, tmp_path):
    roll = tmp_path / "blow.npz"
    r = cli("rollout", blowup_bundle, data_file, "-o", roll, "--steps", 10, "--frames", "10")
    assert r.exit_code == 5  # the frames before the divergence are kept
    out, full = tmp_path / "blow.svg", tmp_path / "full.svg"
    r = cli("plot", "trajectory", data_file, roll, "-o", out)
    assert r.exit_code == 0, r.output
    assert "vs 1 predicted steps" in r.stdout
    text = out.read_text()
    assert "rollout stopped early: 1 of 10 steps" in text
    far = re.search(r"prediction leaves the view \(up to (\S+) from the true centre\)", text)
    assert far and 1e30 < float(far.group(1)) < 1e32  # the blowup model multiplies positions of order 10 by 1e30
    with np.load(roll) as z:
        assert float(far.group(1)) == pytest.approx(np.abs(z["traj"][1, 0, :, :2]).max(), rel=0.5)
    assert cli("plot", "trajectory", data_file, roll, "-o", full, "--full-view").exit_code == 0
    assert "rollout stopped early" in full.read_text() and "leaves the view" not in full.read_text()


def test_cli_parity_reports_the_r2_of_the_model(cli, make_bundle, data_file, frames, tmp_path, toys):
    toy, base, vel = make_bundle("toy"), make_bundle("baseline"), make_bundle("velocity")
    split = split_pairs(frames)
    x, y, prev = split.val_x, split.val_y, split.val_prev
    expected = {
        "toy": r2_score(toys.reference("toy", x)[..., :2], (y - x)[..., :2]),
        "baseline": r2_score((toys.reference("baseline", x) - x)[..., :2], (y - x)[..., :2]),
        "velocity": r2_score(((x - prev) + toys.reference("velocity", x, x - prev))[..., :2], (y - x)[..., :2]),
    }
    imgs = {}
    for name, bundle in (("toy", toy), ("baseline", base), ("velocity", vel)):
        out = tmp_path / f"parity-{name}.svg"
        r = cli("plot", "parity", bundle, "--data", data_file, "-o", out)
        assert r.exit_code == 0, r.output
        assert f"R² = {expected[name]:.4f} over {8 * 12 * 2} coordinates of 8 validation pairs" in r.stdout
        assert assert_svg(out) and f"R² = {expected[name]:.4f}" in out.read_text()
        imgs[name] = out.read_bytes()
    assert imgs["toy"] != imgs["baseline"] and imgs["toy"] != imgs["velocity"]
    assert b"max |predicted z|" in imgs["baseline"]  # the baseline predicts z != 0 on planar data: said, not hidden


def test_cli_rmsd_against_a_direct_computation(cli, cli_error, toy_bundle, data_file, frames, tmp_path, toys):
    out = tmp_path / "rmsd.svg"
    r = cli("plot", "rmsd", toy_bundle, "--data", data_file, "-o", out, "--starts", 3, "--horizon", 5)
    assert r.exit_code == 0, r.output
    split = split_pairs(frames)
    starts = rollout_starts(split, 5, 3)
    pers = float(np.mean(rmsd(frames[starts], frames[starts + 5])))
    assert f"after 5 steps from {len(starts)} starts" in r.stdout
    assert f"persistence {pers:.3g}," in r.stdout
    x = frames[starts]
    for _ in range(5):
        x = x + toys.reference("toy", x)
    model = float(np.mean(rmsd(x, frames[starts + 5])))
    assert f"model {model:.3g}," in r.stdout
    # a horizon beyond the validation part is capped to it (8 steps here)
    out2 = tmp_path / "rmsd2.svg"
    r = cli("plot", "rmsd", toy_bundle, "--data", data_file, "-o", out2, "--starts", 3, "--horizon", 500)
    assert r.exit_code == 0, r.output
    assert "after 8 steps" in r.stdout
    assert assert_svg(out) and out.read_bytes() != out2.read_bytes()
    assert "capped from 500" in out2.read_text() and "capped" not in out.read_text()
    r = cli("plot", "rmsd", toy_bundle, "--data", data_file, "-o", out2, "--force", "--horizon", 0)
    cli_error(r, 2, "--horizon: got 0")
    inside = toy_bundle / "fig.svg"
    cli_error(cli("plot", "rmsd", toy_bundle, "--data", data_file, "-o", inside), 2, "inside the bundle folder")
    assert not inside.exists()


def test_cli_equivariance_shows_pass_and_fail(cli, make_bundle, tmp_path):
    toy, base = make_bundle("toy"), make_bundle("baseline")
    one, two = tmp_path / "one.svg", tmp_path / "two.svg"
    r = cli("plot", "equivariance", toy, "-o", one, "--trials", 1)
    assert r.exit_code == 0, r.output
    assert "e3nn: PASS" in r.stdout
    r = cli("plot", "equivariance", toy, base, "-o", two, "--trials", 1)
    assert r.exit_code == 0, r.output
    assert "e3nn: PASS" in r.stdout and "baseline: FAIL rotation" in r.stdout
    assert assert_svg(one) and assert_svg(two) and one.read_bytes() != two.read_bytes()
    assert "baseline" in two.read_text() and "FAIL" in two.read_text() and "FAIL" not in one.read_text()


def test_labels_tell_bundles_of_one_kind_apart():
    from e3traj.runtime.cli._plot import _labels

    got = _labels(["e3nn", "baseline", "e3nn"], ["runs/a", "b.tar.gz", "c.tar.gz"])
    assert got == ["e3nn (a)", "baseline", "e3nn (c)"]


def test_cli_training_needs_a_history(cli, cli_error, make_bundle, tmp_path):
    a = make_bundle("toy", "a", manifest_extra=training_section(history(6)))
    b = make_bundle("baseline", "b", manifest_extra=training_section(history(9, scale=3e-3, dt=0.7)))
    empty = make_bundle("toy", "empty", manifest_extra=training_section([]))
    none = make_bundle("toy", "none")
    f1, f2 = tmp_path / "t1.svg", tmp_path / "t2.svg"
    r = cli("plot", "training", a, "-o", f1)
    assert r.exit_code == 0, r.output
    assert "e3nn: 6 epochs" in r.stdout
    r = cli("plot", "training", a, b, "-o", f2)
    assert r.exit_code == 0, r.output
    assert "e3nn: 6 epochs, baseline: 9 epochs" in r.stdout
    assert assert_svg(f1) and assert_svg(f2) and f1.read_bytes() != f2.read_bytes()
    assert "data: sim" in f2.read_text() and "baseline" in f2.read_text() and "baseline" not in f1.read_text()
    cli_error(cli("plot", "training", empty, "-o", tmp_path / "x.png"), 3, "training.history is empty", "empty")
    cli_error(cli("plot", "training", a, none, "-o", tmp_path / "x.png"), 3, "training.history is missing")
    assert not (tmp_path / "x.png").exists()


def test_cli_all_writes_every_figure(cli, cli_error, make_bundle, data_file, tmp_path, monkeypatch):
    toy = make_bundle("toy", "toy", manifest_extra=training_section(history(5)))
    base = make_bundle("baseline", "base")
    roll = _rollout(cli, toy, data_file, tmp_path / "roll.npz", frames="12")
    out = tmp_path / "figs"
    args = ["plot", "all", "--data", data_file, "--bundle", toy, "--bundle", base, "--rollout", roll, "-o", out]
    r = cli(*args, "--starts", 2, "--horizon", 4, "--trials", 1)
    assert r.exit_code == 0, r.output
    names = ["trajectory", "parity", "rmsd", "equivariance", "training"]
    for n in names:
        assert f"wrote {out / (n + '.png')}" in r.stdout
        png_size(out / f"{n}.png")
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.png" for n in names)
    stamp = {n: (out / f"{n}.png").read_bytes() for n in names}
    cli_error(cli(*args), 2, "already exists", "--force")
    assert {n: (out / f"{n}.png").read_bytes() for n in names} == stamp  # nothing touched
    # no bundle with a history: training is skipped, the rest is written (drawing stubbed: only the choice matters)
    import e3traj.runtime._plot as plot_lib
    import e3traj.runtime._plot_reports as report_lib

    drawn = []

    def stub(name):
        def _draw(*args, **kw):
            path = next(a for a in args if isinstance(a, str | os.PathLike))
            drawn.append((name, Path(path).name))
            Path(path).write_text("<svg/>")

        return _draw

    for name in ("trajectory", "parity", "rmsd"):
        monkeypatch.setattr(plot_lib, f"plot_{name}", stub(name))
    for name in ("equivariance", "training"):
        monkeypatch.setattr(report_lib, f"plot_{name}", stub(name))
    out2 = tmp_path / "figs2"
    r = cli("plot", "all", "--data", data_file, "--bundle", base, "--rollout", roll, "-o", out2, "--format", "svg")
    assert r.exit_code == 0, r.output
    assert "skipped training: no bundle's manifest holds a training history" in r.stdout
    assert drawn == [(n, f"{n}.svg") for n in names[:4]]
    assert sorted(p.name for p in out2.iterdir()) == sorted(f"{n}.svg" for n in names[:4])
    r = cli("plot", "all", "--data", data_file, "--bundle", base, "--rollout", roll, "-o", data_file)
    cli_error(r, 2, "not a folder")


# --------------------------------------------------------------------------------------------- without matplotlib

BLOCK_MPL = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'matplotlib':
            raise ModuleNotFoundError("blocked: " + name, name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


def _run_without_matplotlib(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_MPL + code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["plot", "--help"], ["plot", "trajectory", "data.npz", "roll.npz", "-o", "x.png"]])
def test_plot_without_matplotlib_says_how_to_install(args):
    r = _run_without_matplotlib(f"from e3traj.runtime.cli import main\nmain({args!r})")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "pip install 'e3traj[plot]'" in lines[0]


def test_plot_modules_import_without_matplotlib_and_say_how_to_install():
    r = _run_without_matplotlib(
        "import numpy as np\n"
        "import e3traj.runtime, e3traj.runtime._plot as p, e3traj.runtime._plot_reports, e3traj.runtime.cli._plot\n"
        "assert 'matplotlib' not in sys.modules\n"
        "from e3traj.runtime._errors import MissingExtra\n"
        "try:\n"
        "    p.plot_parity(np.zeros(3), np.zeros(3), 'x.png')\n"
        "except MissingExtra as exc:\n"
        "    print('missing:', exc)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "missing:" in r.stdout and "pip install 'e3traj[plot]'" in r.stdout


def test_importing_the_runtime_does_not_load_matplotlib():
    r = subprocess.run(
        [sys.executable, "-c", "import sys, e3traj.runtime, e3traj.runtime.cli; print('matplotlib' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip() == "False", (r.stdout, r.stderr)
