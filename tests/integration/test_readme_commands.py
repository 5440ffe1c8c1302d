"""The README's two commands, piece by piece: the demo script end to end (tiny budgets) and the test wiring."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    text = (ROOT / "README.md").read_text()
    blocks = text.split("```")
    assert len(blocks) >= 3
    first_block = [ln.strip() for ln in blocks[1].splitlines()[1:] if ln.strip()]
    assert first_block == ["make demo", "make test"]
    ci = [
        ln.strip()
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith(("#", "set ", "cd "))
    ]
    assert ci == ["make test"]
    make = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in make and "python -m venv" not in make.replace("$(PYTHON) -m venv", "")
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()


@pytest.mark.slow
def test_demo_script_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    env.update(
        E3TRAJ_DEMO_E3NN_TIME="4",
        E3TRAJ_DEMO_VELOCITY_TIME="4",
        E3TRAJ_DEMO_HISTORY_TIME="4",
        E3TRAJ_DEMO_BASELINE_TIME="2",
        E3TRAJ_DEMO_STEPS="20",
        E3TRAJ_DEMO_FIDELITY_STEPS="100",
    )
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = r.stdout
    assert "the baseline FAILS rotation and translation, as expected" in log
    assert "all cases PASS" in log
    for name in (
        "traj.npz",
        "baseline.pt",
        "e3nn.pt",
        "e3nn-bundle/manifest.json",
        "baseline-bundle/model.onnx",
        "e3nn-bundle.tar.gz",
        "rollout.npz",
        "rollout.xyz",
        "evaluate-e3nn.txt",
        "evaluate-e3nn-history.txt",
        "e3nn-history-bundle/manifest.json",
        "rollout-history.npz",
        "langevin-bundle/manifest.json",
        "fidelity-langevin.txt",
    ):
        assert (out / name).exists(), name
    fid = (out / "fidelity-langevin.txt").read_text()
    assert "model, sampled" in fid and "noise floor" in fid and "AR(8), fitted" in fid
    with np.load(out / "rollout.npz", allow_pickle=False) as z:
        assert z["traj"].shape == (21, 3, 12, 3) and bool(z["complete"])
    figures = out / "figures"
    assert sorted(p.name for p in figures.glob("*.png")) == [
        "equivariance.png",
        "parity.png",
        "rmsd.png",
        "training.png",
        "trajectory.png",
    ]
    assert "everything is in" in log
    history = (out / "evaluate-e3nn-history.txt").read_text()
    assert "<- best trivial predictor" in history and "model / best" in history
