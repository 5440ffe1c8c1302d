"""Options the host commands share (runtime/cli/_options.py): the caps and the positive-number check."""

from __future__ import annotations

import math

import pytest

from e3traj.runtime._errors import UsageError
from e3traj.runtime.cli._options import positive


def test_trials_and_threads_are_capped(cli, toy_bundle, cli_error):
    from e3traj.runtime.cli._options import MAX_THREADS, MAX_TRIALS

    cli_error(cli("check", toy_bundle, "--trials", 10**9), 2, "--trials", f"limit of {MAX_TRIALS}")
    cli_error(cli("check", toy_bundle, "--threads", 10**6), 2, "--threads", f"limit of {MAX_THREADS}")


def test_positive_refuses_zero_negative_nan_and_over_the_limit():
    for value, kwargs in ((None, {}), (1, {}), (0.5, {"integer": False}), (0, {"zero_ok": True}), (5, {"maximum": 5})):
        positive("--n", value, **kwargs)  # accepted: returns nothing, raises nothing
    cases = [
        (0, {}, "--n: got 0; pass a positive integer"),
        (-1, {"zero_ok": True}, "--n: got -1; pass a non-negative integer"),
        (math.nan, {"integer": False}, "--n: got nan; pass a positive number"),
        (6, {"maximum": 5}, "--n: 6 is over the limit of 5; pass a smaller value"),
    ]
    for value, kwargs, message in cases:
        with pytest.raises(UsageError) as e:
            positive("--n", value, **kwargs)
        assert str(e.value) == message
