"""The figures drawn with matplotlib (runtime/_plot.py): trajectory, parity and RMSD render as valid PNG/SVG and
follow the data; the drawing modules load matplotlib only when a figure is drawn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from _plots import assert_svg, pixels, png_size, run_without_matplotlib

pytest.importorskip("matplotlib")

from e3traj.runtime._errors import UsageError  # noqa: E402
from e3traj.runtime._plot import figure_format, plot_parity, plot_rmsd, plot_trajectory  # noqa: E402


def test_figure_format():
    assert figure_format("a/b.png") == "png" and figure_format("B.SVG") == "svg"
    with pytest.raises(UsageError, match=r"'\.jpg' is not supported"):
        figure_format("fig.jpg")


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


def test_rmsd_plot_draws_the_edge_cases(tmp_path):
    # (that the figure changes with the data is checked through the CLI in test_figures.py)
    k = np.arange(1, 11)[:, None] * np.ones((1, 4))
    r = tmp_path / "r.svg"
    diverged = 0.01 * k
    diverged[5:] = np.nan  # a model whose rollout became non-finite after 5 steps
    plot_rmsd({"model": diverged, "persistence": 0.02 * k}, r, band="std", labels={"model": "my model"})
    assert assert_svg(r)
    assert "mean of 4 starts; bands: mean ± std" in r.read_text() and "my model" in r.read_text()
    with pytest.raises(UsageError, match="band"):
        plot_rmsd({"model": k}, r, band="iqr")


def test_plot_modules_import_without_matplotlib_and_say_how_to_install():
    r = run_without_matplotlib(
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
