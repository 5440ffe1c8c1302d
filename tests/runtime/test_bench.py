"""``e3traj bench`` and the runtime's fast paths: sub-batched predict, threads and the rollout stepper are exact.

No timing is asserted here: performance targets are checked by benchmarks/run.py, never by unit tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from e3traj.runtime import Bundle, rollout
from e3traj.runtime._bench import bench_bundle, bundle_size, format_rows
from e3traj.runtime._flops import matmul_flops_per_frame, reference_flops

REPO = Path(__file__).resolve().parents[2]
SIM_E3NN = REPO / "artifacts" / "sim-e3nn"
#: MatMul work (2 M N K) per frame of the committed sim-e3nn graph (radial MLPs exported as a table); torch's
#: FlopCounterMode on tabulate_radial(DisplacementModel(E3nnConfig())) counts the same 772,152 (3,117,528 with the
#: MLPs). A new graph layout (make artifacts) changes it.
SIM_E3NN_FLOPS = 772152.0
TINY = ["--repeats", "1", "--seconds", "0.02", "--rollout-steps", "2", "--roofline-seconds", "0.05"]

pytestmark = pytest.mark.skipif(not (SIM_E3NN / "manifest.json").is_file(), reason="committed bundle missing")


def _near_example(bundle: Bundle, n: int, seed: int = 0) -> np.ndarray:
    ex, _ = bundle.load_example()
    x = ex["positions"]
    rng = np.random.default_rng(seed)
    return x[np.arange(n) % len(x)] + rng.normal(scale=0.01, size=(n,) + x.shape[1:])


def test_bench_prints_a_row_per_batch_and_thread_beside_the_roofline(cli):
    result = cli("bench", SIM_E3NN, "--batch-sizes", "1,3", "--threads", "1,2", *TINY)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(ln.startswith("roofline") and "GFLOP/s" in ln for ln in lines)
    assert any(ln.startswith("work") and f"{SIM_E3NN_FLOPS / 1e6:.3f} MFLOP" in ln for ln in lines)
    predict = {(int(ln.split()[1]), int(ln.split()[2])) for ln in lines if ln.startswith("predict ")}
    assert predict == {(1, 1), (1, 3), (2, 1), (2, 3)}
    rollout_rows = [ln.split() for ln in lines if ln.startswith("rollout ")]
    assert sorted(int(r[1]) for r in rollout_rows) == [1, 2] and all(r[2] == "1" for r in rollout_rows)
    assert any(ln.startswith("scaling   2 threads vs 1 at B=3") for ln in lines)


def test_bench_json_parses_with_rows_work_and_size(cli):
    result = cli("bench", SIM_E3NN, "--batch-sizes", "2", "--threads", "1", "--json", *TINY)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["flops_per_frame"] == SIM_E3NN_FLOPS
    assert report["bundle_bytes"] == sum(f.stat().st_size for f in SIM_E3NN.iterdir())
    assert report["roofline"]["gflops"] > 0 and len(report["roofline"]["per_shape"]) == 3
    assert [(r["mode"], r["threads"], r["batch"]) for r in report["rows"]] == [("predict", 1, 2), ("rollout", 1, 1)]
    for row in report["rows"]:
        assert row["frames_per_s"] > 0 and row["latency_ms"] > 0
        assert row["roofline_fraction"] == pytest.approx(
            row["frames_per_s"] * row["flops_per_frame"] / 1e9 / report["roofline"]["gflops"]
        )
    assert report["machine"]["cores"] >= 1 and report["machine"]["onnxruntime"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--batch-sizes", "1,x"], "--batch-sizes"),
        (["--threads", "0"], "--threads"),
        (["--repeats", "0"], "--repeats"),
    ],
)
def test_bench_refuses_bad_options_in_one_line(cli, cli_error, args, fragment):
    cli_error(cli("bench", SIM_E3NN, *args), 2, fragment)


def test_bench_on_a_missing_bundle_is_an_input_error(cli, cli_error, tmp_path):
    cli_error(cli("bench", tmp_path / "nope", *TINY), 3, "not found")


def test_bench_gives_the_roofline_fraction_by_e3nns_work_from_the_manifest(cli):
    result = cli("bench", SIM_E3NN, "--batch-sizes", "2", "--threads", "1", "--json", *TINY)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    ref = json.loads((SIM_E3NN / "manifest.json").read_text())["model"]["reference_flops_per_frame"]
    assert report["reference_flops_per_frame"] == ref == 5032080.0  # e3nn's Network, FlopCounterMode, at export
    for row in report["rows"]:
        assert row["reference_roofline_fraction"] == pytest.approx(
            row["frames_per_s"] * ref / 1e9 / report["roofline"]["gflops"]
        )
        assert row["reference_roofline_fraction"] > row["roofline_fraction"]  # the graph does less MatMul work
    text = cli("bench", SIM_E3NN, "--batch-sizes", "2", "--threads", "1", *TINY).output
    assert "(e3nn)" in text and any(ln.startswith("reference 5.032 MFLOP") for ln in text.splitlines())


def test_reference_flops_only_from_a_positive_finite_manifest_value(baseline_bundle):
    assert reference_flops({"model": {"reference_flops_per_frame": 5.0e6}}) == 5.0e6
    for manifest in ({}, {"model": []}, *({"model": {"reference_flops_per_frame": v}} for v in (None, True, -1, "5"))):
        assert reference_flops(manifest) is None
    assert reference_flops({"model": {"reference_flops_per_frame": float("inf")}}) is None
    rows = bench_bundle(
        baseline_bundle, batch_sizes=(2,), threads=(1,), repeats=1, seconds=0.01, rollout_steps=0, roofline=10.0
    )
    assert rows[0]["reference_flops_per_frame"] is None and rows[0]["reference_roofline_fraction"] is None
    assert "(e3nn)" not in format_rows(rows)


def test_flops_are_counted_from_the_graph_without_onnx(baseline_bundle):
    # the toy baseline is y = x @ W + b with x (B, 12, 3) and W (3, 3): 2 * 12 * 3 * 3 FLOPs per frame
    assert matmul_flops_per_frame(baseline_bundle / "model.onnx") == 216.0


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
        x = _near_example(b1, 200)
        whole = b1.predict({"positions": x}, chunk=len(x))
        tol = 1e-6 * float(np.abs(whole).max())
        assert tol > 0
        for chunk in (None, 16, 48, 64):
            np.testing.assert_allclose(b1.predict({"positions": x}, chunk=chunk), whole, rtol=0, atol=tol)
        np.testing.assert_allclose(b2.predict({"positions": x}), whole, rtol=0, atol=tol)  # on two threads
        np.testing.assert_allclose(b2.predict({"positions": x[:37]}, chunk=16), whole[:37], rtol=0, atol=tol)
        assert b2.threads == 2


def test_rollout_stepper_matches_bundle_step_exactly(velocity_bundle):
    with Bundle.open(SIM_E3NN, threads=2) as b:
        for n in (1, 40):  # one sub-batch (IOBinding into buffers bound once) and several sub-batches
            x0 = _near_example(b, n, seed=1)
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


def test_predict_refuses_a_bad_chunk(one_line):
    from e3traj.runtime._errors import UsageError

    with Bundle.open(SIM_E3NN, threads=1) as b, pytest.raises(UsageError) as e:
        b.predict({"positions": np.zeros((2, 12, 3))}, chunk=0)
    one_line(e, "chunk", "0")
