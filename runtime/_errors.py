"""Errors that the command line turns into one line and a distinct exit code (never a traceback)."""

__all__ = [
    "E3TrajError",
    "UsageError",
    "InputError",
    "CheckFailed",
    "RolloutIncomplete",
    "MissingExtra",
    "EXIT_INTERNAL",
    "EXIT_USAGE",
    "EXIT_INPUT",
    "EXIT_CHECK",
    "EXIT_INCOMPLETE",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "one_line",
    "first_line",
]

import unicodedata

#: Exit codes. 2 is also what click uses for bad options; 1 is an internal error (a bug of e3traj).
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_CHECK = 4
EXIT_INCOMPLETE = 5
#: Interrupted by SIGINT (Ctrl-C) or SIGTERM: 128 + the signal number, as shells report it. Temporary files and
#: folders are removed; outputs that were not complete are not left behind.
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none (for one-line errors)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def one_line(text: object) -> str:
    """``text`` as one printable line: newlines, escape sequences and other control or format characters are
    shown escaped (``\\n``, ``\\x1b``, ``\\u202e``), so a file name cannot break a message or drive the terminal."""
    out = []
    for ch in str(text):
        if ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


class E3TrajError(Exception):
    """Base class: a user-facing error whose message is one line that names the file, the problem and the fix."""

    exit_code = 1


class UsageError(E3TrajError, ValueError):
    """The command was called wrongly (bad option value, missing extra, output equal to input...)."""

    exit_code = EXIT_USAGE


class MissingExtra(UsageError):
    """A command needs an optional dependency group (e.g. ``pip install 'e3traj[train]'``)."""


class InputError(E3TrajError, ValueError):
    """An input file (trajectory, checkpoint, bundle) is missing, malformed or fails verification."""

    exit_code = EXIT_INPUT


class CheckFailed(E3TrajError):
    """A verification (equivariance, parity, example re-check) ran and did not pass."""

    exit_code = EXIT_CHECK


class RolloutIncomplete(E3TrajError):
    """A rollout stopped early (non-finite or out-of-bounds frame); the frames before it were kept. An interrupted
    rollout whose frames were kept too is one with ``exit_code`` 130 or 143."""

    exit_code = EXIT_INCOMPLETE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
