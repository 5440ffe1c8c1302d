"""Verification before any model is parsed (runtime/_verify.py): fresh bundles pass, any damage is one line."""

from __future__ import annotations

import os
import shutil

import pytest
from _toys import read_manifest, rehash, save_manifest

from e3traj.runtime import Bundle, verify_bundle
from e3traj.runtime._errors import InputError


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
    m = read_manifest(p)
    m["format"] = "something-else"
    save_manifest(p, m)


def _mut_newer(p):
    m = read_manifest(p)
    m["format_version"] = 2
    save_manifest(p, m)


def _mut_no_inputs(p):
    m = read_manifest(p)
    del m["inputs"]
    save_manifest(p, m)


def _mut_no_onnx_file(p):
    m = read_manifest(p)
    del m["onnx"]["file"]
    save_manifest(p, m)


def _mut_no_example(p):
    m = read_manifest(p)
    del m["example"]
    save_manifest(p, m)


def _mut_bad_meaning(p):
    m = read_manifest(p)
    m["outputs"][0]["meaning"] = "acceleration"
    save_manifest(p, m)


def _mut_path_name(p):
    m = read_manifest(p)
    m["files"]["../evil"] = m["files"]["model.onnx"]
    save_manifest(p, m)


def _mut_flip_byte(p):
    _flip_byte(p / "model.onnx", 40)


def _mut_truncate(p):
    data = (p / "model.onnx").read_bytes()
    (p / "model.onnx").write_bytes(data[: len(data) // 2])


def _mut_hash_mismatch(p):
    m = read_manifest(p)
    m["files"]["example.npz"]["sha256"] = "0" * 64
    save_manifest(p, m)


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
    m = read_manifest(p)
    m["onnx"]["min_onnxruntime"] = "99.0.0"
    save_manifest(p, m)


def _mut_opset_mismatch(p):
    m = read_manifest(p)
    m["onnx"]["opset"] = 18
    save_manifest(p, m)


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
    assert set(read_manifest(path)["files"]) == {"model.onnx", "example.npz", "weights.bin"}
    with pytest.raises(InputError) as e:
        verify_bundle(path)
    one_line(e, "model.onnx", "external data", "'W'")


def test_not_a_bundle_paths(tmp_path, one_line):
    with pytest.raises(InputError) as e:
        verify_bundle(tmp_path / "nope")
    one_line(e, "not found")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x08")
    with pytest.raises(InputError) as e:
        Bundle.open(tmp_path / "model.onnx")
    one_line(e, "neither a bundle folder nor a .tar.gz")


def test_a_negative_shape_in_the_example_is_refused_before_reading(make_bundle, toys):
    import io
    import zipfile

    path = make_bundle("toy", "negative")
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }"
    header += " " * (118 - len(header)) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(8 * 1000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("positions.npy", npy)
        zf.writestr("prediction.npy", npy)
    (path / "example.npz").write_bytes(buf.getvalue())
    rehash(path)
    with Bundle.open(path) as b, pytest.raises(InputError, match="negative shape"):
        b.load_example()
