"""Outputs never harm (runtime/_io.py): regular files only under --force, no-clobber at the final rename,
all-or-nothing for several files, nothing left behind on errors, interrupts and SIGTERM."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from e3traj.runtime._errors import EXIT_INTERRUPTED, EXIT_TERMINATED, UsageError
from e3traj.runtime._io import atomic_output, atomic_output_dir, atomic_outputs, check_output_path

EXE = Path(sys.executable).with_name("e3traj")


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink"])
def test_force_replaces_regular_files_only(tmp_path, kind):
    target = tmp_path / "out.npz"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    else:
        (tmp_path / "real").write_text("x")
        target.symlink_to(tmp_path / "real")
    with pytest.raises(UsageError, match="replaces regular files only"):
        check_output_path(target, force=True)
    with pytest.raises(UsageError, match="replaces regular files only"):
        with atomic_output(target, replace=True) as tmp:
            tmp.write_text("new")
    assert os.path.lexists(target) and _leftovers(tmp_path, {"out.npz", "real"}) == []


def test_force_refuses_a_device_node():
    with pytest.raises(UsageError, match=r"/dev/null: is a device; --force replaces regular files only"):
        check_output_path("/dev/null", force=True)


def test_force_replaces_a_regular_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_output(target, replace=True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and _leftovers(tmp_path, {"out.txt"}) == []


def test_no_clobber_holds_at_the_final_rename(tmp_path):
    target = tmp_path / "out.txt"
    check_output_path(target, force=False)  # nothing there at the start
    with pytest.raises(UsageError, match="appeared while the output was being written and was kept"):
        with atomic_output(target, replace=False) as tmp:
            tmp.write_text("ours")
            target.write_text("theirs")  # appears in the meantime
    assert target.read_text() == "theirs" and _leftovers(tmp_path, {"out.txt"}) == []


def test_a_fifo_that_appears_meanwhile_is_not_replaced_under_force(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(UsageError, match="is a FIFO"):
        with atomic_output(target, replace=True) as tmp:
            tmp.write_text("ours")
            os.mkfifo(target)
    assert Path(target).is_fifo()


def test_folder_output_no_clobber_and_regular_only(tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(UsageError, match="appeared while"):
        with atomic_output_dir(target, force=False) as tmp:
            (tmp / "a").write_text("1")
            target.mkdir()  # an empty folder appears: a plain rename would replace it
    assert target.is_dir() and list(target.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="replaces bundle folders only"):
        with atomic_output_dir(tmp_path / "file", force=True):
            pass
    with pytest.raises(UsageError, match="not a bundle"):  # any other folder is the user's: never replaced
        with atomic_output_dir(target, force=True):
            pass
    (target / "manifest.json").write_text("{}")
    with atomic_output_dir(target, force=True) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1" and _leftovers(tmp_path, {"bundle", "file"}) == []


def test_several_outputs_are_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.xyz"
    a.write_text("old a")
    with pytest.raises(UsageError, match="appeared while"):
        with atomic_outputs([a, b], replace=False) as (ta, tb):
            ta.write_text("new a")
            tb.write_text("new b")
            b.write_text("someone's b")
    assert a.read_text() == "old a" and b.read_text() == "someone's b"
    # under --force, a failure at the second rename puts the first file's old version back
    b.unlink()
    os.mkfifo(b)
    with pytest.raises(UsageError, match="is a FIFO"):
        with atomic_outputs([a, b], replace=True) as (ta, tb):
            ta.write_text("new a")
            tb.write_text("new b")
    assert a.read_text() == "old a" and b.is_fifo() and _leftovers(tmp_path, {"a.npz", "b.xyz"}) == []
    b.unlink()
    with atomic_outputs([a, b], replace=True) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
    assert a.read_text() == "new a" and b.read_text() == "new b" and _leftovers(tmp_path, {"a.npz", "b.xyz"}) == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_an_interrupt_or_a_full_disk_leaves_nothing(tmp_path, exc):
    with pytest.raises(type(exc)):
        with atomic_outputs([tmp_path / "a", tmp_path / "b"]) as tmps:
            tmps[0].write_text("partial")
            raise exc
    assert list(tmp_path.iterdir()) == []


def test_rollout_with_xyz_writes_both_or_neither(cli, toy_bundle, traj_file, tmp_path, monkeypatch):
    import e3traj.runtime._rollout as rollout_mod

    def disk_full(path, *a, **k):
        Path(path).write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(rollout_mod, "write_xyz_file", disk_full)
    out, xyz = tmp_path / "o" / "r.npz", tmp_path / "o" / "r.xyz"
    out.parent.mkdir()
    r = cli("rollout", toy_bundle, traj_file, "-o", out, "--xyz", xyz, "--steps", 3)
    assert r.exit_code == 3, r.output
    assert r.stderr.count("\n") == 1 and "No space left on device" in r.stderr and "free disk space" in r.stderr
    # neither file; the frames stay in the spool folder, and recover writes both once the disk has room
    assert [p.name for p in out.parent.iterdir()] == ["r.npz.partial"] and "e3traj recover" in r.stderr
    monkeypatch.undo()
    assert cli("recover", out.parent / "r.npz.partial").exit_code == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.npz", "r.xyz"]


def _start(args, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return subprocess.Popen([str(EXE), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, EXIT_TERMINATED), (signal.SIGINT, EXIT_INTERRUPTED)])
def test_a_signal_cleans_up_and_exits_with_its_code(tmp_path, sig, code):
    proc = _start(["simulate", "--frames", "600000", "-o", "big.npz"], tmp_path)
    time.sleep(2.5)  # imports done, the integration running
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == code, text
    assert text.count("\n") == 1 and "Traceback" not in text and "temporary files were removed" in text
    assert _leftovers(tmp_path, {"tmp"}) == [] and _leftovers(tmp_path / "tmp", {".ses"}) == []


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, EXIT_TERMINATED), (signal.SIGINT, EXIT_INTERRUPTED)])
def test_a_signal_during_a_packed_rollout_keeps_its_frames_and_no_temp_folder(tmp_path, sig, code):
    import shutil

    from e3traj.runtime import pack_bundle

    root = Path(__file__).resolve().parents[2]
    bundle = tmp_path / "b"
    shutil.copytree(root / "artifacts" / "sim-e3nn", bundle)
    archive = pack_bundle(bundle, tmp_path / "b.tar.gz")
    np.savez(tmp_path / "init.npz", arr=np.load(root / "artifacts" / "sim-e3nn" / "example.npz")["positions"])
    proc = _start(
        ["rollout", str(archive), "init.npz", "--frames", "all", "--steps", "100000", "-o", "r.npz"], tmp_path
    )
    time.sleep(4.0)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == code, text
    name = "SIGTERM" if sig == signal.SIGTERM else "SIGINT"
    assert text.count("\n") == 1 and f"rollout interrupted ({name}) after step" in text and "interrupted=True" in text
    # .ses: onnxruntime's own session-id file, which it writes into TMPDIR when it is imported
    assert _leftovers(tmp_path / "tmp", {".ses"}) == []
    # the frames rolled out before the signal are kept, marked interrupted; nothing else is left
    assert _leftovers(tmp_path, {"tmp", "b", "b.tar.gz", "init.npz", "r.npz"}) == []
    with np.load(tmp_path / "r.npz", allow_pickle=False) as z:
        assert bool(z["interrupted"]) and not bool(z["complete"]) and int(z["failed_step"]) == -1
        assert z["traj"].shape[0] == int(z["steps_done"]) + 1 >= 2 and np.isfinite(z["traj"]).all()


def test_replacing_sets_the_policy_of_outputs_that_do_not_say(tmp_path):
    from e3traj.runtime._io import replacing

    target = tmp_path / "fig.svg"
    target.write_text("old")
    with replacing(False), pytest.raises(UsageError, match="appeared while"):
        with atomic_output(target) as tmp:
            tmp.write_text("new")
    assert target.read_text() == "old"
    with atomic_output(target) as tmp:  # outside the block: the default, replace
        tmp.write_text("new")
    assert target.read_text() == "new" and _leftovers(tmp_path, {"fig.svg"}) == []


def test_plot_without_force_keeps_a_figure_that_appears_meanwhile(cli, toy_bundle, tmp_path, monkeypatch):
    import e3traj.runtime._plot_reports as plot_mod

    out = tmp_path / "eq.svg"

    def appear_then_save(fig, path):
        Path(path).write_text("someone's figure")
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="svg")
        return Path(path)

    monkeypatch.setattr(plot_mod, "_save", appear_then_save)
    r = cli("plot", "equivariance", toy_bundle, "-o", out, "--trials", 1)
    assert r.exit_code == 2 and "appeared while" in r.stderr, r.output
    assert out.read_text() == "someone's figure"
