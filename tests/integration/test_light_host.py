"""A host with only the base package: a fresh virtual environment, ``pip install e3traj`` (no extras), no torch.

One module-scoped fixture builds the environment (about 20 s with pip's cache warm): it copies the source tree
to a temporary folder (a non-editable install builds a wheel in the source tree, which must not write into the
repository) and installs it with ``constraints.txt``. Every test then drives the installed ``e3traj`` console
script and the environment's own ``python`` in subprocesses. When pip cannot reach a package index the tests
skip; any other install failure fails them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CONSTRAINTS = ROOT / "constraints.txt"

#: Distributions a host must never get from ``pip install e3traj``.
HEAVY = {"torch", "e3nn", "onnx", "onnxscript", "torch-geometric", "torch_geometric", "matplotlib", "scipy", "sympy"}
#: Upper bound on the host's site-packages (numpy + onnxruntime + click + pip's own seed are ~175 MB; torch
#: alone is several hundred MB).
MAX_SITE_PACKAGES_MB = 300
#: Not copied into the build folder: VCS data, environments, build leftovers, caches, and what the wheel omits.
_COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    "demo-out",
    "tmp",
    "tests",
    "artifacts",
)
_OFFLINE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|ConnectTimeout|ConnectionError|Connection refused|"
    r"Could not fetch URL|ProxyError|Max retries exceeded",
    re.IGNORECASE,
)
STEPS = 30
#: The rows of `e3traj check`.
CASES = ("rotation", "improper", "mirror_z", "translation", "permutation", "planar", "example")
STARTS = "0,10,-1"


@dataclass(frozen=True)
class Host:
    """A virtual environment holding only the base package."""

    root: Path
    work: Path
    env: dict

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def e3traj(self) -> Path:
        return self.root / "bin" / "e3traj"

    def run(self, *args, check: int | None = 0) -> subprocess.CompletedProcess:
        """Run a command of this environment in its work folder; assert its exit code unless ``check`` is None."""
        proc = subprocess.run(
            [str(a) for a in args], cwd=self.work, env=self.env, capture_output=True, text=True, timeout=120
        )
        if check is not None:
            assert proc.returncode == check, (
                f"{args} exited {proc.returncode}, expected {check}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def cli(self, *args, check: int | None = 0) -> subprocess.CompletedProcess:
        return self.run(self.e3traj, *args, check=check)

    def site_packages(self) -> Path:
        out = self.run(self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout
        return Path(out.strip())


def _clean_env(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("light-host")
    src, venv, work = base / "src", base / "venv", base / "work"
    shutil.copytree(ROOT, src, ignore=_COPY_IGNORE, symlinks=True)
    work.mkdir()
    interpreter = getattr(sys, "_base_executable", None) or sys.executable
    made = subprocess.run([interpreter, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, f"python -m venv failed:\n{made.stdout}\n{made.stderr}"
    h = Host(venv, work, _clean_env(venv))
    install = subprocess.run(
        [str(h.python), "-m", "pip", "install", "--quiet", "--retries", "2", "--timeout", "30"]
        + ["-c", str(CONSTRAINTS), str(src)],
        cwd=work,
        env=h.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        output = install.stdout + install.stderr
        if _OFFLINE.search(output):
            pytest.skip(f"pip cannot reach a package index (offline?): {_OFFLINE.search(output).group(0)}")
        pytest.fail(f"pip install of the base package failed (exit {install.returncode}):\n{output}")
    yield h
    shutil.rmtree(base, ignore_errors=True)  # ~180 MB; pytest would keep the last three runs' copies


@pytest.fixture(scope="module")
def trajectory(host) -> Path:
    """50 frames simulated by the host itself (the simulator is numpy-only)."""
    out = host.work / "traj.npz"
    proc = host.cli("simulate", "--frames", "50", "-o", out)
    assert "50 frames" in proc.stdout
    return out


def test_heavy_packages_are_absent(host):
    for module in ("torch", "e3nn", "onnx", "torch_geometric"):
        proc = host.run(host.python, "-c", f"import {module}", check=None)
        assert proc.returncode != 0, f"'import {module}' works on the light host"
        assert f"No module named '{module}'" in proc.stderr
    installed = {
        d["name"].lower().replace("_", "-"): d["version"]
        for d in json.loads(host.run(host.python, "-m", "pip", "list", "--format=json").stdout)
    }
    assert not (set(installed) & {h.replace("_", "-") for h in HEAVY}), sorted(installed)
    pins = _pins()
    for name in ("numpy", "onnxruntime", "click"):
        assert installed.get(name) == pins[name], f"{name}: installed {installed.get(name)}, constraints {pins[name]}"
    assert "e3traj" in installed
    size = sum(f.stat().st_size for f in host.site_packages().rglob("*") if f.is_file() and not f.is_symlink())
    assert size / 1e6 < MAX_SITE_PACKAGES_MB, f"site-packages holds {size / 1e6:.0f} MB"


def test_installed_files_are_one_namespace(host):
    site = host.site_packages()
    dist_infos = list(site.glob("e3traj-*.dist-info"))
    assert len(dist_infos) == 1, dist_infos
    record = (dist_infos[0] / "RECORD").read_text().splitlines()
    tops = {line.split(",", 1)[0].split("/", 1)[0] for line in record if line}
    assert tops == {"e3traj", dist_infos[0].name, ".."}, tops
    outside = [line.split(",", 1)[0] for line in record if line.startswith("..")]
    assert [Path(p).name for p in outside] == ["e3traj"], outside  # only the console script
    assert (dist_infos[0] / "top_level.txt").read_text().split() == ["e3traj"]
    for generic in ("runtime", "train", "export", "tests", "benchmarks", "scripts"):
        assert not (site / generic).exists() and not (site / f"{generic}.py").exists(), f"{generic} in {site}"
    assert {p.name for p in (site / "e3traj").iterdir()} >= {"runtime", "train", "export"}
    where = host.run(host.python, "-c", "import e3traj.runtime as r; print(r.__file__)").stdout.strip()
    assert Path(where).is_relative_to(site), f"e3traj.runtime imported from {where}, not the host's {site}"


def test_version_and_help(host):
    from e3traj.runtime._version import __version__
    from e3traj.runtime.cli import COMMANDS

    assert host.cli("--version").stdout.strip() == f"e3traj, version {__version__}"
    text = host.cli("--help").stdout
    listed = re.findall(r"^  (\w+)\s", text.split("Commands:", 1)[1], flags=re.MULTILINE)
    assert sorted(listed) == sorted(COMMANDS)


def test_inspect_verifies_the_reference_bundle(host):
    out = host.cli("inspect", ARTIFACTS / "sim-e3nn").stdout
    assert "kind e3nn, equivariant True" in out
    assert f"(this host: {_pins()['onnxruntime']})" in out
    n_files = len(json.loads((ARTIFACTS / "sim-e3nn" / "manifest.json").read_text())["files"])
    assert f"verified    {n_files} file(s)" in out


def test_check_passes_for_e3nn_and_fails_for_the_baseline(host):
    ok = host.cli("check", ARTIFACTS / "sim-e3nn")
    rows = [line.split() for line in ok.stdout.splitlines() if line.split()[:1] and line.split()[0] in CASES]
    assert len(rows) == len(CASES) and all("PASS" in r for r in rows), ok.stdout
    assert "all cases PASS" in ok.stdout
    bad = host.cli("check", ARTIFACTS / "sim-baseline", check=4)
    failed = {line.split()[0] for line in bad.stdout.splitlines() if line.split()[-1:] == ["FAIL"]}
    assert {"rotation", "improper", "translation"} <= failed, bad.stdout
    assert "some cases FAIL" in bad.stdout
    assert bad.stderr.startswith("Error: ") and "check failed for rotation" in bad.stderr
    assert "Traceback" not in bad.stderr


def _rollout_in_process(bundle: Path, frames: np.ndarray, starts: list[int]) -> np.ndarray:
    """The same rollout with this (dev) environment's runtime, for comparison."""
    from e3traj.runtime._bundle import Bundle
    from e3traj.runtime._rollout import rollout

    with Bundle.open(bundle, threads=1) as b:
        return rollout(b, frames[np.asarray(starts)], STEPS).traj


def _load_rollout(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def test_rollout_from_folder_and_packed_archive(host, trajectory):
    bundle = ARTIFACTS / "sim-e3nn"
    out = host.work / "rollout.npz"
    proc = host.cli("rollout", bundle, trajectory, "--steps", STEPS, "--frames", STARTS, "--threads", 1, "-o", out)
    assert f"traj ({STEPS + 1}, 3, 12, 3)" in proc.stdout
    got = _load_rollout(out)
    with np.load(trajectory, allow_pickle=False) as data:
        frames = data["arr"]
    assert frames.shape == (50, 12, 2)
    starts = [0, 10, 49]
    assert got["traj"].shape == (STEPS + 1, 3, 12, 3) and got["traj"].dtype == np.float64
    assert np.all(np.isfinite(got["traj"]))
    assert got["starts"].tolist() == starts and bool(got["complete"]) and int(got["steps_done"]) == STEPS
    assert str(got["bundle_sha256"]) == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    np.testing.assert_array_equal(got["traj"][0, :, :, :2], frames[starts])
    np.testing.assert_array_equal(got["traj"][0, :, :, 2], 0.0)
    assert np.max(np.abs(got["traj"][-1] - got["traj"][0])) > 0, "the model never moved a bead"
    # the host reproduces the dev machine's runtime
    frames3 = np.concatenate([frames, np.zeros((50, 12, 1))], axis=-1)
    np.testing.assert_allclose(got["traj"], _rollout_in_process(bundle, frames3, starts), rtol=0, atol=1e-6)

    archive = host.work / "sim-e3nn.tar.gz"
    proc = host.cli("pack", bundle, "-o", archive)
    assert archive.is_file() and f"{archive.stat().st_size:,d} bytes" in proc.stdout
    out2 = host.work / "rollout-packed.npz"
    host.cli("rollout", archive, trajectory, "--steps", STEPS, "--frames", STARTS, "--threads", 1, "-o", out2)
    packed = _load_rollout(out2)
    np.testing.assert_array_equal(packed["traj"], got["traj"])
    assert str(packed["bundle_sha256"]) == str(got["bundle_sha256"])


@pytest.mark.parametrize(
    ("command", "hint"),
    [
        (["train", "--model", "e3nn", "--data", "sim", "-o", "model.pt"], "pip install 'e3traj[train]'"),
        (["export", "model.pt", "-o", "bundle"], "pip install 'e3traj[train]'"),
        (["plot", "--help"], "pip install 'e3traj[plot]'"),
    ],
    ids=["train", "export", "plot"],
)
def test_commands_needing_an_extra_exit_2_with_one_line(host, command, hint):
    proc = host.cli(*command, check=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and hint in lines[0], proc.stderr
    assert proc.stdout == ""
    assert not (host.work / "model.pt").exists() and not (host.work / "bundle").exists()


def test_a_20_bead_polymer_from_two_files_runs_on_the_host_and_again_from_its_own_xyz(host, trajectory, tmp_path):
    # issue 19's done-when: simulated on the dev side, trained from two files, exported; rolled out, checked and
    # rolled out again from the extended XYZ it wrote, on the base-only host
    from e3traj.export import export_checkpoint
    from e3traj.runtime import resolve_many, save_trajectory, simulate
    from e3traj.train import TrainConfig, train_model

    files = []
    for seed in (1, 2):
        f = host.work / f"poly20-{seed}.npz"
        save_trajectory(f, simulate(frames=400, seed=seed, n_beads=20))
        files.append(str(f))
    data = resolve_many(files)
    assert data.frames.shape == (800, 20, 3) and data.segments == ((0, 400), (400, 800))
    train_model(data, TrainConfig(model="langevin", max_time=None), output=tmp_path / "l.pt", progress=False)
    bundle = host.work / "poly20-bundle"
    manifest = export_checkpoint(tmp_path / "l.pt", bundle)
    assert manifest["model"]["num_nodes"] == 20 and len(manifest["training"]["data_files"]) == 2

    out = host.cli("inspect", bundle).stdout
    assert "nodes 20" in out and "(batch, 20, 3)" in out
    host.cli("rollout", bundle, files[1], "--frames", "300", "--steps", 40, "-o", "r.npz", "--xyz", "r.xyz")
    with np.load(host.work / "r.npz", allow_pickle=False) as z:
        assert z["traj"].shape == (41, 1, 20, 3) and bool(z["complete"])
    again = host.cli("rollout", bundle, "r.xyz", "--frames", "40", "--steps", 10, "-o", "r2.npz")
    assert "(11, 1, 20, 3)" in again.stdout
    checked = host.cli("check", bundle).stdout
    assert "all cases PASS" in checked
    wrong = host.cli("rollout", bundle, trajectory, "--steps", 2, "-o", "w.npz", check=3)
    assert "12 beads per frame; the model expects 20" in wrong.stderr and "Traceback" not in wrong.stderr
