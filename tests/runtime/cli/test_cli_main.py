"""The command line (runtime/cli/__init__.py): help for every command, version, and what a host without the train
extra sees."""

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from e3traj.runtime import __version__
from e3traj.runtime.cli import COMMANDS, main

# Run in a subprocess: makes torch, e3nn, torch_geometric and onnx unimportable, as on a light host.
BLOCK = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'e3nn', 'torch_geometric', 'onnx', 'onnxscript', 'matplotlib'}:
            raise ModuleNotFoundError("blocked: " + name, name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


def test_version_and_help():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output
    r = CliRunner().invoke(main, ["-h"])
    assert r.exit_code == 0
    for name in COMMANDS:
        assert name in r.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name):
    r = CliRunner().invoke(main, [name, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage: " in r.output and name in r.output


def test_unknown_command():
    r = CliRunner().invoke(main, ["fly"])
    assert r.exit_code == 2 and "No such command" in r.output


def _run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=120)


def test_runtime_imports_without_torch():
    r = _run_blocked(
        "import e3traj.runtime, e3traj.runtime.cli\n"
        "import importlib, pkgutil, e3traj.runtime as rt\n"
        "for m in pkgutil.walk_packages(rt.__path__, 'e3traj.runtime.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert 'torch' not in sys.modules and 'onnx' not in sys.modules\n"
        "print('ok')"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")


def test_help_without_torch():
    r = _run_blocked("from e3traj.runtime.cli import main\nmain(['--help'])")
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "rollout" in r.stdout


@pytest.mark.parametrize("name", ["train", "export"])
def test_training_commands_without_extra_say_how_to_install(name):
    r = _run_blocked(f"from e3traj.runtime.cli import main\nmain(['{name}', '--data', 'sim', '-o', 'x.pt'])")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "pip install 'e3traj[train]'" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_evaluate_scores_bundles_without_torch_and_explains_checkpoints(tmp_path):
    import json
    from pathlib import Path

    bundle = Path(__file__).resolve().parents[3] / "artifacts" / "sim-e3nn"
    code = (
        "from e3traj.runtime.cli import main\n"
        f"main(['evaluate', {str(bundle)!r}, '--data', 'sim', '--starts', '2', '--json'])"
    )
    r = _run_blocked(code)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["model"]["kind"] == "e3nn" and report["one_step"]["n_val_pairs"] == 410
    suite = {"persistence", "constant_velocity", "constant_acceleration", "ar"}
    assert set(report["rollout_rmsd"]) == {"model"} | suite
    one = report["one_step"]
    assert one["best_baseline"] in suite and one["best_baseline_mse"] == min(one[f"{n}_mse"] for n in suite)
    assert one["ratio_to_best"] == pytest.approx(one["val_mse"] / one["best_baseline_mse"])
    assert set(report["rollout_best"].values()) <= suite
    (tmp_path / "m.pt").write_bytes(b"x")
    r = _run_blocked(f"from e3traj.runtime.cli import main\nmain(['evaluate', {str(tmp_path / 'm.pt')!r}])")
    assert r.returncode == 2 and "pip install 'e3traj[train]'" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_frames_that_never_move_and_a_short_trajectory(tmp_path, toy_bundle, cli):
    """A best RMSD of 0 has no ratio (nan, not a ZeroDivisionError); 20 frames still give a suite."""
    still = tmp_path / "still.npy"
    np.save(still, np.tile(np.arange(36, dtype=np.float64).reshape(1, 12, 3), (60, 1, 1)))
    r = cli("evaluate", toy_bundle, "--data", still)
    assert r.exit_code == 0, r.output
    assert "model / best" in r.output and "nan" in r.output
    rng = np.random.default_rng(0)
    short = tmp_path / "short.npy"
    np.save(short, np.cumsum(rng.normal(scale=0.01, size=(20, 12, 3)), axis=0))
    r = cli("evaluate", toy_bundle, "--data", short)
    assert r.exit_code == 0, r.output
    assert "fitted" in r.output
