"""``e3traj plot`` (runtime/cli/_plot.py): one-line errors, --force, labels, ``plot all`` and the missing extra.

What each figure shows: tests/runtime/test_figures.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _plots import assert_svg, history, make_rollout, png_size, run_without_matplotlib, training_section

pytest.importorskip("matplotlib")


def test_cli_trajectory_errors_are_one_line(cli, cli_error, toy_bundle, data_file, tmp_path, toys):
    roll = make_rollout(cli, toy_bundle, data_file, tmp_path / "roll.npz")
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
    roll = make_rollout(cli, toy, data_file, tmp_path / "roll.npz", frames="12")
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


@pytest.mark.parametrize("args", [["plot", "--help"], ["plot", "trajectory", "data.npz", "roll.npz", "-o", "x.png"]])
def test_plot_without_matplotlib_says_how_to_install(args):
    r = run_without_matplotlib(f"from e3traj.runtime.cli import main\nmain({args!r})")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "pip install 'e3traj[plot]'" in lines[0]


def test_plot_fidelity_draws_the_stability_and_distribution_panels(cli, toy_bundle, tmp_path):
    import numpy as np

    from e3traj.runtime._simulate import simulate

    xy = simulate(frames=200, seed=3)
    traj = tmp_path / "t.npy"
    np.save(traj, np.concatenate([xy, np.zeros(xy.shape[:2] + (1,))], axis=-1))
    out = tmp_path / "fid.png"
    r = cli("plot", "fidelity", toy_bundle, "--data", traj, "--steps", 30, "--starts", 3, "-o", out)
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 10_000 and "stable to the end: model (e3nn)" in r.output
    assert "persistence 100%" in r.output
