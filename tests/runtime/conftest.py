"""Fixtures of the runtime tests: toy bundles (built by :mod:`_toys`), trajectories and the host CLI."""

from __future__ import annotations

import os
from pathlib import Path

import _toys
import numpy as np
import pytest
from _toys import make_traj, write_bundle
from click.testing import CliRunner

# onnx is imported inside the builders only, so merely collecting these tests does not load it
# (a no-torch/no-onnx check elsewhere may look at sys.modules).


@pytest.fixture
def make_bundle(tmp_path):
    """Factory: ``make_bundle(kind="toy", name=None, **kw) -> Path`` of a fresh bundle folder under tmp_path."""
    counter = {"n": 0}

    def _make(kind: str = "toy", name: str | None = None, **kw) -> Path:
        counter["n"] += 1
        return write_bundle(tmp_path / (name or f"{kind}-bundle-{counter['n']}"), kind, **kw)

    return _make


@pytest.fixture
def toy_bundle(make_bundle) -> Path:
    return make_bundle("toy", "toy")


@pytest.fixture
def baseline_bundle(make_bundle) -> Path:
    return make_bundle("baseline", "baseline")


@pytest.fixture
def velocity_bundle(make_bundle) -> Path:
    return make_bundle("velocity", "velocity")


@pytest.fixture
def history_bundle(make_bundle) -> Path:
    return make_bundle("history")


@pytest.fixture
def blowup_bundle(make_bundle) -> Path:
    return make_bundle("blowup", "blowup")


@pytest.fixture
def traj_file(tmp_path) -> Path:
    """A 20-frame planar trajectory in the dmol-book format (.npz, key 'arr', shape (20, 12, 2))."""
    path = tmp_path / "init.npz"
    np.savez(path, arr=make_traj(20, seed=3, dim=2))
    return path


@pytest.fixture
def data_file(tmp_path, toys) -> Path:
    """The figure tests' data: 40 planar frames (dmol-book format): 39 pairs, 31 for training, 8 for validation."""
    path = tmp_path / "data.npz"
    np.savez(path, arr=toys.make_traj(40, seed=5, dim=2))
    return path


@pytest.fixture
def frames(data_file) -> np.ndarray:
    """``data_file``'s frames lifted to 3D (z = 0). Shapes: ``(40, 12, 3)``."""
    arr = np.load(data_file)["arr"]
    return np.concatenate([arr, np.zeros(arr.shape[:2] + (1,))], axis=-1)


@pytest.fixture
def cli():
    """Run ``e3traj ARGS...`` in-process; returns click's Result (stdout and stderr kept apart)."""
    from e3traj.runtime.cli import main

    runner = CliRunner()

    def _run(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=True)

    return _run


def _assert_cli_error(result, code: int, *fragments: str) -> str:
    """Assert a CLI failure: exit ``code``, exactly one ``Error: ...`` line on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: "), lines[0]
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


@pytest.fixture
def cli_error():
    """``cli_error(result, code, *fragments) -> str``: assert a one-line error with that exit code."""
    return _assert_cli_error


@pytest.fixture
def one_line():
    """``one_line(exc_info, *fragments)``: assert an E3TrajError message is one line containing the fragments."""

    def _check(excinfo, *fragments):
        msg = str(excinfo.value)
        assert "\n" not in msg, msg
        for frag in fragments:
            assert frag in msg, (frag, msg)
        return msg

    return _check


@pytest.fixture
def no_leftovers():
    """``no_leftovers(folder, *names)``: assert none of ``names`` nor any atomic temp file exists in ``folder``."""

    def _check(folder, *names):
        folder = Path(folder)
        for name in names:
            assert not (folder / name).exists(), name
        temps = [n for n in os.listdir(folder) if n.startswith(".") and not n.startswith(".pytest")]
        assert not temps, temps

    return _check


@pytest.fixture(scope="session")
def fuzz_inputs(tmp_path_factory):
    """The fuzz tests' pristine inputs, made once per session: see :func:`_fuzz.prepare_inputs`."""
    import _fuzz

    return _fuzz.prepare_inputs(tmp_path_factory.mktemp("fuzz-inputs"))


@pytest.fixture
def toys():
    """The bundle builders: the :mod:`_toys` module (``build_model``, ``reference``, ``write_bundle``...)."""
    return _toys
