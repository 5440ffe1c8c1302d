"""The extended-XYZ reader (runtime/_xyz.py): what rollout --xyz writes reads back; what it cannot be is refused."""

from __future__ import annotations

import numpy as np
import pytest

from e3traj.runtime import InputError, load_trajectory, write_xyz


def _traj(t=5, n=7, seed=0):
    return np.random.default_rng(seed).normal(size=(t, 1, n, 3))


def test_what_rollout_writes_reads_back_to_the_printed_digits(tmp_path):
    traj = _traj()
    write_xyz(tmp_path / "r.xyz", traj, [3])
    back = load_trajectory(tmp_path / "r.xyz")
    assert back.shape == (5, 7, 3)
    np.testing.assert_allclose(back, traj[:, 0], atol=1e-10)  # written with 10 decimals


def test_plain_xyz_without_extended_keys_and_trailing_blank_lines(tmp_path):
    body = "".join(f"3\nframe {t}\nAr {t} 0 0\nAr 1 {t} 0\nAr 0 0 {t}.5\n" for t in range(2)) + "\n\n"
    (tmp_path / "p.xyz").write_text(body)
    back = load_trajectory(tmp_path / "p.xyz")
    assert back.shape == (2, 3, 3) and back[1, 2, 2] == 1.5


def _frame(n=3, comment="", species=None, rows=None):
    species = species or ["C"] * n
    rows = rows or [f"{i} 0 0" for i in range(n)]
    return f"{n}\n{comment}\n" + "".join(f"{s} {r}\n" for s, r in zip(species, rows))


@pytest.mark.parametrize(
    "text, fragment",
    [
        (_frame(comment='Lattice="10 0 0 0 10 0 0 0 10" Properties=species:S:1:pos:R:3'), "periodic cell"),
        (_frame(comment='pbc="T T T"'), "periodic"),
        (_frame(species=["C", "O", "C"]), "one kind of bead"),
        (_frame(comment="start=1") + _frame(comment="start=2"), "2 trajectories"),
        (_frame() + _frame(n=4), "frame 1 has 4 atoms, frame 0 has 3"),
        (_frame()[:-8], "truncated"),
        (_frame(rows=["0 0 0", "1 x 0", "2 0 0"]), "not 3 numbers"),
        (_frame(rows=["0 0 0", "1 0", "2 0 0"]), "expected 'species x y z'"),
        (_frame(comment="Properties=pos:R:3:species:S:1"), "species:S:1:pos:R:3 first"),
        ("2\n\nC 0 0 0\nC 1 0 0\n", "2 atoms; a chain needs 3"),
        (_frame() + "\n" + _frame(), "blank inside the file"),
        (_frame(rows=["0 0 0", "1 0 0", "nan 0 0"]), "non-finite"),
        (_frame() + "three\n", "expected the atom count"),
    ],
)
def test_what_is_not_one_free_chain_is_refused_in_one_line(tmp_path, text, fragment):
    f = tmp_path / "bad.xyz"
    f.write_text(text)
    with pytest.raises(InputError) as e:
        load_trajectory(f)
    msg = str(e.value)
    assert fragment in msg and str(f) in msg and "\n" not in msg


def test_non_ascii_and_a_bundle_s_n_are_enforced(tmp_path):
    f = tmp_path / "u.xyz"
    f.write_bytes(_frame().encode() + "é".encode())
    with pytest.raises(InputError, match="not ASCII"):
        load_trajectory(f)
    write_xyz(tmp_path / "r.xyz", _traj(n=5), [0])
    with pytest.raises(InputError, match="5 beads per frame; the model expects 12"):
        load_trajectory(tmp_path / "r.xyz", n_beads=12)
