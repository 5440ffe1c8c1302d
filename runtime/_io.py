"""Safe file output: write to a temporary sibling, then rename; never overwrite an input."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ._errors import UsageError

__all__ = ["atomic_output", "atomic_output_dir", "check_output_path", "sha256_file"]


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


def check_output_path(
    output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *, force: bool = True
) -> Path:
    """Refuse an output path that is one of the inputs, sits in a missing or unwritable folder, or exists without force.

    Returns the output as a :class:`~pathlib.Path`. Raises :class:`UsageError` with a one-line message.
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
    if out.exists() and not force:
        raise UsageError(f"{out}: already exists; pass --force to replace it or choose another output path")
    return out


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error delete it.

    The temporary name keeps the final suffix (numpy and others look at it).
    """
    final = Path(path)
    parent = final.parent if str(final.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=suffix if suffix is not None else final.suffix, dir=parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success move it to ``path``.

    An existing ``path`` is replaced only with ``force`` (and only after the new one is complete).
    """
    final = Path(path)
    parent = final.parent if str(final.parent) else Path(".")
    if final.exists() and not force:
        raise UsageError(f"{final}: already exists; pass --force to replace it or choose another output path")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
