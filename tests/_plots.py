"""Shared helpers of the figure tests (tests/runtime/test_plot*.py, test_figures.py, cli/test_cli_plot.py).

Their trajectory fixtures (``data_file``, ``frames``) are in tests/runtime/conftest.py.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, data[:8]
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def pixels(path) -> np.ndarray:
    from matplotlib.image import imread

    png_size(path)
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img


def assert_svg(path) -> bool:
    text = path.read_text(encoding="utf-8")
    assert "<svg" in text
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag.endswith("svg")
    return True


def history(n: int = 6, scale: float = 1e-3, dt: float = 1.5) -> list[dict]:
    return [
        {"epoch": i + 1, "time": dt * (i + 1), "train_loss": scale / (i + 1), "val_mse": scale / (i + 1), "lr": 1e-3}
        for i in range(n)
    ]


def training_section(hist: list | None) -> dict:
    section = {
        "data_sha256": "0" * 64,
        "data_source": "sim",
        "metrics": {"val_mse": 1e-4, "persistence_mse": 2e-3, "constant_velocity_mse": 3e-5},
    }
    if hist is not None:
        section["history"] = hist
    return {"training": section}


def make_rollout(cli, bundle, data, out, frames="10,20", steps=12):
    """Write a rollout of ``bundle`` from frames ``frames`` of ``data`` to ``out`` with ``e3traj rollout``."""
    r = cli("rollout", bundle, data, "-o", out, "--steps", steps, "--frames", frames)
    assert r.exit_code == 0, r.output
    return out


#: run in a subprocess: makes matplotlib unimportable, as on a host without the plot extra
BLOCK_MPL = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'matplotlib':
            raise ModuleNotFoundError("blocked: " + name, name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


def run_without_matplotlib(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_MPL + code], capture_output=True, text=True, timeout=120)
