"""Pack a bundle folder into one ``.tar.gz`` and unpack such an archive safely (no links, no escapes, no bombs).

Both read their input once and verify it in memory before anything is written: ``pack`` writes the archive from
the very bytes it verified and checks the written archive again; ``unpack`` checks the archive's members against
the manifest's names, sizes and hashes (see :mod:`e3traj.runtime._tar`) and only then writes the files.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from ._errors import InputError, UsageError
from ._io import atomic_output, check_output_path
from ._tar import MAX_ARCHIVE_BYTES, MAX_ARCHIVE_MEMBERS, read_archive
from ._verify import _verify_archive, _verify_dir

__all__ = ["pack_bundle", "unpack_bundle", "MAX_ARCHIVE_BYTES", "MAX_ARCHIVE_MEMBERS"]

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def pack_bundle(bundle_dir: str | os.PathLike, output_tar_gz: str | os.PathLike, force: bool = False) -> Path:
    """Verify a bundle folder and write it as one ``.tar.gz`` holding a single top-level folder, atomically.

    The archive is reproducible (sorted members, zero mtimes and owners), is written from the bytes that were
    verified, and is verified again (in memory) before it is renamed into place. Without ``force`` an archive
    that appears meanwhile is kept; with ``force`` only a regular file is replaced.

    Raises:
        InputError: the bundle fails verification.
        UsageError: the output is inside the bundle, equals an input, exists without ``force``, is not a regular
            file, or does not end in ``.tar.gz``/``.tgz``.
    """
    src = Path(bundle_dir)
    out = Path(output_tar_gz)
    if not src.is_dir():
        if src.is_file():
            raise UsageError(
                f"{src}: is a file, not a bundle folder; only a folder can be packed (is it packed already?)"
            )
        raise InputError(f"{src}: not found; pass the bundle folder (with manifest.json) to pack")
    if not out.name.endswith(_ARCHIVE_SUFFIXES):
        raise UsageError(f"{out}: name the archive NAME.tar.gz (or .tgz) so hosts recognise it")
    if _inside(out, src):
        raise UsageError(f"{out}: is inside the bundle folder {src}; write the archive somewhere else")
    check_output_path(out, [src], force=force)
    verified = _verify_dir(src, str(src), keep_all=True)
    contents = {name: bytes(data) for name, data in verified.files.items()}  # every file as it was hashed, once
    top = src.resolve().name or "bundle"
    with atomic_output(out, suffix=".tmp", replace=force) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
                info = tarfile.TarInfo(top)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(_normalise(info))
                for name in sorted(contents):
                    info = tarfile.TarInfo(f"{top}/{name}")
                    info.size = len(contents[name])
                    info.mode = 0o644
                    tf.addfile(_normalise(info), io.BytesIO(contents[name]))
        # what ships is what was verified: check the written archive itself, and that it carries this manifest
        again = _verify_archive(tmp)
        if again.sha256 != verified.sha256:
            raise InputError(f"{out}: the written archive's manifest differs from {src}'s; pack it again")
    return out


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def unpack_bundle(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Safely unpack a bundle archive into ``dest_dir`` and verify it; return the bundle folder.

    The archive is read and verified in memory first (absolute paths, ``..``, symlinks, hardlinks, devices,
    FIFOs, subfolders, more than one top-level folder, archives over :data:`MAX_ARCHIVE_BYTES` and members that
    do not match the manifest are refused before anything is written). ``dest_dir`` is created if needed and the
    bundle folder must not exist in it yet.

    Raises:
        InputError: the archive is unsafe, unreadable or the bundle fails verification.
        UsageError: the bundle folder already exists in ``dest_dir``.
    """
    arch = Path(archive)
    members = read_archive(arch)  # read once: what is verified is what is written
    _verify_archive(arch, members)  # names, sizes, hashes, the model: all before a byte is written
    dest = Path(dest_dir)
    final = dest / members.top
    if final.exists() or final.is_symlink():
        raise UsageError(f"{final}: already exists; remove it or unpack somewhere else")
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".e3traj-unpack-", dir=dest))
    try:
        root = staging / members.top
        root.mkdir()
        for name, data in members.files.items():
            fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        _verify_dir(root, f"{arch}:{members.top}")
        try:
            os.rename(root, final)
        except OSError:
            if final.exists():
                raise UsageError(f"{final}: already exists; remove it or unpack somewhere else") from None
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
