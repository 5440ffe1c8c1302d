"""Hand-made ``.tar.gz`` archives for the archive tests (test_pack.py, test_tar.py), as an importable module."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """Write ``members`` (a TarInfo and its bytes, or None for a folder, link or device) as a gzipped tar."""
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def tar_file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def tar_special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def tar_dir(name: str) -> tuple[tarfile.TarInfo, None]:
    return tar_special(name, tarfile.DIRTYPE)


def bundle_members(bundle: Path, top: str = "b") -> list:
    """A bundle folder's files under the top-level folder ``top``, folder entry first."""
    return [tar_dir(top)] + [tar_file(f"{top}/{p.name}", p.read_bytes()) for p in sorted(bundle.iterdir())]
