"""Read a bundle archive (``.tar.gz``) once, into memory, with every tar-level check done before any data is used.

Nothing is extracted to disk here: the archive is read once (its size capped), decompressed with a cap, its raw
headers are walked (each header's size capped, so a small archive cannot claim hundreds of MB of pax header), and
only then does :mod:`tarfile` parse the member list. Members are returned as views into the decompressed bytes;
the caller checks them against the manifest's names, sizes and hashes before it writes or parses anything.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ._errors import InputError, first_line

__all__ = ["MAX_ARCHIVE_BYTES", "MAX_ARCHIVE_MEMBERS", "MAX_HEADER_BYTES", "Archive", "read_archive"]

#: Largest size an archive may unpack to (the tar stream: headers and members). Bundles are a few MB.
MAX_ARCHIVE_BYTES = 64 << 20

#: Most members (folder + files) an archive may hold; a bundle has four at most.
MAX_ARCHIVE_MEMBERS = 64

#: Largest pax or GNU long-name record of one member. Bundles have short names (``e3traj pack`` writes no pax
#: record for them); a small cap also bounds the cost of tarfile's pax parsing, which is quadratic on crafted
#: records in some Python versions (CVE-2024-6232).
MAX_HEADER_BYTES = 4 << 10

#: Header types refused before tarfile sees them: old GNU sparse files (their maps live outside the header).
_REFUSED_TYPES = {b"S": "a GNU sparse file"}

_BLOCK = 512


@dataclass(frozen=True)
class Archive:
    """A checked archive: its one top-level folder and its files (name -> bytes, views into one buffer)."""

    top: str
    files: dict[str, memoryview]


def _fail(where: str, what: str) -> InputError:
    return InputError(f"{where}: {what}")


def _unreadable(where: str, exc: BaseException) -> InputError:
    return _fail(
        where,
        f"not a readable .tar.gz ({first_line(exc)}); the archive may be truncated, re-pack it with 'e3traj pack'",
    )


def _decompress(path: Path, where: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            packed = fh.read(MAX_ARCHIVE_BYTES + 1)
    except OSError as exc:
        raise _fail(where, f"cannot read the archive ({exc.strerror}); check the path and its permissions") from None
    if len(packed) > MAX_ARCHIVE_BYTES:
        raise _fail(where, f"over {MAX_ARCHIVE_BYTES} bytes; a bundle archive is a few MB, refusing it")
    if not packed.startswith(b"\x1f\x8b"):
        raise _fail(where, "not a gzip file; pass a .tar.gz made by 'e3traj pack' or a bundle folder")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(packed), mode="rb") as gz:
            raw = gz.read(MAX_ARCHIVE_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise _unreadable(where, exc) from None
    if len(raw) > MAX_ARCHIVE_BYTES:
        raise _fail(where, f"members add up to over {MAX_ARCHIVE_BYTES} bytes; refusing the archive")
    return raw


def _octal(field: bytes) -> int | None:
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    if field[0] & 0x80:  # GNU base-256: only for huge sizes, which no bundle has
        return None
    try:
        return int(text, 8)
    except ValueError:
        return None


def _walk_headers(raw: bytes, where: str) -> None:
    """Walk the raw tar blocks: cap the number of headers and the size of pax/GNU records before tarfile reads them."""
    pos, count = 0, 0
    while pos + _BLOCK <= len(raw):
        block = raw[pos : pos + _BLOCK]
        if block == b"\0" * _BLOCK:
            return
        size = _octal(block[124:136])
        if size is None:
            raise _fail(where, "a tar header has an unreadable size; re-pack the bundle with 'e3traj pack'")
        kind = block[156:157]
        count += 1
        if count > 4 * MAX_ARCHIVE_MEMBERS:
            raise _fail(where, f"more than {MAX_ARCHIVE_MEMBERS} members; a bundle has a few files")
        if kind in _REFUSED_TYPES:
            raise _fail(where, f"holds {_REFUSED_TYPES[kind]}; bundles hold only regular files, refusing the archive")
        if kind in (b"x", b"g", b"X", b"L", b"K"):
            if size > MAX_HEADER_BYTES:
                raise _fail(
                    where, f"a tar header record of {size} bytes, over the {MAX_HEADER_BYTES}-byte limit; refusing"
                )
            record = raw[pos + _BLOCK : pos + _BLOCK + size]
            if kind in (b"x", b"g", b"X") and b"GNU.sparse" in record:
                raise _fail(where, "holds a GNU sparse file (pax GNU.sparse record); refusing the archive")
        pos += _BLOCK + -(-size // _BLOCK) * _BLOCK


def _member_parts(name: str, where: str) -> tuple[str, ...]:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise _fail(where, f"member {name!r} has an absolute path; refusing it, re-pack with 'e3traj pack'")
    parts = PurePosixPath(name.rstrip("/")).parts
    if ".." in parts:
        raise _fail(where, f"member {name!r} climbs out with '..'; refusing it, re-pack with 'e3traj pack'")
    if not parts or any(p in ("", ".") or "\\" in p or "\x00" in p for p in parts):
        raise _fail(where, f"member {name!r} is not a plain relative path; re-pack with 'e3traj pack'")
    return parts


def read_archive(path: str | Path, *, label: str | None = None) -> Archive:
    """Read and check a bundle archive in memory; nothing is written anywhere.

    Refuses: archives over :data:`MAX_ARCHIVE_BYTES` (packed or unpacked), more than :data:`MAX_ARCHIVE_MEMBERS`
    members, header records over :data:`MAX_HEADER_BYTES`, absolute paths, ``..``, links, devices, FIFOs,
    subfolders, more than one top-level folder, duplicate names.

    Raises:
        InputError: one line naming the archive, what is wrong and what to do.
    """
    p = Path(path)
    where = label or str(p)
    if not p.is_file():
        raise _fail(where, "not found; pass a .tar.gz made by 'e3traj pack' or a bundle folder")
    raw = _decompress(p, where)
    _walk_headers(raw, where)
    view = memoryview(raw)
    top: str | None = None
    files: dict[str, memoryview] = {}
    count = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            for member in tf:
                count += 1
                if count > MAX_ARCHIVE_MEMBERS:
                    raise _fail(where, f"more than {MAX_ARCHIVE_MEMBERS} members; a bundle has a few files")
                if member.offset_data - member.offset > MAX_HEADER_BYTES:
                    raise _fail(where, f"member {member.name!r} has a header over {MAX_HEADER_BYTES} bytes; refusing")
                parts = _member_parts(member.name, where)
                if member.issym() or member.islnk():
                    raise _fail(where, f"member {member.name!r} is a link; bundles hold only regular files")
                if member.isdev() or member.isfifo():
                    raise _fail(where, f"member {member.name!r} is a device or FIFO; refusing the archive")
                if top is None:
                    top = parts[0]
                elif parts[0] != top:
                    raise _fail(
                        where, f"more than one top-level entry ({top!r}, {parts[0]!r}); an archive holds one folder"
                    )
                if member.isdir():
                    if len(parts) != 1:
                        raise _fail(where, f"member {member.name!r} is a subfolder; bundles hold none")
                    continue
                if not member.isfile() or member.issparse():
                    raise _fail(where, f"member {member.name!r} is not a regular file; refusing the archive")
                if len(parts) != 2:
                    raise _fail(
                        where,
                        f"member {member.name!r} is not a file directly inside one top-level folder; "
                        "re-pack with 'e3traj pack'",
                    )
                if parts[1] in files:
                    raise _fail(where, f"member {member.name!r} appears twice; refusing the archive")
                end = member.offset_data + member.size
                if end > len(raw):
                    raise _fail(where, f"member {member.name!r} runs past the end; the archive is truncated")
                files[parts[1]] = view[member.offset_data : end]
    except InputError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError, IndexError, KeyError) as exc:
        raise _unreadable(where, exc) from None
    if top is None:
        raise _fail(where, "the archive is empty; re-pack the bundle with 'e3traj pack'")
    return Archive(top=top, files=files)
