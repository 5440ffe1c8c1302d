"""Bundle manifest writing, verification before any model is parsed, and the runtime model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from e3traj.runtime import Bundle, verify_bundle, write_manifest
from e3traj.runtime._errors import CheckFailed, InputError, UsageError
from e3traj.runtime._onnx_wire import _ProtoError, scan_onnx
from e3traj.runtime._session import CHUNK


def _frames(batch: int, seed: int = 0) -> np.ndarray:
    """Random chains: a zig-zag plus noise, shifted per row. Shapes: (batch, 12, 3)."""
    rng = np.random.default_rng(seed)
    base = np.stack([np.arange(12) * 0.9, 0.4 * (np.arange(12) % 2), np.zeros(12)], axis=-1)
    return base + rng.normal(scale=0.1, size=(batch, 12, 3)) + rng.normal(size=(batch, 1, 3))


def rehash(path):
    """Re-list the files in the manifest, so only checks deeper than the hashes can catch a tampered file."""
    return write_manifest(path, _manifest(path))


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _save_manifest(path, manifest):
    (path / "manifest.json").write_text(json.dumps(manifest))


# --------------------------------------------------------------------------------------------- write_manifest


def test_write_manifest_lists_every_file_with_hash_and_size(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"hello")
    (tmp_path / "b.txt").write_bytes(b"")
    (tmp_path / "manifest.json").write_text("{}")  # an old manifest is never listed
    out = write_manifest(tmp_path, {"inputs": []})
    assert out["format"] == "e3traj-bundle" and out["format_version"] == 1
    assert out["files"] == {
        "a.bin": {"sha256": hashlib.sha256(b"hello").hexdigest(), "size": 5},
        "b.txt": {"sha256": hashlib.sha256(b"").hexdigest(), "size": 0},
    }
    text = (tmp_path / "manifest.json").read_text()
    assert json.loads(text) == out
    assert text == json.dumps(out, sort_keys=True, indent=2) + "\n"
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.txt", "manifest.json"]  # no temp file left


def test_write_manifest_keeps_an_explicit_format_and_accepts_numpy_scalars(tmp_path):
    (tmp_path / "x").write_bytes(b"1")
    out = write_manifest(tmp_path, {"format_version": 1, "metric": np.float32(0.5), "dims": np.arange(2)})
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["metric"] == 0.5 and data["dims"] == [0, 1] and out["format"] == "e3traj-bundle"


def test_write_manifest_refuses_subfolders_and_symlinks(tmp_path, one_line):
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError) as e:
        write_manifest(tmp_path, {})
    one_line(e, "sub", "folder")
    (tmp_path / "sub").rmdir()
    (tmp_path / "real").write_bytes(b"x")
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(InputError) as e:
        write_manifest(tmp_path, {})
    one_line(e, "link", "symlink")
    assert not (tmp_path / "manifest.json").exists()


# --------------------------------------------------------------------------------------------- verify: good


@pytest.mark.parametrize("kind", ["toy", "baseline", "velocity", "blowup"])
def test_verify_accepts_a_fresh_bundle(make_bundle, kind):
    path = make_bundle(kind)
    manifest = verify_bundle(path)
    assert (
        manifest["outputs"][0]["meaning"]
        == {
            "toy": "displacement",
            "baseline": "next_positions",
            "velocity": "velocity_correction",
            "blowup": "displacement",
        }[kind]
    )
    assert set(manifest["files"]) == {"model.onnx", "example.npz"}


def test_bundle_properties(toy_bundle, velocity_bundle, baseline_bundle):
    with Bundle.open(toy_bundle) as b:
        assert b.kind == "e3nn" and b.equivariant is True and b.output_meaning == "displacement"
        assert [i["name"] for i in b.inputs] == ["positions"]
        assert b.needs_previous is False
        assert b.sha256 == hashlib.sha256((toy_bundle / "manifest.json").read_bytes()).hexdigest()
        assert b.path == toy_bundle and b.manifest["model"]["num_nodes"] == 12
    with Bundle.open(velocity_bundle, threads=1) as b:
        assert b.input_meanings == {"positions": "positions", "previous_displacement": "previous_displacement"}
        assert b.needs_previous is True and b.kind == "e3nn-velocity"
    with Bundle.open(baseline_bundle) as b:
        assert b.equivariant is False and b.output_meaning == "next_positions"


# --------------------------------------------------------------------------------------------- predict / step


def test_predict_matches_the_graph_in_float64_and_chunks_big_batches(toy_bundle, toys):
    x = _frames(CHUNK + 904)  # 5000 rows: two onnxruntime calls
    with Bundle.open(toy_bundle) as b:
        y = b.predict({"positions": x})
        assert y.dtype == np.float64 and y.shape == x.shape
        np.testing.assert_allclose(y, toys.reference("toy", x), atol=1e-7)
        # rows of the second chunk match a small batch of the same rows
        np.testing.assert_array_equal(b.predict({"positions": x[-3:]}), y[-3:])


def test_step_follows_the_output_meaning(toy_bundle, baseline_bundle, velocity_bundle, toys):
    reference = toys.reference
    x, prev = _frames(5, 1), _frames(5, 2)
    with Bundle.open(toy_bundle) as b:
        np.testing.assert_allclose(b.step(x), x + reference("toy", x), atol=1e-7)
    with Bundle.open(baseline_bundle) as b:
        np.testing.assert_allclose(b.step(x), reference("baseline", x), atol=1e-6)
    with Bundle.open(velocity_bundle) as b:
        want = x + (x - prev) + reference("velocity", x, x - prev)
        np.testing.assert_allclose(b.step(x, prev), want, atol=1e-6)
        with pytest.raises(UsageError, match="previous"):
            b.step(x)


@pytest.mark.parametrize(
    "inputs, exc, fragment",
    [
        ({"positions": np.zeros((2, 11, 3))}, UsageError, "(2, 11, 3)"),
        ({"positions": np.zeros((12, 3))}, UsageError, "(12, 3)"),
        ({"positions": np.zeros((2, 12, 4))}, UsageError, "(2, 12, 4)"),
        ({"positions": np.full((2, 12, 3), np.nan)}, InputError, "NaN"),
        ({"positions": np.zeros((2, 12, 3)), "other": np.zeros((2, 12, 3))}, UsageError, "other"),
        ({}, UsageError, "positions"),
    ],
)
def test_predict_refuses_bad_inputs(toy_bundle, inputs, exc, fragment, one_line):
    with Bundle.open(toy_bundle) as b, pytest.raises(exc) as e:
        b.predict(inputs)
    one_line(e, fragment)


def test_predict_on_a_closed_bundle_is_a_usage_error(toy_bundle):
    b = Bundle.open(toy_bundle)
    b.close()
    with pytest.raises(UsageError, match="closed"):
        b.predict({"positions": np.zeros((1, 12, 3))})


def test_recheck_example_passes_and_fails_on_a_wrong_reference(make_bundle, tmp_path):
    path = make_bundle("toy")
    with Bundle.open(path) as b:
        err = b.recheck_example()
        assert 0 <= err <= 1e-5
        with pytest.raises(CheckFailed, match="atol"):
            b.recheck_example(atol=-1.0)
    # a reference that is off by 1e-3 (re-hashed, so only the re-check can catch it)
    with np.load(path / "example.npz", allow_pickle=False) as npz:
        arrays = dict(npz)
    arrays["prediction"] = arrays["prediction"] + np.float32(1e-3)
    np.savez(path / "example.npz", **arrays)
    rehash(path)
    with Bundle.open(path) as b:
        with pytest.raises(CheckFailed) as e:
            b.recheck_example()
        assert "1e-03" in str(e.value) or "0.001" in str(e.value)
        assert b.recheck_example(atol=1e-2) == pytest.approx(1e-3, rel=1e-2)


def test_example_with_an_object_array_is_refused(make_bundle, one_line):
    path = make_bundle("toy")
    np.savez(path / "example.npz", positions=np.array([1, "a"], dtype=object), prediction=np.zeros(3))
    rehash(path)
    with Bundle.open(path) as b, pytest.raises(InputError) as e:
        b.recheck_example()
    one_line(e, "example.npz", "not numeric")


# --------------------------------------------------------------------------------------------- verify: bad


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _mut_missing_manifest(p):
    (p / "manifest.json").unlink()


def _mut_not_json(p):
    (p / "manifest.json").write_text("{not json")


def _mut_json_list(p):
    (p / "manifest.json").write_text("[]")


def _mut_format(p):
    m = _manifest(p)
    m["format"] = "something-else"
    _save_manifest(p, m)


def _mut_newer(p):
    m = _manifest(p)
    m["format_version"] = 2
    _save_manifest(p, m)


def _mut_no_inputs(p):
    m = _manifest(p)
    del m["inputs"]
    _save_manifest(p, m)


def _mut_no_onnx_file(p):
    m = _manifest(p)
    del m["onnx"]["file"]
    _save_manifest(p, m)


def _mut_no_example(p):
    m = _manifest(p)
    del m["example"]
    _save_manifest(p, m)


def _mut_bad_meaning(p):
    m = _manifest(p)
    m["outputs"][0]["meaning"] = "acceleration"
    _save_manifest(p, m)


def _mut_path_name(p):
    m = _manifest(p)
    m["files"]["../evil"] = m["files"]["model.onnx"]
    _save_manifest(p, m)


def _mut_flip_byte(p):
    _flip_byte(p / "model.onnx", 40)


def _mut_truncate(p):
    data = (p / "model.onnx").read_bytes()
    (p / "model.onnx").write_bytes(data[: len(data) // 2])


def _mut_hash_mismatch(p):
    m = _manifest(p)
    m["files"]["example.npz"]["sha256"] = "0" * 64
    _save_manifest(p, m)


def _mut_extra_file(p):
    (p / "notes.txt").write_text("hi")


def _mut_subfolder(p):
    (p / "extra").mkdir()


def _mut_missing_file(p):
    (p / "example.npz").unlink()


def _mut_symlink(p):
    target = p.parent / f"{p.name}-model-copy.onnx"
    shutil.copy(p / "model.onnx", target)
    (p / "model.onnx").unlink()
    os.symlink(target, p / "model.onnx")


def _mut_truncate_rehashed(p):
    data = (p / "model.onnx").read_bytes()
    (p / "model.onnx").write_bytes(data[: len(data) - 7])
    rehash(p)


def _mut_min_ort(p):
    m = _manifest(p)
    m["onnx"]["min_onnxruntime"] = "99.0.0"
    _save_manifest(p, m)


def _mut_opset_mismatch(p):
    m = _manifest(p)
    m["onnx"]["opset"] = 18
    _save_manifest(p, m)


BAD_BUNDLES = [
    (_mut_missing_manifest, ["manifest.json", "not found"]),
    (_mut_not_json, ["manifest.json", "not valid JSON"]),
    (_mut_json_list, ["manifest.json", "not an object"]),
    (_mut_format, ["manifest.json", "not an e3traj bundle"]),
    (_mut_newer, ["manifest.json", "upgrade e3traj"]),
    (_mut_no_inputs, ["manifest.json", "'inputs'"]),
    (_mut_no_onnx_file, ["manifest.json", "onnx.file"]),
    (_mut_no_example, ["manifest.json", "example.file"]),
    (_mut_bad_meaning, ["manifest.json", "acceleration"]),
    (_mut_path_name, ["manifest.json", "plain file name"]),
    (_mut_flip_byte, ["model.onnx", "sha256"]),
    (_mut_truncate, ["model.onnx", "size"]),
    (_mut_hash_mismatch, ["example.npz", "sha256"]),
    (_mut_extra_file, ["notes.txt", "not listed"]),
    (_mut_subfolder, ["extra", "subfolder"]),
    (_mut_missing_file, ["example.npz", "missing"]),
    (_mut_symlink, ["model.onnx", "symlink"]),
    (_mut_truncate_rehashed, ["model.onnx", "not a valid ONNX model"]),
    (_mut_min_ort, ["manifest.json", "onnxruntime >= 99.0.0", "upgrade"]),
    (_mut_opset_mismatch, ["model.onnx", "opset 17", "onnx.opset 18"]),
]


@pytest.mark.parametrize("mutate, fragments", BAD_BUNDLES, ids=[m.__name__[5:] for m, _ in BAD_BUNDLES])
def test_verify_refuses_a_bad_bundle_in_one_line(make_bundle, mutate, fragments, one_line):
    path = make_bundle("toy")
    mutate(path)
    with pytest.raises(InputError) as e:
        verify_bundle(path)
    one_line(e, *fragments)
    with pytest.raises(InputError) as e2:  # Bundle.open checks the same before creating a session
        Bundle.open(path)
    assert str(e2.value) == str(e.value)


def test_external_data_is_caught_even_when_every_hash_matches(make_bundle, one_line):
    path = make_bundle("baseline", external_data=True)
    assert set(_manifest(path)["files"]) == {"model.onnx", "example.npz", "weights.bin"}
    with pytest.raises(InputError) as e:
        verify_bundle(path)
    one_line(e, "model.onnx", "external data", "'W'")


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


def test_onnxruntime_load_failure_is_one_line(make_bundle, one_line, toys):
    path = make_bundle("toy", model=toys.build_model("toy", opset=99))
    m = _manifest(path)
    m["onnx"]["opset"] = 99
    _save_manifest(path, m)
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


def test_not_a_bundle_paths(tmp_path, one_line):
    with pytest.raises(InputError) as e:
        verify_bundle(tmp_path / "nope")
    one_line(e, "not found")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x08")
    with pytest.raises(InputError) as e:
        Bundle.open(tmp_path / "model.onnx")
    one_line(e, "neither a bundle folder nor a .tar.gz")


def test_bundle_written_by_the_fixture_round_trips(tmp_path, toys):
    path = toys.write_bundle(tmp_path / "b", "velocity")
    with Bundle.open(path) as b:
        inputs, ref = b.load_example()
        assert set(inputs) == {"positions", "previous_displacement"} and ref.shape == (8, 12, 3)
        assert all(v.dtype == np.float64 for v in inputs.values())
