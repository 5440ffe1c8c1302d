"""``e3traj rollout``, ``check``, ``inspect`` and ``pack`` (runtime/cli/_host.py) through click: outputs, options."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from e3traj.runtime import pack_bundle
from e3traj.runtime._errors import UsageError
from e3traj.runtime.cli._rollout import parse_frames

# --------------------------------------------------------------------------------------------- rollout: good


def test_rollout_writes_the_trajectory(cli, toy_bundle, traj_file, tmp_path, toys):
    out = tmp_path / "out.npz"
    xyz = tmp_path / "out.xyz"
    r = cli("rollout", toy_bundle, traj_file, "-o", out, "--steps", 5, "--frames", "0,5,10-12,-1", "--xyz", xyz)
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and "(6, 6, 12, 3)" in r.stdout
    frames = np.load(traj_file)["arr"]
    with np.load(out, allow_pickle=False) as z:
        assert z["traj"].shape == (6, 6, 12, 3) and z["traj"].dtype == np.float64
        assert z["starts"].tolist() == [0, 5, 10, 11, 12, 19]
        assert bool(z["complete"]) and int(z["steps_done"]) == 5 and int(z["failed_step"]) == -1
        np.testing.assert_array_equal(z["traj"][0, :, :, :2], frames[[0, 5, 10, 11, 12, 19]])
        assert np.all(z["traj"][0, :, :, 2] == 0.0)  # 2D input lifted to z = 0
        step1 = z["traj"][0] + toys.reference("toy", z["traj"][0])
        np.testing.assert_allclose(z["traj"][1], step1, atol=1e-7)
        import hashlib

        assert str(z["bundle_sha256"]) == hashlib.sha256((toy_bundle / "manifest.json").read_bytes()).hexdigest()
    assert xyz.read_text().count("Properties=species:S:1:pos:R:3") == 6 * 6


def test_rollout_defaults_to_the_last_frame_and_accepts_all(cli, toy_bundle, traj_file, tmp_path):
    r = cli("rollout", toy_bundle, traj_file, "-o", tmp_path / "a.npz", "--steps", 2)
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "a.npz")["starts"].tolist() == [19]
    r = cli("rollout", toy_bundle, traj_file, "-o", tmp_path / "b.npz", "--steps", 1, "--frames", "all", "--threads", 1)
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "b.npz")["traj"].shape == (2, 20, 12, 3)


def test_rollout_from_a_packed_bundle_and_a_single_frame(cli, toy_bundle, tmp_path):
    archive = pack_bundle(toy_bundle, tmp_path / "toy.tar.gz")
    one = tmp_path / "one.npy"
    np.save(one, np.random.default_rng(0).normal(size=(12, 3)))
    r = cli("rollout", archive, one, "-o", tmp_path / "o.npz", "--steps", 3)
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "o.npz")["traj"].shape == (4, 1, 12, 3)


def test_rollout_with_a_velocity_bundle(cli, velocity_bundle, traj_file, tmp_path, cli_error, toys):
    r = cli("rollout", velocity_bundle, traj_file, "-o", tmp_path / "v.npz", "--steps", 2, "--frames", "1,19")
    assert r.exit_code == 0, r.output
    frames = np.concatenate([np.load(traj_file)["arr"], np.zeros((20, 12, 1))], axis=-1)
    traj = np.load(tmp_path / "v.npz")["traj"]
    v = frames[[1, 19]] - frames[[0, 18]]
    want = frames[[1, 19]] + v + toys.reference("velocity", frames[[1, 19]], v)
    np.testing.assert_allclose(traj[1], want, atol=1e-7)
    r = cli("rollout", velocity_bundle, traj_file, "-o", tmp_path / "w.npz", "--steps", 2, "--frames", "0,3")
    cli_error(r, 2, "--frames", "frame 0", "previous")
    one = tmp_path / "one.npz"
    np.savez(one, arr=frames[0])
    r = cli("rollout", velocity_bundle, one, "-o", tmp_path / "w.npz", "--steps", 2)
    cli_error(r, 3, str(one), "one frame")
    assert not (tmp_path / "w.npz").exists()


def test_divergence_writes_the_partial_rollout_and_exits_5(cli, blowup_bundle, tmp_path, cli_error):
    init = tmp_path / "init.npz"
    frames = np.ones((6, 12, 3))
    frames[2] = 0.0  # stays at 0 under y = 1e30 x
    np.savez(init, arr=frames)
    out = tmp_path / "partial.npz"
    r = cli("rollout", blowup_bundle, init, "-o", out, "--steps", 10, "--frames", "1-4", "--xyz", tmp_path / "p.xyz")
    line = cli_error(r, 5, "step 2 of 10", "1, 3, 4", "non-finite", "complete=False")
    assert "frame(s) 1, 3, 4 " in line
    with np.load(out, allow_pickle=False) as z:
        assert bool(z["complete"]) is False and int(z["failed_step"]) == 2 and int(z["steps_done"]) == 1
        assert z["traj"].shape == (2, 4, 12, 3) and np.all(np.isfinite(z["traj"]))
        assert z["failed_starts"].tolist() == [0, 2, 3]
    assert (tmp_path / "p.xyz").exists()


def test_max_distance_option(cli, toy_bundle, traj_file, tmp_path, cli_error):
    r = cli("rollout", toy_bundle, traj_file, "-o", tmp_path / "m.npz", "--steps", 3, "--max-distance", 0.5)
    cli_error(r, 5, "step 1 of 3", "farther than 0.5")
    assert np.load(tmp_path / "m.npz")["traj"].shape == (1, 1, 12, 3)


# --------------------------------------------------------------------------------------------- rollout: bad usage


def test_output_equal_to_input_or_inside_the_bundle(cli, toy_bundle, traj_file, tmp_path, cli_error):
    before = traj_file.read_bytes()
    r = cli("rollout", toy_bundle, traj_file, "-o", traj_file, "--steps", 2, "--force")
    cli_error(r, 2, "also an input")
    assert traj_file.read_bytes() == before
    r = cli("rollout", toy_bundle, traj_file, "-o", toy_bundle / "out.npz", "--steps", 2)
    cli_error(r, 2, "inside the bundle folder")
    assert not (toy_bundle / "out.npz").exists()
    archive = pack_bundle(toy_bundle, tmp_path / "toy.tgz")
    r = cli("rollout", archive, traj_file, "-o", archive, "--steps", 2, "--force")
    cli_error(r, 2, "also an input")
    r = cli("rollout", toy_bundle, traj_file, "-o", tmp_path / "same", "--xyz", tmp_path / "same", "--steps", 2)
    cli_error(r, 2, "same file")


def test_existing_output_needs_force(cli, toy_bundle, traj_file, tmp_path, cli_error):
    out = tmp_path / "o.npz"
    out.write_bytes(b"keep")
    r = cli("rollout", toy_bundle, traj_file, "-o", out, "--steps", 1)
    cli_error(r, 2, "already exists", "--force")
    assert out.read_bytes() == b"keep"
    assert cli("rollout", toy_bundle, traj_file, "-o", out, "--steps", 1, "--force").exit_code == 0
    assert np.load(out)["traj"].shape == (2, 1, 12, 3)


def test_unwritable_output_folder(cli, toy_bundle, traj_file, tmp_path, cli_error):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: chmod does not make the folder unwritable")
        r = cli("rollout", toy_bundle, traj_file, "-o", locked / "o.npz", "--steps", 1)
        cli_error(r, 2, "not writable")
    finally:
        locked.chmod(0o700)


def test_unwritable_output_folder_even_as_root(cli, toy_bundle, traj_file, tmp_path, cli_error, monkeypatch):
    # root can write anywhere, so pretend the permission check fails for this one folder
    import e3traj.runtime._io as io_mod

    locked = tmp_path / "locked2"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(
        io_mod.os, "access", lambda p, mode: False if os.fspath(p) == os.fspath(locked) else real(p, mode)
    )
    r = cli("rollout", toy_bundle, traj_file, "-o", locked / "o.npz", "--steps", 1)
    cli_error(r, 2, "not writable")
    assert os.listdir(locked) == []


def test_progress_bar_for_big_rollouts(cli, toy_bundle, traj_file, tmp_path, monkeypatch):
    import e3traj.runtime.cli._rollout as host

    monkeypatch.setattr(host, "PROGRESS_THRESHOLD", 1)
    r = cli("rollout", toy_bundle, traj_file, "-o", tmp_path / "p.npz", "--steps", 4, "--frames", "all")
    assert r.exit_code == 0 and r.stderr == "", r.output  # not on a terminal: a log gets the outcome only
    monkeypatch.setattr(host, "_on_terminal", lambda: True)
    r = cli("rollout", toy_bundle, traj_file, "-o", tmp_path / "p.npz", "--steps", 4, "--frames", "all", "--force")
    assert r.exit_code == 0, r.output
    assert "rollout" in r.stderr and "Traceback" not in r.output
    assert np.load(tmp_path / "p.npz")["traj"].shape == (5, 20, 12, 3)


def test_missing_output_folder(cli, toy_bundle, traj_file, tmp_path, cli_error):
    r = cli("rollout", toy_bundle, traj_file, "-o", tmp_path / "nope" / "o.npz", "--steps", 1)
    cli_error(r, 2, "does not exist")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "-4"], "--steps"),
        (["--steps", "2", "--frames", "20"], "frame 20 is out of range"),
        (["--steps", "2", "--frames", "-21"], "frame -21 is out of range"),
        (["--steps", "2", "--frames", "3-30"], "frame 30"),
        (["--steps", "2", "--frames", "5-2"], "backwards"),
        (["--steps", "2", "--frames", "a,b"], "cannot read"),
        (["--steps", "2", "--threads", "0"], "--threads"),
        (["--steps", "2", "--max-distance", "-1"], "--max-distance"),
    ],
)
def test_bad_options_are_usage_errors(cli, toy_bundle, traj_file, tmp_path, args, fragment, cli_error, no_leftovers):
    work = tmp_path / "work"
    work.mkdir()
    r = cli("rollout", toy_bundle, traj_file, "-o", work / "o.npz", *args)
    cli_error(r, 2, fragment)
    no_leftovers(work, "o.npz")


def test_parse_frames():
    assert parse_frames(None, 10) == [9]
    assert parse_frames("all", 3) == [0, 1, 2]
    assert parse_frames("0, 5,7-9,-1,-3--2", 10) == [0, 5, 7, 8, 9, 9, 7, 8]
    with pytest.raises(UsageError):
        parse_frames("", 10)
    with pytest.raises(UsageError):
        parse_frames("10", 10)


# --------------------------------------------------------------------------------------------- check / inspect / pack


def test_check_passes_the_toy(cli, toy_bundle):
    r = cli("check", toy_bundle, "--trials", 2)
    assert r.exit_code == 0, r.output
    rows = {
        ln.split()[0]: ln.split()[3]
        for ln in r.stdout.splitlines()[2:]
        if ln.split()[:1]
        and ln.split()[0] in {"rotation", "improper", "mirror_z", "translation", "permutation", "planar", "example"}
    }
    assert rows == dict.fromkeys(rows, "PASS") and len(rows) == 7
    assert r.stderr == ""


def test_check_fails_the_baseline_with_exit_4_and_a_note(cli, baseline_bundle, cli_error):
    r = cli("check", baseline_bundle)
    cli_error(r, 4, "rotation", "translation", "expected for this non-equivariant model")
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.strip()}
    assert lines["rotation"].endswith("FAIL") and lines["translation"].endswith("FAIL")
    assert lines["permutation"].endswith("PASS") and lines["example"].split()[3] == "PASS"
    assert "not equivariant by design" in r.stdout


def test_check_json(cli, baseline_bundle, toy_bundle, cli_error):
    r = cli("check", toy_bundle, "--json", "--seed", 3)
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["passed"] is True and data["seed"] == 3 and data["kind"] == "e3nn"
    assert [c["case"] for c in data["cases"]][-1] == "example"
    r = cli("check", baseline_bundle, "--json")
    cli_error(r, 4, "check failed")
    assert json.loads(r.stdout)["passed"] is False


def test_check_option_errors(cli, toy_bundle, cli_error):
    cli_error(cli("check", toy_bundle, "--trials", 0), 2, "--trials")
    cli_error(cli("check", toy_bundle, "--tolerance", -1), 2, "--tolerance")


def test_inspect_summary_and_json(cli, toy_bundle, tmp_path):
    r = cli("inspect", toy_bundle)
    assert r.exit_code == 0, r.output
    for text in (
        "kind e3nn",
        "equivariant True",
        "positions",
        "meaning displacement",
        "opset 17",
        "model.onnx",
        "example.npz",
        "val_mse",
        "hyperparameters:",
        "sizes and sha256 match",
    ):
        assert text in r.stdout, text
    r = cli("inspect", toy_bundle, "--json")
    assert json.loads(r.stdout) == json.loads((toy_bundle / "manifest.json").read_text())
    archive = pack_bundle(toy_bundle, tmp_path / "t.tar.gz")
    r = cli("inspect", archive)
    assert r.exit_code == 0 and "kind e3nn" in r.stdout


def test_pack_cli(cli, toy_bundle, tmp_path, cli_error):
    out = tmp_path / "toy.tar.gz"
    r = cli("pack", toy_bundle, "-o", out)
    assert r.exit_code == 0 and out.exists() and "wrote" in r.stdout
    cli_error(cli("pack", toy_bundle, "-o", out), 2, "already exists")
    assert cli("pack", toy_bundle, "-o", out, "--force").exit_code == 0
    cli_error(cli("pack", toy_bundle, "-o", toy_bundle / "x.tar.gz"), 2, "inside the bundle")
    cli_error(cli("pack", out, "-o", tmp_path / "y.tar.gz"), 2, "not a bundle folder")
    assert not (toy_bundle / "x.tar.gz").exists() and not (tmp_path / "y.tar.gz").exists()


def test_rollout_with_a_history_bundle_reads_the_window_from_the_file(
    cli, history_bundle, traj_file, tmp_path, cli_error
):
    r = cli("rollout", history_bundle, traj_file, "-o", tmp_path / "h.npz", "--steps", 3, "--frames", "3,19")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "h.npz")["traj"].shape == (4, 2, 12, 3)
    r = cli("rollout", history_bundle, traj_file, "-o", tmp_path / "w.npz", "--steps", 2, "--frames", "2,5")
    cli_error(r, 2, "--frames", "frame 2", "the 3 previous frames", "start at 3")
    short = tmp_path / "short.npz"
    np.savez(short, arr=np.load(traj_file)["arr"][:3])
    r = cli("rollout", history_bundle, short, "-o", tmp_path / "w.npz", "--steps", 2)
    cli_error(r, 3, str(short), "3 frames", "the 3 previous frames")
    assert not (tmp_path / "w.npz").exists()


def test_inspect_shows_the_window_and_the_promise(cli, history_bundle, toy_bundle):
    out = cli("inspect", history_bundle).output
    assert "history     4 frames" in out and "AR(4)" in out and "b = [2.2, -1.6, 0.4]" in out
    assert "(batch, 3, 12, 3)" in out
    assert "any relabelling" in out  # the toy promises every permutation (it ignores the chain)
    assert "history" not in cli("inspect", toy_bundle).output.split("inputs:")[0]
