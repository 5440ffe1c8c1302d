"""The figures from data, bundles and rollouts (runtime/_figures.py, behind ``e3traj plot``): each figure and its
summary follow the data, the model and the rollout (checked against direct computations)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _plots import assert_svg, make_rollout, pixels

pytest.importorskip("matplotlib")

from e3traj.runtime._data import split_pairs  # noqa: E402
from e3traj.runtime._metrics import rmsd, rollout_starts  # noqa: E402
from e3traj.runtime._plot_data import r2_score  # noqa: E402


def test_cli_trajectory_follows_the_rollout(cli, make_bundle, data_file, tmp_path):
    toy, base = make_bundle("toy"), make_bundle("baseline")
    r_toy = make_rollout(cli, toy, data_file, tmp_path / "toy.npz")
    r_base = make_rollout(cli, base, data_file, tmp_path / "base.npz")
    outs = {}
    for name, roll, start in (("toy0", r_toy, 0), ("toy1", r_toy, 1), ("base0", r_base, 0)):
        outs[name] = tmp_path / f"{name}.png"
        r = cli("plot", "trajectory", data_file, roll, "-o", outs[name], "--start", start)
        assert r.exit_code == 0, r.output
        assert f"true frames {10 + 10 * start}..{22 + 10 * start} vs 12 predicted steps" in r.stdout
    imgs = {k: pixels(v) for k, v in outs.items()}
    assert not np.array_equal(imgs["toy0"], imgs["toy1"])
    assert not np.array_equal(imgs["toy0"], imgs["base0"])


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
