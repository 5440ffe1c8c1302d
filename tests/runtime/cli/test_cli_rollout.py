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


def _failing_append(monkeypatch, at: int, exc: BaseException):
    from e3traj.runtime import _spool

    real = _spool.Spool.append

    def append(self, frame):
        if self.count == at:
            raise exc
        real(self, frame)

    monkeypatch.setattr(_spool.Spool, "append", append)


def test_a_disk_error_while_spooling_keeps_the_frames_for_recover(cli, toy_bundle, traj_file, tmp_path, monkeypatch):
    import errno

    _failing_append(monkeypatch, 7, OSError(errno.ENOSPC, "No space left on device", "frames.f64"))
    out = tmp_path / "r.npz"
    r = cli("rollout", toy_bundle, traj_file, "--frames", "0-3", "--steps", 20, "-o", out)
    assert r.exit_code == 3 and "the 7 frames before it are kept" in r.stderr and "e3traj recover" in r.stderr
    monkeypatch.undo()
    r = cli("recover", tmp_path / "r.npz.partial")
    assert r.exit_code == 5 and "6 of 20 steps" in r.stderr, r.output
    with np.load(out, allow_pickle=False) as z:
        assert z["traj"].shape == (7, 4, 12, 3) and bool(z["interrupted"])


def test_interrupts_before_the_first_frame_or_after_the_last(cli, toy_bundle, traj_file, tmp_path, monkeypatch):
    out = tmp_path / "r.npz"
    _failing_append(monkeypatch, 0, KeyboardInterrupt())
    r = cli("rollout", toy_bundle, traj_file, "--steps", 5, "-o", out)
    assert r.exit_code == 130 and "before its first step; nothing kept" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["init.npz", "toy"]
    monkeypatch.undo()
    import e3traj.runtime.cli._rollout as command

    monkeypatch.setattr(command, "_on_terminal", lambda: True)
    monkeypatch.setattr(command, "PROGRESS_THRESHOLD", 1)
    calls = {"n": 0}
    import click

    real_bar = click.progressbar

    class Bar:  # the signal lands after the last frame was kept: the rollout is complete
        def __init__(self, *a, **k):
            self.bar = real_bar(*a, **k)

        def __enter__(self):
            self.bar.__enter__()
            return self

        def __exit__(self, *exc):
            return self.bar.__exit__(*exc)

        def update(self, n):
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt

    monkeypatch.setattr(click, "progressbar", Bar)
    r = cli("rollout", toy_bundle, traj_file, "--steps", 5, "-o", out)
    assert r.exit_code == 130 and "complete=True, interrupted=False" in r.stderr, r.output
    with np.load(out, allow_pickle=False) as z:
        assert bool(z["complete"]) and not bool(z["interrupted"]) and int(z["steps_done"]) == 5


def test_sigterm_leaves_a_big_spool_for_recover(cli, toy_bundle, traj_file, tmp_path, monkeypatch):
    import e3traj.runtime.cli._rollout as command
    from e3traj.runtime.cli import _Terminated

    monkeypatch.setattr(command, "TERM_COPY_BYTES", 0)  # every spool is too big to copy before the SIGKILL
    _failing_append(monkeypatch, 4, _Terminated())
    r = cli("rollout", toy_bundle, traj_file, "--steps", 9, "--every", 2, "-o", tmp_path / "r.npz")
    assert r.exit_code == 143 and "too many to copy before a SIGKILL" in r.stderr, r.output
    assert not (tmp_path / "r.npz").exists()
    monkeypatch.undo()
    r = cli("recover", tmp_path / "r.npz.partial")
    assert r.exit_code == 5 and "6 of 9 steps (4 kept frames)" in r.stderr and "interrupted=True" in r.stderr
