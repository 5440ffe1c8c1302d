"""Pack a bundle folder into one ``.tar.gz`` and unpack such an archive safely (no links, no escapes, no bombs)."""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from ._bundle import MANIFEST_NAME, _verify_dir
from ._errors import InputError, UsageError
from ._io import atomic_output, check_output_path

__all__ = ["pack_bundle", "unpack_bundle", "MAX_ARCHIVE_BYTES", "MAX_ARCHIVE_MEMBERS"]

#: Largest total size of the files an archive may unpack to.
MAX_ARCHIVE_BYTES = 1 << 30

#: Most members (folder + files) an archive may hold; a bundle has four at most.
MAX_ARCHIVE_MEMBERS = 64

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def pack_bundle(bundle_dir: str | os.PathLike, output_tar_gz: str | os.PathLike, force: bool = False) -> Path:
    """Verify a bundle folder and write it as one ``.tar.gz`` holding a single top-level folder, atomically.

    The archive is reproducible (sorted members, zero mtimes and owners) and is re-verified before it is
    renamed into place.

    Raises:
        InputError: the bundle fails verification.
        UsageError: the output is inside the bundle, equals an input, exists without ``force``, or does not end
            in ``.tar.gz``/``.tgz``.
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
    manifest, _ = _verify_dir(src, str(src))
    top = src.resolve().name or "bundle"
    names = sorted([MANIFEST_NAME, *manifest["files"]])
    with atomic_output(out, suffix=".tmp") as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
                info = tarfile.TarInfo(top)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(_normalise(info))
                for name in names:
                    path = src / name
                    info = tarfile.TarInfo(f"{top}/{name}")
                    info.size = path.stat().st_size
                    info.mode = 0o644
                    with open(path, "rb") as fh:
                        tf.addfile(_normalise(info), fh)
        # what ships is what was verified: check the written archive itself
        with tempfile.TemporaryDirectory(prefix="e3traj-pack-") as check:
            root, _top = _unpack(tmp, Path(check), label=str(out))
            _verify_dir(root, f"{out}:{top}")
    return out


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _member_parts(name: str, where: str) -> tuple[str, ...]:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InputError(f"{where}: member {name!r} has an absolute path; refusing it, re-pack with 'e3traj pack'")
    parts = PurePosixPath(name.rstrip("/")).parts
    if ".." in parts:
        raise InputError(f"{where}: member {name!r} climbs out with '..'; refusing it, re-pack with 'e3traj pack'")
    if not parts or any(p in ("", ".") or "\\" in p or "\x00" in p for p in parts):
        raise InputError(f"{where}: member {name!r} is not a plain relative path; re-pack with 'e3traj pack'")
    return parts


def _unpack(archive: Path, dest: Path, *, label: str | None = None) -> tuple[Path, str]:
    """Safely extract ``archive`` into ``dest`` (an empty folder); return (bundle folder, its name). No verify."""
    where = label or str(archive)
    if not archive.is_file():
        raise InputError(f"{where}: not found; pass a .tar.gz made by 'e3traj pack' or a bundle folder")
    top: str | None = None
    total = 0
    count = 0
    try:
        with tarfile.open(archive, mode="r:gz") as tf:
            for member in tf:
                count += 1
                if count > MAX_ARCHIVE_MEMBERS:
                    raise InputError(f"{where}: more than {MAX_ARCHIVE_MEMBERS} members; a bundle has a few files")
                parts = _member_parts(member.name, where)
                if member.issym() or member.islnk():
                    raise InputError(f"{where}: member {member.name!r} is a link; bundles hold only regular files")
                if member.isdev() or member.isfifo():
                    raise InputError(f"{where}: member {member.name!r} is a device or FIFO; refusing the archive")
                if top is None:
                    top = parts[0]
                elif parts[0] != top:
                    raise InputError(
                        f"{where}: more than one top-level entry ({top!r}, {parts[0]!r}); an archive holds one folder"
                    )
                if member.isdir():
                    if len(parts) != 1:
                        raise InputError(f"{where}: member {member.name!r} is a subfolder; bundles hold none")
                    (dest / top).mkdir(exist_ok=True)
                    continue
                if not member.isfile() or member.issparse():
                    raise InputError(f"{where}: member {member.name!r} is not a regular file; refusing the archive")
                if len(parts) != 2:
                    raise InputError(
                        f"{where}: member {member.name!r} is not a file directly inside one top-level folder; "
                        "re-pack with 'e3traj pack'"
                    )
                total += member.size
                if total > MAX_ARCHIVE_BYTES:
                    raise InputError(f"{where}: members add up to over {MAX_ARCHIVE_BYTES} bytes; refusing the archive")
                (dest / top).mkdir(exist_ok=True)
                target = dest / top / parts[1]
                src = tf.extractfile(member)
                try:
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
                except FileExistsError:
                    raise InputError(f"{where}: member {member.name!r} appears twice; refusing the archive") from None
                with os.fdopen(fd, "wb") as fh:
                    shutil.copyfileobj(src, fh, 1 << 20)
    except InputError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        text = str(exc).strip().splitlines()
        raise InputError(
            f"{where}: not a readable .tar.gz ({text[0] if text else type(exc).__name__}); the archive may be "
            "truncated, re-pack it with 'e3traj pack'"
        ) from None
    if top is None:
        raise InputError(f"{where}: the archive is empty; re-pack the bundle with 'e3traj pack'")
    root = dest / top
    root.mkdir(exist_ok=True)
    return root, top


def unpack_bundle(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Safely unpack a bundle archive into ``dest_dir`` and verify it; return the bundle folder.

    Refuses absolute paths, ``..``, symlinks, hardlinks, devices, FIFOs, subfolders, more than one top-level
    folder and archives over :data:`MAX_ARCHIVE_BYTES`. ``dest_dir`` is created if needed and the bundle folder
    must not exist in it yet.

    Raises:
        InputError: the archive is unsafe, unreadable or the bundle fails verification.
        UsageError: the bundle folder already exists in ``dest_dir``.
    """
    arch = Path(archive)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    # extract into a private staging folder first, then move the verified folder into place
    staging = Path(tempfile.mkdtemp(prefix=".e3traj-unpack-", dir=dest))
    try:
        root, top = _unpack(arch, staging)
        _verify_dir(root, f"{arch}:{top}")
        final = dest / top
        if final.exists() or final.is_symlink():
            raise UsageError(f"{final}: already exists; remove it or unpack somewhere else")
        os.replace(root, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
