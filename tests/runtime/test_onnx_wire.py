"""The hand-written ONNX wire-format scan (runtime/_onnx_wire.py): external tensors are found wherever they hide."""

from __future__ import annotations

import pytest

from e3traj.runtime._onnx_wire import _ProtoError, scan_onnx


def test_scan_finds_external_tensors_in_attributes_and_subgraphs(toys):
    from onnx import TensorProto, helper

    def external(name):
        t = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
        t.ClearField("float_data")
        t.data_location = TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", "w.bin"
        return t

    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    # a Constant node whose value tensor is external
    g = helper.make_graph([helper.make_node("Constant", [], ["y"], value=external("const"))], "g", [], [out])
    scan = scan_onnx(helper.make_model(g).SerializeToString())
    assert scan.external == "const"
    # an If whose branch graph has an external initializer
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    branch = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])], "b", [], [out], initializer=[external("w")]
    )
    plain = helper.make_graph(
        [helper.make_node("Identity", ["c2"], ["y"])],
        "p",
        [],
        [out],
        initializer=[helper.make_tensor("c2", TensorProto.FLOAT, [1], [1.0])],
    )
    g2 = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=plain)], "g2", [cond], [out]
    )
    assert scan_onnx(helper.make_model(g2).SerializeToString()).external == "w"
    # and a clean model has none, with its IR version and opset read from the bytes
    clean = scan_onnx(toys.build_model("toy").SerializeToString())
    assert clean.external is None and clean.ir_version == 8 and clean.opsets[""] == 17
    with pytest.raises(_ProtoError):
        scan_onnx(b"\x3a\xff\xff\xff\xff\x0f")  # graph field claiming a 4 GB length
