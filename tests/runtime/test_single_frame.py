"""The single-frame graph (``onnx.single_frame``): verified like the batched graph, run by single-start rollouts
only (a shard of a larger run, and every batched call, keep the batched graph), refused in one line when broken."""

from __future__ import annotations

import numpy as np
import pytest
from _toys import build_model, read_manifest, rehash, save_manifest

from e3traj.runtime import Bundle, InputError, UsageError, rollout, verify_bundle


def _marked_single():
    """The toy graph for batch 1 with another constant: its outputs show which graph a rollout ran."""
    from onnx import numpy_helper

    model = build_model("toy", batch=1)
    for i, init in enumerate(model.graph.initializer):
        if init.name == "k_centroid":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(0.02, np.float32), "k_centroid"))
    return model


def _manual(session, x0: np.ndarray, steps: int) -> np.ndarray:
    """Step ``x0 (B, 12, 3)`` by ``session`` as the toy's displacement rule does (float32 in, float64 sums)."""
    x, out = x0.copy(), [x0.copy()]
    for _ in range(steps):
        x = x + session.run(None, {"positions": x.astype(np.float32)})[0]
        out.append(x)
    return np.stack(out)


def test_a_single_start_rollout_runs_the_single_frame_graph(make_bundle):
    x0 = np.random.default_rng(0).normal(size=(2, 12, 3))
    with Bundle.open(make_bundle(single_frame=_marked_single())) as b:
        assert b.has_single_frame
        one = rollout(b, x0[:1], 5)
        np.testing.assert_array_equal(one.traj, _manual(b.single_frame_session(), x0[:1], 5))
        # a shard of one start of a 2-start run, and the 2-start run itself, use the batched graph
        shard = rollout(b, x0[:1], 5, run_starts=2)
        both = rollout(b, x0, 5)
        np.testing.assert_array_equal(shard.traj, _manual(b._session, x0[:1], 5))
        np.testing.assert_array_equal(both.traj, _manual(b._session, x0, 5))
        assert not np.array_equal(one.traj, shard.traj)  # the premise: the marked graph differs
        # Bundle.predict and step never use it
        np.testing.assert_array_equal(
            b.step(x0[:1]), x0[:1] + b._session.run(None, {"positions": x0[:1].astype(np.float32)})[0]
        )


def test_without_a_single_frame_graph_a_single_start_uses_the_batched_graph(toy_bundle):
    x0 = np.random.default_rng(1).normal(size=(1, 12, 3))
    with Bundle.open(toy_bundle) as b:
        assert not b.has_single_frame
        np.testing.assert_array_equal(rollout(b, x0, 4).traj, _manual(b._session, x0, 4))
        with pytest.raises(UsageError, match="no single-frame graph"):
            b.single_frame_session()


def test_run_starts_below_the_batch_is_refused(make_bundle, one_line):
    with Bundle.open(make_bundle(single_frame=True)) as b:
        with pytest.raises(UsageError) as e:
            rollout(b, np.zeros((2, 12, 3)), 3, run_starts=1)
        one_line(e, "run_starts: got 1", "(>= 2)")


def test_a_modified_single_frame_graph_is_refused_before_parsing(make_bundle, one_line):
    folder = make_bundle(single_frame=True)
    data = bytearray((folder / "model_single.onnx").read_bytes())
    data[-3] ^= 0x01
    (folder / "model_single.onnx").write_bytes(bytes(data))
    with pytest.raises(InputError) as e:
        verify_bundle(folder)
    one_line(e, "model_single.onnx", "sha256", "re-copy the bundle")


def test_a_single_frame_file_that_is_not_onnx_is_refused(make_bundle, one_line):
    folder = make_bundle(single_frame=True)
    (folder / "model_single.onnx").write_bytes(b"not a model")
    rehash(folder)
    with pytest.raises(InputError) as e:
        Bundle.open(folder)
    one_line(e, "model_single.onnx", "not a valid ONNX model", "re-export")


def test_a_single_frame_graph_with_a_dynamic_batch_is_refused_at_first_use(make_bundle, one_line):
    folder = make_bundle(single_frame=build_model("toy"))  # batch 'batch', not 1
    with Bundle.open(folder) as b:
        with pytest.raises(InputError) as e:
            rollout(b, np.zeros((1, 12, 3)), 2)
        one_line(e, "model_single.onnx", "the single-frame graph takes 1")


@pytest.mark.parametrize(
    "entry, fragment",
    [
        ({"file": "model_single.onnx"}, "expected {'file': ..., 'batch': 1}"),
        ({"file": "model_single.onnx", "batch": 2}, "expected {'file': ..., 'batch': 1}"),
        ("model_single.onnx", "expected {'file': ..., 'batch': 1}"),
        ({"file": "missing.onnx", "batch": 1}, "is not a listed file of its own"),
        ({"file": "model_single.onnx", "batch": True}, "expected {'file': ..., 'batch': 1}"),
        ({"file": "model.onnx", "batch": 1}, "is not a listed file of its own"),
        ({"file": "example.npz", "batch": 1}, "is not a listed file of its own"),
        ({"file": "model_single.onnx", "batch": 1, "opset": "18"}, "onnx.single_frame.opset is '18'"),
        # each graph is checked against its own entry (the two exporters write different IR versions)
        ({"file": "model_single.onnx", "batch": 1, "ir_version": 99}, "onnx.single_frame.ir_version 99"),
    ],
)
def test_a_bad_single_frame_entry_is_one_line(make_bundle, one_line, entry, fragment):
    folder = make_bundle(single_frame=True)
    manifest = read_manifest(folder)
    manifest["onnx"]["single_frame"] = entry
    save_manifest(folder, manifest)
    with pytest.raises(InputError) as e:
        verify_bundle(folder)
    one_line(e, "onnx.single_frame", fragment)


def test_check_runs_every_case_on_the_single_frame_graph_too(make_bundle):
    from e3traj.runtime._equivariance import check_bundle

    with Bundle.open(make_bundle(single_frame=True)) as b:
        report = check_bundle(b)
    names = [c.case for c in report.cases]
    assert report.passed and "single-frame example" in names
    rows = report.table().splitlines()
    assert len({r.index(" PASS") for r in rows[2:-1]}) == 1  # one column for both graphs' rows
    assert sum(n.startswith("single-frame ") for n in names) == len(names) // 2 >= 6


@pytest.mark.parametrize(
    "graph, failing",
    [
        (_marked_single, ["single-frame example"]),  # equivariant, but not the exported function
        (lambda: build_model("baseline", batch=1), ["single-frame rotation", "single-frame translation"]),
    ],
    ids=["other-function", "not-equivariant"],
)
def test_check_fails_a_wrong_single_frame_graph(make_bundle, graph, failing):
    """Negative controls: the batched graph passes, the single-frame graph's rows fail."""
    from e3traj.runtime._equivariance import check_bundle

    with Bundle.open(make_bundle(single_frame=graph())) as b:
        report = check_bundle(b)
    assert not report.passed
    assert all(f.startswith("single-frame ") for f in report.failed)
    assert set(failing) <= set(report.failed)


def test_predict_single_frame_runs_frame_by_frame(make_bundle):
    x = np.random.default_rng(2).normal(size=(3, 12, 3))
    with Bundle.open(make_bundle(single_frame=True)) as b:
        np.testing.assert_allclose(b.predict_single_frame({"positions": x}), b.predict({"positions": x}), atol=1e-6)
        with pytest.raises(UsageError, match="shape"):
            b.predict_single_frame({"positions": x[:, :5]})


def test_inspect_and_bench_name_the_single_frame_graph(cli, make_bundle):
    folder = make_bundle(single_frame=True)
    r = cli("inspect", folder)
    assert r.exit_code == 0 and "single      model_single.onnx (batch 1" in r.output
    r = cli("bench", folder, "--batch-sizes", "1", "--threads", "1", "--repeats", "1", "--seconds", "0.01",
            "--rollout-steps", "3", "--roofline-seconds", "0.01")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "rollout   runs the single-frame graph (model_single.onnx" in r.output
