"""Fixtures of the train tests: one torch thread, and the (network, e3nn Network) pairs of every configuration."""

from __future__ import annotations

import pytest
import torch
from _nets import CONFIGS, pair_of

from e3traj.train import FixedGraphNetwork


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny ops with 2 OpenMP threads on a busy 2-core machine are ~100x slower (spin-waits)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=sorted(CONFIGS))
def pair(request):
    return (request.param, *pair_of(request.param))


@pytest.fixture
def default_fixed() -> FixedGraphNetwork:
    return pair_of("default")[0]
