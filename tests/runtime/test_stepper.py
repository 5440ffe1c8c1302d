"""The rollout's fast step (runtime/_stepper.py): the same bits as ``Bundle.step``, from buffers allocated once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _toys import near_example

from e3traj.runtime import Bundle, rollout
from e3traj.runtime._errors import InputError, UsageError
from e3traj.runtime._session import CHUNK
from e3traj.runtime._stepper import make_stepper

REPO = Path(__file__).resolve().parents[2]
SIM_E3NN = REPO / "artifacts" / "sim-e3nn"


@pytest.mark.parametrize("batch", [3, CHUNK + 8], ids=["bound-sub-batch", "sub-batched"])
@pytest.mark.parametrize("kind", ["toy", "baseline"])  # meanings displacement and next_positions
def test_the_stepper_writes_what_step_returns(make_bundle, kind, batch):
    rng = np.random.default_rng(4)
    with Bundle.open(make_bundle(kind)) as b:
        step_into = make_stepper(b, batch)
        out = np.full((batch, 12, 3), np.nan)
        for _ in range(3):  # the buffers are reused: each call follows its own x
            x = rng.normal(size=(batch, 12, 3))
            step_into(x, None, out)
            np.testing.assert_array_equal(out, b.step(x))
        assert out.dtype == np.float64


def test_a_closed_bundle_has_no_stepper(toy_bundle, one_line):
    b = Bundle.open(toy_bundle)
    b.close()
    with pytest.raises(UsageError) as e:
        make_stepper(b, 1)
    one_line(e, "bundle is closed")


def test_a_model_ignoring_the_batch_fails_the_bound_step_in_one_line(make_bundle, toys, one_line):
    with Bundle.open(make_bundle("toy", "fixed-batch", model=toys.build_fixed_batch_model(8))) as b:
        step_into = make_stepper(b, 3)
        with pytest.raises(InputError) as e:
            step_into(np.ones((3, 12, 3)), None, np.empty((3, 12, 3)))
    one_line(e, "fixed-batch", "the model did not return (3, 12, 3)")


@pytest.mark.skipif(not (SIM_E3NN / "manifest.json").is_file(), reason="committed bundle missing")
def test_rollout_stepper_matches_bundle_step_exactly(velocity_bundle):
    with Bundle.open(SIM_E3NN, threads=2) as b:
        for n in (1, 40):  # one sub-batch (IOBinding into buffers bound once) and several sub-batches
            x0 = near_example(b, n, seed=1)
            res = rollout(b, x0, 5)
            x = x0.copy()
            for k in range(1, 6):
                x = b.step(x)
                np.testing.assert_array_equal(res.traj[k], x)
            assert not np.array_equal(res.traj[5], res.traj[4])  # the bound input really follows the state
    with Bundle.open(velocity_bundle) as b:  # two model inputs and a velocity_correction output
        rng = np.random.default_rng(2)
        prev, x = rng.normal(size=(3, 12, 3)), rng.normal(size=(3, 12, 3))
        res = rollout(b, x, 4, previous=prev)
        for k in range(1, 5):
            prev, x = x, b.step(x, prev)
            np.testing.assert_array_equal(res.traj[k], x)


@pytest.mark.parametrize("batch", [3, CHUNK + 8], ids=["bound-sub-batch", "sub-batched"])
@pytest.mark.parametrize("kind", ["velocity", "history"])  # velocity_correction and ar_correction
def test_the_stepper_writes_what_step_returns_with_the_past(make_bundle, kind, batch):
    rng = np.random.default_rng(5)
    with Bundle.open(make_bundle(kind)) as b:
        h = b.history
        step_into = make_stepper(b, batch)
        out = np.full((batch, 12, 3), np.nan)
        for _ in range(3):
            frames = np.cumsum(rng.normal(scale=0.05, size=(h + 1, batch, 12, 3)), axis=0)
            x, past = frames[-1], frames[:-1]  # past: (h, B, 12, 3) rows, as the rollout holds them
            step_into(x, past, out)
            np.testing.assert_array_equal(out, b.step(x, np.swapaxes(past, 0, 1)))
