"""``e3traj bench`` (runtime/cli/_bench.py): the table and the JSON report beside the roofline, option checks.

No timing is asserted here: performance targets are checked by benchmarks/run.py, never by unit tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SIM_E3NN = REPO / "artifacts" / "sim-e3nn"
#: MatMul work (2 M N K) per frame of the committed sim-e3nn graph (radial MLPs exported as a table); torch's
#: FlopCounterMode on tabulate_radial(DisplacementModel(E3nnConfig())) counts the same 772,152 (3,117,528 with the
#: MLPs). A new graph layout (make artifacts) changes it.
SIM_E3NN_FLOPS = 772152.0
TINY = ["--repeats", "1", "--seconds", "0.02", "--rollout-steps", "2", "--roofline-seconds", "0.05"]

needs_sim_e3nn = pytest.mark.skipif(not (SIM_E3NN / "manifest.json").is_file(), reason="committed bundle missing")


@needs_sim_e3nn
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


@needs_sim_e3nn
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


@needs_sim_e3nn
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


@needs_sim_e3nn
def test_bench_on_a_missing_bundle_is_an_input_error(cli, cli_error, tmp_path):
    cli_error(cli("bench", tmp_path / "nope", *TINY), 3, "not found")


@needs_sim_e3nn
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


def test_bench_batch_sizes_are_capped_before_allocation(cli, toy_bundle, cli_error):
    from e3traj.runtime.cli._bench import MAX_BATCH

    cli_error(cli("bench", toy_bundle, "--batch-sizes", "100000000"), 2, "--batch-sizes", f"limit of {MAX_BATCH}")
