"""The work a model does (runtime/_flops.py): MatMul/Gemm FLOPs per frame from the graph, the manifest's
reference FLOPs and the matmul roofline's report (its speed is never asserted)."""

from __future__ import annotations

import numpy as np
import pytest

from e3traj.runtime._errors import InputError, UsageError
from e3traj.runtime._flops import matmul_flops_per_frame, matmul_roofline_detail, reference_flops


def _tiny_graph() -> bytes:
    """positions (B, 12, 3) -> h = positions @ W1 (3, 8), the Gram matrix h @ h^T, and a Gemm (transA) on h.

    MatMul work per frame: 2*12*3*8 (embed, a constant operand) + 2*12*12*8 (two computed operands, unnamed)
    + 2*12*8*4 (Gemm of the 12 rows of h with W2 (8, 4), given transposed) = 576 + 2304 + 768 = 3648.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(3, 8)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "W2"),
        numpy_helper.from_array(np.array([-1, 8], dtype=np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("MatMul", ["positions", "W1"], ["h"], name="embed"),
        helper.make_node("Transpose", ["h"], ["hT"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["h", "hT"], ["gram"]),
        helper.make_node("Reshape", ["h", "flat"], ["rows"]),
        helper.make_node("Transpose", ["rows"], ["cols"], perm=[1, 0]),
        helper.make_node("Gemm", ["cols", "W2"], ["proj"], transA=1),
    ]

    def vi(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    outputs = [vi("gram", ["batch", 12, 12]), vi("proj", ["rows", 4])]
    graph = helper.make_graph(nodes, "tiny", [vi("positions", ["batch", 12, 3])], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_flops_are_counted_from_the_graph_without_onnx(baseline_bundle):
    # the toy baseline is y = x @ W + b with x (B, 12, 3) and W (3, 3): 2 * 12 * 3 * 3 FLOPs per frame
    assert matmul_flops_per_frame(baseline_bundle / "model.onnx") == 216.0


def test_flops_of_a_known_tiny_graph():
    assert matmul_flops_per_frame(_tiny_graph()) == 576.0 + 2304.0 + 768.0


@pytest.mark.parametrize("data", [b"", b"\xff" * 16, b"hello"], ids=["empty", "bad-varint", "bad-wire-type"])
def test_a_file_that_is_not_onnx_is_an_input_error(data, one_line):
    with pytest.raises(InputError) as e:
        matmul_flops_per_frame(data, where="x.onnx")
    one_line(e, "x.onnx: not a valid ONNX model", "re-export the bundle")


def test_reference_flops_only_from_a_positive_finite_manifest_value():
    assert reference_flops({"model": {"reference_flops_per_frame": 5.0e6}}) == 5.0e6
    for manifest in ({}, {"model": []}, *({"model": {"reference_flops_per_frame": v}} for v in (None, True, -1, "5"))):
        assert reference_flops(manifest) is None
    assert reference_flops({"model": {"reference_flops_per_frame": float("inf")}}) is None


def test_the_roofline_reports_every_shape_and_refuses_bad_settings():
    detail = matmul_roofline_detail(0.01, 1, shapes=((16, 8, 4), (8, 8, 8)))
    assert [p["shape"] for p in detail["per_shape"]] == [(16, 8, 4), (8, 8, 8)]
    assert detail["gflops"] == max(p["gflops"] for p in detail["per_shape"]) > 0
    assert detail["threads"] == 1 and "OPENBLAS_NUM_THREADS" in detail["pinned_by"]
    for seconds, threads, fragment in ((0, 1, "seconds"), (float("nan"), 1, "seconds"), (1, 0, "threads")):
        with pytest.raises(UsageError, match=f"roofline {fragment}"):
            matmul_roofline_detail(seconds, threads)
    with pytest.raises(UsageError, match="roofline threads: got True"):
        matmul_roofline_detail(1, True)
