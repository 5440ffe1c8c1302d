"""Every trajectory format ASE reads (LAMMPS dump, ASE ``.traj``, PDB, ...), with the ``ase`` extra
(``pip install 'e3traj[ase]'``, dev machines; hosts read ``.npz``, ``.npy`` and extended XYZ without it).

The bytes read (and hashed) by the caller are the bytes parsed: ASE reads them from memory, with the format
guessed from the file's name. The same refusals as the XYZ reader: one species, no periodic cell, one chain of
fixed length. ASE's ``.traj`` is its JSON-and-arrays format; ASE refuses the old pickle-based one.
"""

from __future__ import annotations

import io

import numpy as np

from ._errors import InputError, first_line

__all__ = ["parse_with_ase"]


def parse_with_ase(data: bytes, name: str) -> np.ndarray:
    """Positions of every frame of ``data`` (the bytes of file ``name``) read by ASE. Shapes: -> ``(T, N, 3)``."""
    generic = f"{name}: not an .npz, .npy or extended XYZ file; expected the dmol-book format (.npz with key 'arr')"
    if name.lower().endswith((".npz", ".npy")):
        raise InputError(generic)  # named like ours, holding something else: not a file for ASE to guess at
    try:
        import ase.io
        from ase.io.formats import filetype, ioformats
    except ImportError:
        raise InputError(
            f"{generic}; other formats (LAMMPS dump, ASE .traj, PDB...) need the ase extra: pip install 'e3traj[ase]'"
        ) from None
    try:
        fmt = filetype(name, read=False)
    except Exception:  # an extension ASE does not know
        raise InputError(f"{generic}, nor a format ASE knows by its extension") from None
    try:
        binary = ioformats[fmt].isbinary
        handle = io.BytesIO(data) if binary else io.StringIO(data.decode("utf-8"))
        frames = ase.io.read(handle, index=":", format=fmt)
    except Exception as exc:  # ASE raises many kinds for a file it cannot read
        raise InputError(
            f"{name}: ASE could not read it as {fmt} ({first_line(exc)[:160]}); check the file and its extension"
        ) from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise InputError(f"{name}: ASE found no frame in it")
    species = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    if len(species) > 1:
        raise InputError(f"{name}: species {species[:4]}; the models know one kind of bead")
    if any(bool(np.any(atoms.pbc)) for atoms in frames):
        raise InputError(f"{name}: a periodic cell (pbc {frames[0].pbc.tolist()}); write the chain without a cell")
    sizes = sorted({len(atoms) for atoms in frames})
    if len(sizes) > 1:
        raise InputError(f"{name}: frames hold {sizes[0]} to {sizes[-1]} atoms; one chain of fixed length per file")
    return np.stack([atoms.get_positions() for atoms in frames])
