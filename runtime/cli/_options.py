"""Options and checks the host commands share: one ``--threads``, one positive-number check."""

from __future__ import annotations

import click

from .._errors import UsageError

__all__ = ["threads_option", "positive", "MAX_TRIALS", "MAX_THREADS"]

#: Caps checked before any work: random draws per symmetry case, and threads.
MAX_TRIALS = 1000
MAX_THREADS = 256

#: ``--threads`` of the commands that run a bundle (rollout, check).
threads_option = click.option(
    "--threads",
    type=int,
    default=None,
    help="Sub-batches run side by side, one onnxruntime thread each [default: all usable CPUs].",
)


def positive(option: str, value, *, integer: bool = True, zero_ok: bool = False, maximum=None) -> None:
    """Refuse a value that is not > 0 (or >= 0 with ``zero_ok``), NaN, or over ``maximum``; ``None`` passes.

    Raises:
        UsageError: one line naming the option and repeating the value.
    """
    if value is None:
        return
    if not value == value or value < 0 or (value == 0 and not zero_ok):  # NaN too
        kind = "integer" if integer else "number"
        raise UsageError(f"{option}: got {value}; pass a {'non-negative' if zero_ok else 'positive'} {kind}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{option}: {value} is over the limit of {maximum:g}; pass a smaller value")
