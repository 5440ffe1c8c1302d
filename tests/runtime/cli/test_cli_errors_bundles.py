"""The CLI's error funnel (runtime/cli/__init__.py) on bad bundles and archives: one line, exit 3, nothing written.

Bad input files and names: test_cli_errors.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from e3traj.runtime import write_manifest

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


def test_newer_format_says_upgrade(cli, make_bundle, cli_error):
    path = make_bundle("toy")
    m = json.loads((path / "manifest.json").read_text())
    m["format_version"] = 7
    write_manifest(path, m)
    cli_error(cli("inspect", path), 3, "format version 7", "upgrade e3traj")


# --------------------------------------------------------------------------------------------- hostile input (issue 15)


@pytest.mark.parametrize("command", ["rollout", "check", "bench"])
def test_onnxruntime_failing_at_run_time_is_one_line(cli, make_bundle, toys, tmp_path, command, cli_error):
    bundle = make_bundle("toy", "fixed-batch", model=toys.build_fixed_batch_model())
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

    bundle = make_bundle("toy", "fixed-batch", model=toys.build_fixed_batch_model())
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
