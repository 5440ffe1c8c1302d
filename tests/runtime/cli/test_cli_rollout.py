"""``e3traj rollout`` spools its frames to disk as they come: a rollout killed outright (SIGKILL: no handler runs)
leaves them in ``OUT.partial``, and ``e3traj recover`` writes them out, the run's own frames bit for bit."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from e3traj.runtime import Bundle, rollout

EXE = Path(sys.executable).with_name("e3traj")
ROOT = Path(__file__).resolve().parents[3]


def test_a_killed_rollout_leaves_its_frames_and_recover_writes_them(tmp_path, cli, cli_error):
    bundle = ROOT / "artifacts" / "sim-e3nn"
    np.savez(tmp_path / "init.npz", arr=np.load(bundle / "example.npz")["positions"])
    args = [str(EXE), "rollout", str(bundle), "init.npz", "--frames", "0-3", "--steps", "300000", "-o", "r.npz"]
    proc = subprocess.Popen(args + ["--every", "3"], cwd=tmp_path, stderr=subprocess.PIPE)
    partial = tmp_path / "r.npz.partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the spool holds a few flushed frames
        if (partial / "frames.f64").is_file() and (partial / "frames.f64").stat().st_size > 50 * 4 * 12 * 3 * 8:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "r.npz").exists()
    # the same output again is refused while the frames are there
    cli_error(cli("rollout", bundle, tmp_path / "init.npz", "--steps", 3, "-o", tmp_path / "r.npz"), 2, "recover")
    r = cli("recover", partial)
    assert r.exit_code == 5 and "interrupted=True" in r.stderr, r.output
    assert not partial.exists()
    with np.load(tmp_path / "r.npz", allow_pickle=False) as z:
        traj, done = z["traj"], int(z["steps_done"])
        assert bool(z["interrupted"]) and not bool(z["complete"]) and int(z["every"]) == 3
        assert done == 3 * (len(traj) - 1) and len(traj) > 50
        starts = z["starts"]
    with Bundle.open(bundle, threads=1) as b:  # the frames are the ones a run of that length keeps
        ref = rollout(b, np.load(tmp_path / "init.npz")["arr"][starts], done, every=3)
    np.testing.assert_array_equal(traj, ref.traj)


def test_a_rollout_too_big_for_its_disk_is_refused_before_it_starts(
    cli, cli_error, toy_bundle, traj_file, tmp_path, monkeypatch
):
    import collections

    import e3traj.runtime.cli._rollout as command

    usage = collections.namedtuple("usage", "total used free")
    args = ("rollout", toy_bundle, traj_file, "--frames", "all", "--steps", 1000, "-o", tmp_path / "r.npz")
    # 1,001 kept frames of 20 starts: 5.8 MB spooled, then as much written
    monkeypatch.setattr(command.shutil, "disk_usage", lambda path: usage(1 << 40, 0, 5 << 20))
    cli_error(cli(*args), 2, "GiB on its disk", "--every")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["init.npz", "toy"]
    monkeypatch.setattr(command.shutil, "disk_usage", lambda path: usage(1 << 40, 0, 12 << 20))
    assert cli(*args).exit_code == 0
