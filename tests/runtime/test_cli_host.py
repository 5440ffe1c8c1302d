"""The host commands through click: rollout, check, inspect, pack — and every bad input as a one-line error."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from e3traj.runtime import pack_bundle, write_manifest
from e3traj.runtime._errors import UsageError
from e3traj.runtime.cli._host import parse_frames

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


# --------------------------------------------------------------------------------------------- rollout: bad INIT


def _npy_with_header(path, shape, descr="<f8"):
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": descr, "fortran_order": False, "shape": shape})
        fh.write(b"\0" * 64)


def _bad_nan(p):
    a = np.zeros((4, 12, 2))
    a[2, 3, 1] = np.nan
    np.savez(p, arr=a)


def _bad_inf(p):
    a = np.zeros((4, 12, 3))
    a[1, 0, 0] = np.inf
    np.savez(p, arr=a)


def _bad_beads11(p):
    np.savez(p, arr=np.zeros((4, 11, 2)))


def _bad_beads13(p):
    np.savez(p, arr=np.zeros((4, 13, 3)))


def _bad_rank1(p):
    np.savez(p, arr=np.zeros(36))


def _bad_rank4(p):
    np.savez(p, arr=np.zeros((2, 4, 12, 3)))


def _bad_coords4(p):
    np.savez(p, arr=np.zeros((4, 12, 4)))


def _bad_empty(p):
    p.write_bytes(b"")


def _bad_object(p):
    np.savez(p, arr=np.array([np.zeros(3), "x"], dtype=object))


def _bad_truncated(p):
    np.savez(p, arr=np.zeros((50, 12, 2)))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _bad_huge_npz(p):
    tmp = p.with_suffix(".npy.part")
    _npy_with_header(tmp, (10**9, 12, 3))
    with zipfile.ZipFile(p, "w") as zf:
        zf.write(tmp, "arr.npy")
    tmp.unlink()


def _bad_huge_npy(p):
    _npy_with_header(p, (10**10, 12, 2))


def _bad_text(p):
    p.write_text("0 0 0\n")


BAD_INITS = [
    _bad_nan,
    _bad_inf,
    _bad_beads11,
    _bad_beads13,
    _bad_rank1,
    _bad_rank4,
    _bad_coords4,
    _bad_empty,
    _bad_object,
    _bad_truncated,
    _bad_huge_npz,
    _bad_huge_npy,
    _bad_text,
]
BAD_FRAGMENTS = {
    "nan": "non-finite",
    "inf": "non-finite",
    "beads11": "11 beads",
    "beads13": "13 beads",
    "rank1": "rank 1",
    "rank4": "rank 4",
    "coords4": "4 coordinates",
    "empty": "empty",
    "object": "object",
    "truncated": "truncated",
    "huge_npz": "limit",
    "huge_npy": "limit",
    "text": "not an .npz",
}


@pytest.mark.parametrize("make", BAD_INITS, ids=[f.__name__[5:] for f in BAD_INITS])
def test_bad_init_is_one_line_exit_3_and_writes_nothing(cli, toy_bundle, tmp_path, make, cli_error, no_leftovers):
    work = tmp_path / "work"
    work.mkdir()
    init = work / ("init.npy" if make is _bad_huge_npy else "init.npz")
    make(init)
    r = cli("rollout", toy_bundle, init, "-o", work / "out.npz", "--steps", 3, "--xyz", work / "out.xyz")
    cli_error(r, 3, str(init), BAD_FRAGMENTS[make.__name__[5:]])
    no_leftovers(work, "out.npz", "out.xyz")


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
    import e3traj.runtime.cli._host as host

    monkeypatch.setattr(host, "PROGRESS_THRESHOLD", 1)
    r = cli("rollout", toy_bundle, traj_file, "-o", tmp_path / "p.npz", "--steps", 4, "--frames", "all")
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


# --------------------------------------------------------------------------------------------- bad bundles via CLI


def _flip(p):
    data = bytearray((p / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (p / "model.onnx").write_bytes(bytes(data))


def _truncate(p):
    data = (p / "model.onnx").read_bytes()
    (p / "model.onnx").write_bytes(data[:-5])


def _hash(p):
    m = json.loads((p / "manifest.json").read_text())
    m["files"]["model.onnx"]["sha256"] = "f" * 64
    (p / "manifest.json").write_text(json.dumps(m))


def _no_manifest(p):
    (p / "manifest.json").unlink()


def _extra(p):
    (p / "README.txt").write_text("x")


def _symlink(p):
    shutil.move(p / "model.onnx", p.parent / "elsewhere.onnx")
    os.symlink(p.parent / "elsewhere.onnx", p / "model.onnx")


BAD_BUNDLE_CASES = {
    "flipped_byte": (_flip, ["model.onnx", "sha256"]),
    "truncated": (_truncate, ["model.onnx", "size"]),
    "hash_mismatch": (_hash, ["model.onnx", "sha256"]),
    "no_manifest": (_no_manifest, ["manifest.json", "not found"]),
    "extra_file": (_extra, ["README.txt", "not listed"]),
    "symlink": (_symlink, ["model.onnx", "symlink"]),
}


@pytest.mark.parametrize("case", sorted(BAD_BUNDLE_CASES))
@pytest.mark.parametrize("command", ["rollout", "check", "inspect", "pack"])
def test_bad_bundles_are_refused_by_every_command(
    cli, make_bundle, traj_file, tmp_path, case, command, cli_error, no_leftovers
):
    mutate, fragments = BAD_BUNDLE_CASES[case]
    path = make_bundle("toy", "bad")
    mutate(path)
    work = tmp_path / "work"
    work.mkdir()
    args = {
        "rollout": ["rollout", path, traj_file, "-o", work / "o.npz", "--steps", 2],
        "check": ["check", path],
        "inspect": ["inspect", path],
        "pack": ["pack", path, "-o", work / "o.tar.gz"],
    }[command]
    cli_error(cli(*args), 3, *fragments)
    no_leftovers(work, "o.npz", "o.tar.gz")


def test_external_data_bundle_via_cli(cli, make_bundle, traj_file, tmp_path, cli_error):
    path = make_bundle("baseline", external_data=True)
    cli_error(cli("inspect", path), 3, "model.onnx", "external data")
    cli_error(cli("rollout", path, traj_file, "-o", tmp_path / "o.npz", "--steps", 1), 3, "external data")
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize(
    "member, fragment",
    [
        ("toy/../../evil.txt", "'..'"),
        ("/tmp/e3traj-evil.txt", "absolute path"),
        ("symlink", "is a link"),
    ],
)
def test_malicious_archives_via_cli(cli, toy_bundle, traj_file, tmp_path, member, fragment, cli_error):
    import io

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for p in sorted(toy_bundle.iterdir()):
            tf.add(p, f"toy/{p.name}")
        if member == "symlink":
            info = tarfile.TarInfo("toy/extra.onnx")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
        else:
            info = tarfile.TarInfo(member)
            info.size = 4
            tf.addfile(info, io.BytesIO(b"evil"))
    for args in (
        ["inspect", archive],
        ["check", archive],
        ["rollout", archive, traj_file, "-o", tmp_path / "o.npz", "--steps", 1],
    ):
        cli_error(cli(*args), 3, "evil.tar.gz", fragment)
    assert not (tmp_path / "evil.txt").exists() and not os.path.exists("/tmp/e3traj-evil.txt")
    assert not (tmp_path / "o.npz").exists()


def test_missing_bundle_path(cli, tmp_path, traj_file, cli_error):
    cli_error(cli("check", tmp_path / "nope"), 3, "not found")
    cli_error(cli("rollout", tmp_path / "nope", traj_file, "-o", tmp_path / "o.npz", "--steps", 1), 3, "not found")


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


def test_newer_format_says_upgrade(cli, make_bundle, cli_error):
    path = make_bundle("toy")
    m = json.loads((path / "manifest.json").read_text())
    m["format_version"] = 7
    write_manifest(path, m)
    cli_error(cli("inspect", path), 3, "format version 7", "upgrade e3traj")


# --------------------------------------------------------------------------------------------- hostile input (issue 15)


def _fixed_batch_model(toys, batch: int = 8):
    """A graph that declares a dynamic batch but reshapes to ``batch`` frames: onnxruntime fails at run time."""
    from onnx import TensorProto, helper, numpy_helper

    model = toys.build_model("toy")
    shape = numpy_helper.from_array(np.array([batch, 12, 3], dtype=np.int64), "fixed_shape")
    graph = model.graph
    graph.initializer.append(shape)
    out = graph.node[-1].output[0]
    graph.node[-1].output[0] = "pre"
    graph.node.append(helper.make_node("Reshape", ["pre", "fixed_shape"], [out]))
    assert TensorProto.FLOAT  # the value infos stay (batch, 12, 3)
    return model


@pytest.mark.parametrize("command", ["rollout", "check", "bench"])
def test_onnxruntime_failing_at_run_time_is_one_line(cli, make_bundle, toys, tmp_path, command, cli_error):
    bundle = make_bundle("toy", "fixed-batch", model=_fixed_batch_model(toys))
    init = tmp_path / "init.npz"
    np.savez(init, arr=toys.make_traj(40, seed=2))
    if command == "rollout":  # 40 starts: the sub-batched path
        r = cli("rollout", bundle, init, "--frames", "all", "--steps", 2, "-o", tmp_path / "r.npz")
    elif command == "check":
        r = cli("check", bundle, "--trials", 1)
    else:
        r = cli("bench", bundle, "--batch-sizes", "40", "--threads", "1", "--repeats", 1, "--seconds", "0.01",
                "--rollout-steps", 0, "--roofline-seconds", "0.01")  # fmt: skip
    line = cli_error(r, 3, "onnxruntime failed while running the model")
    assert "fixed-batch" in line and not (tmp_path / "r.npz").exists()


def test_onnxruntime_logs_nothing_of_its_own(make_bundle, toys, tmp_path):
    # onnxruntime's C++ logger writes to the process's stderr directly, which only a subprocess shows
    import subprocess
    import sys

    bundle = make_bundle("toy", "fixed-batch", model=_fixed_batch_model(toys))
    init = tmp_path / "init.npz"
    np.savez(init, arr=toys.make_traj(40, seed=2))
    exe = Path(sys.executable).with_name("e3traj")
    args = [
        str(exe),
        "rollout",
        str(bundle),
        str(init),
        "--frames",
        "all",
        "--steps",
        "2",
        "-o",
        str(tmp_path / "r.npz"),
    ]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "onnxruntime failed while running the model" in lines[0], r.stderr


def test_the_example_parsed_is_the_example_verified(toy_bundle, toys):
    from e3traj.runtime import Bundle

    with Bundle.open(toy_bundle) as b:
        before = b.load_example()[1]
        # swap in another valid example after verification (the race the issue measured 4 times in 25)
        np.savez(toy_bundle / "example.npz", positions=np.ones((8, 12, 3), np.float32), prediction=np.ones((8, 12, 3)))
        b._example = None  # force a re-read: it must come from the verified bytes, not from disk
        np.testing.assert_array_equal(b.load_example()[1], before)
        assert b.recheck_example() <= 1e-5


def _set_zip_flags(path: Path, flag: int) -> None:
    data = bytearray(path.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            data[i + offset] |= flag
            start = i + 4
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("flag", [0x01, 0x40], ids=["encrypted", "strong-encryption"])
def test_encrypted_zip_members_are_one_line(cli, toy_bundle, toys, tmp_path, flag, cli_error):
    init = tmp_path / "init.npz"
    np.savez(init, arr=toys.make_traj(10))
    _set_zip_flags(init, flag)
    r = cli("rollout", toy_bundle, init, "--steps", 2, "-o", tmp_path / "r.npz")
    cli_error(r, 3, "init.npz")
    _set_zip_flags(toy_bundle / "example.npz", flag)
    toys.rehash(toy_bundle)
    cli_error(cli("check", toy_bundle), 3, "example.npz")


def test_a_malformed_npy_header_is_one_line(cli, toy_bundle, tmp_path, cli_error):
    bad = tmp_path / "bad.npy"
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 12,"  # never closed
    bad.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    cli_error(cli("rollout", toy_bundle, bad, "--steps", 2, "-o", tmp_path / "r.npz"), 3, "bad.npy")


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda m: {**m, "model": json.loads("[" * 100000 + "]" * 100000)}, "nested too deeply"),
        (lambda m: {**m, "inputs": [{**m["inputs"][0], "dtype": ["float32"]}]}, "dtype ['float32']"),
        (lambda m: {**m, "outputs": [{**m["outputs"][0], "meaning": {"a": 1}}]}, "meaning"),
        (lambda m: {**m, "onnx": {**m["onnx"], "min_onnxruntime": [1, 17]}}, "min_onnxruntime"),
        (lambda m: {**m, "model": {**m["model"], "equivariant": "yes"}}, "equivariant"),
    ],
    ids=["deep-nesting", "dtype-list", "meaning-object", "version-list", "equivariant-string"],
)
def test_malformed_manifests_are_one_line(cli, toy_bundle, edit, fragment, cli_error):
    path = toy_bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    if "nested" in fragment:  # json.dumps cannot write it either: write the text by hand
        text = json.dumps({**manifest, "model": 0}).replace('"model": 0', '"model": ' + "[" * 100000 + "]" * 100000)
        path.write_text(text)
    else:
        path.write_text(json.dumps(edit(manifest)))
    for command in ("inspect", "check"):
        cli_error(cli(command, toy_bundle), 3, "manifest.json", fragment)


def test_sizes_are_capped_before_allocation(cli, toy_bundle, tmp_path, cli_error):
    from e3traj.runtime._simulate import MAX_SIM_FRAMES
    from e3traj.runtime.cli._bench import MAX_BATCH

    cli_error(cli("bench", toy_bundle, "--batch-sizes", "100000000"), 2, "--batch-sizes", f"limit of {MAX_BATCH}")
    r = cli("simulate", "--frames", "10000000000", "-o", tmp_path / "s.npz")
    cli_error(r, 2, f"at most {MAX_SIM_FRAMES:,}")
    assert not (tmp_path / "s.npz").exists()


def test_an_example_with_too_many_arrays_is_refused(cli, toy_bundle, toys, cli_error):
    arrays = {f"a{i}": np.zeros((1, 12, 3), np.float32) for i in range(20)}
    with np.load(toy_bundle / "example.npz") as z:
        arrays.update({k: z[k] for k in z.files})
    np.savez(toy_bundle / "example.npz", **arrays)
    toys.rehash(toy_bundle)
    cli_error(cli("check", toy_bundle), 3, "example.npz", "over the limit of 8")


def test_an_archive_bomb_is_refused_in_memory(cli, tmp_path, cli_error, monkeypatch):
    import io

    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("b/model.onnx")
        info.size = 70 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    assert archive.stat().st_size < 200_000  # ~70 KB that would unpack to 70 MB
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    cli_error(cli("inspect", archive), 3, "bomb.tar.gz", "over")
    assert list(spool.iterdir()) == []


def test_control_characters_in_names_are_escaped(cli, toy_bundle, tmp_path, cli_error):
    evil = tmp_path / "evil\x1b[31m\nname"
    shutil.copytree(toy_bundle, evil)
    (evil / "stray.txt").write_text("x")
    line = cli_error(cli("check", evil), 3, "evil\\x1b[31m\\nname", "stray.txt")
    assert "\x1b" not in line
    r = cli("rollout", toy_bundle, tmp_path / "no\x07such.npz", "--steps", 1, "-o", tmp_path / "r.npz")
    assert "\x07" not in cli_error(r, 3, "no\\x07such.npz")


def test_an_over_long_output_name_is_one_line(cli, toy_bundle, traj_file, tmp_path, cli_error):
    out = tmp_path / ("x" * 300 + ".npz")
    r = cli("rollout", toy_bundle, traj_file, "--steps", 1, "-o", out)
    cli_error(r, 3, "File name too long", "use a shorter name")
    assert os.listdir(tmp_path) == sorted(os.listdir(tmp_path)) and not any(
        n.startswith(".") for n in os.listdir(tmp_path)
    )


def test_trials_and_threads_are_capped(cli, toy_bundle, cli_error):
    from e3traj.runtime.cli._options import MAX_THREADS, MAX_TRIALS

    cli_error(cli("check", toy_bundle, "--trials", 10**9), 2, "--trials", f"limit of {MAX_TRIALS}")
    cli_error(cli("check", toy_bundle, "--threads", 10**6), 2, "--threads", f"limit of {MAX_THREADS}")
