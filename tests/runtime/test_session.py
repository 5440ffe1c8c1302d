"""onnxruntime sessions of bundles (runtime/_session.py): load failures and fixed batches are one-line errors."""

from __future__ import annotations

import pytest
from _toys import read_manifest, rehash, save_manifest

from e3traj.runtime import Bundle, verify_bundle
from e3traj.runtime._errors import InputError


def test_onnxruntime_load_failure_is_one_line(make_bundle, one_line, toys):
    path = make_bundle("toy", model=toys.build_model("toy", opset=99))
    m = read_manifest(path)
    m["onnx"]["opset"] = 99
    save_manifest(path, m)
    rehash(path)
    verify_bundle(path)  # the files are intact; only onnxruntime can tell
    with pytest.raises(InputError) as e:
        Bundle.open(path)
    one_line(e, "model.onnx", "cannot load", "opset 99")


def test_a_fixed_batch_dimension_is_refused(make_bundle, one_line, toys):
    path = make_bundle("toy", model=toys.build_model("toy", batch=1))
    with pytest.raises(InputError) as e:
        Bundle.open(path)
    one_line(e, "model.onnx", "fixed batch size 1")
