"""Trajectory formats ASE reads (runtime/_ase_io.py, the ase extra): .traj and PDB load like .npz; what is not one
free chain is refused in one line; without ASE the refusal names the extra."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from e3traj.runtime import InputError, load_trajectory, simulate

ase = pytest.importorskip("ase")


def _frames(symbols="C12", pbc=False):
    from ase import Atoms

    x = simulate(frames=4, seed=0, dim=3)
    return x, [Atoms(symbols, positions=f, pbc=pbc, cell=[20, 20, 20] if pbc else None) for f in x]


@pytest.mark.parametrize("name, fmt, atol", [("t.traj", "traj", 0.0), ("t.pdb", "proteindatabank", 1e-3)])
def test_ase_formats_load_like_npz(tmp_path, name, fmt, atol):
    from ase.io import write

    x, frames = _frames()
    write(tmp_path / name, frames, format=fmt)
    got = load_trajectory(tmp_path / name, n_beads=12)
    assert got.shape == (4, 12, 3)
    np.testing.assert_allclose(got, x, atol=atol)  # PDB keeps 3 decimals


@pytest.mark.parametrize(
    "symbols, pbc, fragment",
    [("C6O6", False, "one kind of bead"), ("C12", True, "periodic cell")],
)
def test_what_is_not_one_free_chain_is_refused(tmp_path, symbols, pbc, fragment):
    from ase.io import write

    _, frames = _frames(symbols, pbc)
    write(tmp_path / "t.traj", frames)
    with pytest.raises(InputError, match=fragment):
        load_trajectory(tmp_path / "t.traj")


def test_unreadable_and_without_ase(tmp_path, monkeypatch):
    f = tmp_path / "t.traj"
    f.write_bytes(b"not a trajectory at all")
    with pytest.raises(InputError) as e:
        load_trajectory(f)
    assert "ASE could not read it as traj" in str(e.value) and "\n" not in str(e.value)
    real_import = builtins.__import__

    def no_ase(name, *args, **kwargs):
        if name.split(".")[0] == "ase":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ase)
    with pytest.raises(InputError, match=r"need the ase extra: pip install 'e3traj\[ase\]'"):
        load_trajectory(f)
