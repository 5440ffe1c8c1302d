"""The runtime's benchmark rows (runtime/_bench.py) and its fast paths: sub-batched predict and threads are exact.

No timing is asserted here: performance targets are checked by benchmarks/run.py, never by unit tests.
``e3traj bench`` itself: tests/runtime/cli/test_cli_bench.py; the rollout stepper: test_stepper.py; FLOPs:
test_flops.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _toys import near_example

from e3traj.runtime import Bundle
from e3traj.runtime._bench import bench_bundle, bundle_size, format_rows

REPO = Path(__file__).resolve().parents[2]
SIM_E3NN = REPO / "artifacts" / "sim-e3nn"

pytestmark = pytest.mark.skipif(not (SIM_E3NN / "manifest.json").is_file(), reason="committed bundle missing")


def test_bench_rows_of_a_bundle_without_reference_flops(baseline_bundle):
    rows = bench_bundle(
        baseline_bundle, batch_sizes=(2,), threads=(1,), repeats=1, seconds=0.01, rollout_steps=0, roofline=10.0
    )
    assert rows[0]["reference_flops_per_frame"] is None and rows[0]["reference_roofline_fraction"] is None
    assert "(e3nn)" not in format_rows(rows)


def test_bench_bundle_rows_without_rollout(baseline_bundle):
    rows = bench_bundle(
        baseline_bundle, batch_sizes=(5,), threads=(1,), repeats=1, seconds=0.01, rollout_steps=0, roofline=10.0
    )
    assert len(rows) == 1 and rows[0]["mode"] == "predict" and rows[0]["batch"] == 5
    assert rows[0]["bundle_bytes"] == bundle_size(baseline_bundle) and rows[0]["flops_per_frame"] == 216.0


def test_sub_batched_predict_equals_the_whole_batch():
    # bit-identical on the project machines; onnxruntime's kernels may round batch shapes differently on other
    # CPUs, so the test allows float32 rounding (1e-6 of the output's scale) and no more
    with Bundle.open(SIM_E3NN, threads=1) as b1, Bundle.open(SIM_E3NN, threads=2) as b2:
        x = near_example(b1, 200)
        whole = b1.predict({"positions": x}, chunk=len(x))
        tol = 1e-6 * float(np.abs(whole).max())
        assert tol > 0
        for chunk in (None, 16, 48, 64):
            np.testing.assert_allclose(b1.predict({"positions": x}, chunk=chunk), whole, rtol=0, atol=tol)
        np.testing.assert_allclose(b2.predict({"positions": x}), whole, rtol=0, atol=tol)  # on two threads
        np.testing.assert_allclose(b2.predict({"positions": x[:37]}, chunk=16), whole[:37], rtol=0, atol=tol)
        assert b2.threads == 2


def test_predict_refuses_a_bad_chunk(one_line):
    from e3traj.runtime._errors import UsageError

    with Bundle.open(SIM_E3NN, threads=1) as b, pytest.raises(UsageError) as e:
        b.predict({"positions": np.zeros((2, 12, 3))}, chunk=0)
    one_line(e, "chunk", "0")
