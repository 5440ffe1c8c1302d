"""Safe file output: write to a temporary sibling, then rename; never overwrite an input or anything but a file.

Rules every output follows:

* the data goes to a temporary file beside the target and is renamed into place only when complete, so an error,
  an interrupt or a full disk leaves the old target (or none) and no temporary file;
* without ``--force`` the final step itself refuses an existing target (``renameat2(RENAME_NOREPLACE)`` or a hard
  link, which fail when the name exists), so a file that appears while the output is written is kept, not
  replaced;
* ``--force`` replaces regular files only (a bundle folder for folder outputs): FIFOs, devices, sockets, symlinks
  and folders are refused, also when one appears at the target in the meantime;
* outputs of several files (:func:`atomic_outputs`) are all-or-nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ._errors import UsageError

__all__ = [
    "atomic_output",
    "atomic_outputs",
    "atomic_output_dir",
    "check_output_path",
    "replacing",
    "sha256_file",
]

#: What ``atomic_output(replace=None)`` does: a command sets it from its ``--force`` with :func:`replacing`.
_REPLACE: contextvars.ContextVar[bool] = contextvars.ContextVar("e3traj_replace_outputs", default=True)


@contextlib.contextmanager
def replacing(flag: bool) -> Iterator[None]:
    """Within the block, outputs written with ``replace=None`` replace an existing file only if ``flag``."""
    token = _REPLACE.set(bool(flag))
    try:
        yield
    finally:
        _REPLACE.reset(token)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _refuse_non_file(out: Path, *, folder: bool = False) -> None:
    """Refuse a target that exists and is not what ``--force`` may replace: a regular file, or for folder outputs a
    bundle folder (a real folder holding ``manifest.json``), never any other folder."""
    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        return
    except OSError:
        return  # the write itself reports it
    ok = stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode)
    if ok and folder and not (out / "manifest.json").is_file():
        raise UsageError(
            f"{out}: is a folder but not a bundle (no manifest.json); --force replaces bundle folders only, "
            "choose another output path"
        )
    if not ok:
        replaces = "bundle folders" if folder else "regular files"
        raise UsageError(f"{out}: is {_kind(mode)}; --force replaces {replaces} only, choose another output path")


def check_output_path(
    output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *, force: bool = True
) -> Path:
    """Refuse an output path that is one of the inputs, sits in a missing or unwritable folder, exists without
    force, or exists as anything but a regular file.

    Returns the output as a :class:`~pathlib.Path`. Raises :class:`UsageError` with a one-line message. This is
    the early check; the final rename checks again (see the module docstring).
    """
    out = Path(output)
    for inp in inputs:
        if inp is None:
            continue
        try:
            same = out.resolve() == Path(inp).resolve()
        except OSError:
            same = False
        if same:
            raise UsageError(
                f"{out}: the output path is also an input; choose another output path (inputs are never overwritten)"
            )
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{out}: folder {parent} does not exist; create it or choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{out}: folder {parent} is not writable; choose another output path")
    if os.path.lexists(out) and not force:
        raise UsageError(f"{out}: already exists; pass --force to replace it or choose another output path")
    _refuse_non_file(out)
    return out


# ---------------------------------------------------------------------------------------------- the final step

_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def _exists_error(final: Path) -> UsageError:
    return UsageError(
        f"{final}: appeared while the output was being written and was kept; pass --force to replace it or "
        "choose another output path"
    )


def _rename_noreplace(src: Path, final: Path) -> None:
    """Rename ``src`` to ``final``, failing when ``final`` exists: atomically where the system can."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(final), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise _exists_error(final)
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(final))
    if src.is_file() and not src.is_symlink():
        try:
            os.link(src, final)  # fails when final exists
        except FileExistsError:
            raise _exists_error(final) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
        else:
            os.unlink(src)
            return
    if os.path.lexists(final):  # last resort on file systems with neither: check, then rename
        raise _exists_error(final)
    os.rename(src, final)


def _place(tmp: Path, final: Path, *, replace: bool, folder: bool = False) -> None:
    if replace:
        _refuse_non_file(final, folder=folder)
        if folder and final.is_dir() and not final.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.replace(final, old / final.name)
            try:
                _rename_noreplace(tmp, final)
            except BaseException:
                try:
                    os.replace(old / final.name, final)
                except OSError:  # keep the old bundle where it is and say where
                    raise UsageError(
                        f"{final}: could not be replaced nor put back; the previous bundle is kept in {old}"
                    ) from None
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    else:
        _rename_noreplace(tmp, final)


def _temp_file(final: Path, suffix: str | None) -> Path:
    parent = final.parent if str(final.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=suffix if suffix is not None else final.suffix, dir=parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    return tmp_path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None, *, replace: bool | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error (or interrupt) delete it.

    ``replace=False`` refuses, at the rename, a ``path`` that exists by then (:class:`UsageError`); ``replace=True``
    replaces a regular file only; ``None`` follows :func:`replacing` (default: replace). The temporary name keeps
    the final suffix (numpy and others look at it).
    """
    final = Path(path)
    if replace is None:
        replace = _REPLACE.get()
    tmp_path = _temp_file(final, suffix)
    try:
        yield tmp_path
        _place(tmp_path, final, replace=replace)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_outputs(
    paths: Sequence[str | os.PathLike], suffix: str | None = None, *, replace: bool = True
) -> Iterator[list[Path]]:
    """Like :func:`atomic_output` for several files at once: all of them are renamed into place, or none is.

    Replaced files are moved aside first and put back when a later rename fails.
    """
    finals = [Path(p) for p in paths]
    tmps: list[Path] = []
    try:
        for f in finals:
            tmps.append(_temp_file(f, suffix))
        yield tmps
        placed: list[tuple[Path, Path | None]] = []  # (final, its moved-aside previous version)
        try:
            for tmp, final in zip(tmps, finals):
                backup = None
                if replace and os.path.lexists(final):
                    _refuse_non_file(final)
                    backup = _temp_file(final, ".old")
                    os.replace(final, backup)
                try:
                    _place(tmp, final, replace=False)
                except BaseException:
                    if backup is not None:
                        os.replace(backup, final)
                    raise
                placed.append((final, backup))
        except BaseException:
            for final, backup in reversed(placed):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, final)
                    elif final.exists():
                        final.unlink()
            raise
        for _final, backup in placed:
            if backup is not None:
                with contextlib.suppress(OSError):
                    backup.unlink()
    except BaseException:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success move it to ``path``.

    An existing ``path`` is replaced only with ``force``, only when it is a folder, and only after the new one is
    complete; without ``force`` a folder that appears meanwhile is kept.
    """
    final = Path(path)
    parent = final.parent if str(final.parent) else Path(".")
    if os.path.lexists(final) and not force:
        raise UsageError(f"{final}: already exists; pass --force to replace it or choose another output path")
    if force:
        _refuse_non_file(final, folder=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        _place(tmp, final, replace=force, folder=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
