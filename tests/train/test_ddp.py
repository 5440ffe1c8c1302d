"""Data-parallel training (train/_ddp.py): shares and weights, and two gloo processes under torchrun that take
the single process's steps (validation MSE to float rounding), with rank 0 alone writing, resume included."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from e3traj.runtime import save_trajectory, simulate
from e3traj.train._ddp import Dist


def test_every_sample_once_and_the_weights_make_the_global_mean():
    for n in (1, 5, 32, 33):
        idx = torch.arange(100, 100 + n)
        shares = [Dist(r, 2).share(idx) for r in range(2)]
        real = [s for s, w in shares if w > 0]
        assert sorted(torch.cat(real).tolist()) == idx.tolist()  # each sample once, none repeated
        # mean over ranks of (weight x rank mean) = the global batch's mean
        vals = idx.double()
        got = sum(w * float(vals[s - 100].mean()) for s, w in shares) / 2
        assert got == pytest.approx(float(vals.mean()))
    assert Dist().share(torch.arange(3))[1] == 1.0 and not Dist().any(False) and Dist().sum([2, 3]) == [2.0, 3.0]


@pytest.mark.slow
def test_two_processes_take_the_single_process_s_steps(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    e3traj = shutil.which("e3traj", path=str(Path(sys.executable).parent))
    if torchrun is None or e3traj is None:
        pytest.skip("torchrun or the e3traj console script is not installed beside this Python")
    save_trajectory(tmp_path / "t.npz", simulate(frames=400, seed=1))

    def args(epochs):
        return ["train", "--model", "e3nn", "--data", "t.npz", "--epochs", str(epochs), "--max-time", "600",
                "--quiet", "--threads", "1", "--layers", "1", "--irreps-hidden", "2x0e + 2x1o"]  # fmt: skip

    def run(cmd):
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    run([e3traj, *args(2), "-o", "p1.pt"])
    two = [torchrun, "--standalone", "--nproc-per-node", "2", e3traj]
    out = run([*two, *args(2), "-o", "p2.pt"])
    assert out.count("wrote p2.pt") == 1  # rank 0 alone reports and writes
    h1 = torch.load(tmp_path / "p1.pt", weights_only=True)["history"]
    h2 = torch.load(tmp_path / "p2.pt", weights_only=True)["history"]
    assert len(h1) == len(h2) == 2
    for a, b in zip(h1, h2, strict=True):  # the same steps up to the order of float sums
        assert b["val_mse"] == pytest.approx(a["val_mse"], rel=1e-6)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
    run([*two, *args(3), "--resume", "p2.pt", "-o", "p3.pt"])
    assert [h["epoch"] for h in torch.load(tmp_path / "p3.pt", weights_only=True)["history"]] == [1, 2, 3]
