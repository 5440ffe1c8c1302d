"""A strict extended-XYZ reader (numpy only): what ``rollout --xyz`` writes and ASE, OVITO and VMD read.

Each frame is a count line ``N``, a comment line, and N atom lines ``species x y z [more columns]``. The comment
may carry extended-XYZ ``key=value`` pairs (values in double quotes may hold spaces):

- ``Properties=species:S:1:pos:R:3[:...]``: the species first and the positions next are required when the key
  is present (other columns after them are ignored);
- ``Lattice="..."`` or ``pbc`` with any ``T``: a periodic cell, refused (the models see a free chain);
- ``start=S`` (what ``rollout --xyz`` writes): a file of several starts holds several trajectories, refused
  with a pointer to one start per file.

Every frame must hold the same number of beads, all of one species (refused otherwise: the models know one
kind of bead). Everything is checked before it is used, with one line naming the file, the frame and the fix.
"""

from __future__ import annotations

import re

import numpy as np

from ._contract import MAX_BEADS, MIN_BEADS
from ._errors import InputError

__all__ = ["looks_like_xyz", "parse_xyz"]

_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_\-]*)=("[^"]*"|\S+)')


def looks_like_xyz(data: bytes) -> bool:
    """True when the bytes start like an XYZ file: an integer on the first line."""
    first = data[:64].split(b"\n", 1)[0].strip()
    return bool(first) and first.isdigit()


def _comment_keys(line: str) -> dict[str, str]:
    return {k.lower(): v.strip('"') for k, v in _PAIR.findall(line)}


def parse_xyz(data: bytes, name: str) -> np.ndarray:
    """Parse extended XYZ ``data`` (the bytes of file ``name``) into positions.

    Shapes: -> ``(T, N, 3)`` float64 (not yet validated for finiteness: :func:`validate_frames` does that).
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: byte {exc.start} is not ASCII; an XYZ file is plain text") from None
    lines = text.rstrip().split("\n")  # trailing blank lines end the file
    frames, starts, species = [], set(), set()
    i, n_expected = 0, None
    while i < len(lines):
        head = lines[i].strip()
        if not head:  # blank lines after the last frame
            if any(rest.strip() for rest in lines[i:]):
                raise InputError(f"{name}: line {i + 1} is blank inside the file; expected an atom count")
            break
        frame = len(frames)
        if not head.isdigit() or len(head) > 7:
            raise InputError(f"{name}: line {i + 1} (frame {frame}) is {head[:40]!r}; expected the atom count")
        n = int(head)
        if not MIN_BEADS <= n <= MAX_BEADS:
            raise InputError(f"{name}: frame {frame} has {n} atoms; a chain needs {MIN_BEADS} to {MAX_BEADS} beads")
        if n_expected is not None and n != n_expected:
            raise InputError(f"{name}: frame {frame} has {n} atoms, frame 0 has {n_expected}; one chain per file")
        n_expected = n
        if i + 2 + n > len(lines):
            raise InputError(f"{name}: frame {frame} stops after line {len(lines)}; the file is truncated")
        keys = _comment_keys(lines[i + 1])
        _check_keys(keys, name, frame)
        if "start" in keys:
            starts.add(keys["start"])
        rows = [line.split() for line in lines[i + 2 : i + 2 + n]]
        for j, row in enumerate(rows):
            if len(row) < 4:
                raise InputError(
                    f"{name}: line {i + 3 + j} (frame {frame}) has {len(row)} fields; expected 'species x y z'"
                )
            species.add(row[0])
        if len(species) > 1:
            raise InputError(f"{name}: species {sorted(species)[:4]}; the models know one kind of bead")
        try:
            frames.append(np.array([[float(v) for v in row[1:4]] for row in rows], dtype=np.float64))
        except ValueError:
            bad = next(j for j, row in enumerate(rows) if not _floats(row[1:4]))
            raise InputError(
                f"{name}: line {i + 3 + bad} (frame {frame}): {' '.join(rows[bad][1:4])!r} are not 3 numbers"
            ) from None
        i += 2 + n
    if not frames:
        raise InputError(f"{name}: holds no frame; expected an atom count, a comment and the atoms")
    if len(starts) > 1:
        raise InputError(
            f"{name}: holds {len(starts)} trajectories (start={', '.join(sorted(starts)[:3])}...); "
            "write one start per file (rollout --frames S --xyz)"
        )
    return np.stack(frames)


def _floats(values) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True


def _check_keys(keys: dict[str, str], name: str, frame: int) -> None:
    if "lattice" in keys:
        raise InputError(f"{name}: frame {frame} has a Lattice (a periodic cell); write the chain without a cell")
    if "T" in keys.get("pbc", "").upper().split():
        raise InputError(f'{name}: frame {frame} has pbc={keys["pbc"]!r} (periodic); write it with pbc="F F F"')
    props = keys.get("properties")
    if props is not None and not props.lower().startswith("species:s:1:pos:r:3"):
        raise InputError(
            f"{name}: frame {frame} has Properties={props!r}; expected species:S:1:pos:R:3 first (species, then x y z)"
        )
