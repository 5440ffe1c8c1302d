"""The bundle format's one definition (runtime/_manifest.py): what it builds is what the host accepts."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from e3traj.runtime import InputError, build_manifest, contract, verify_bundle, write_manifest


def _args(**over):
    args = dict(
        kind="e3nn",
        equivariant=True,
        inputs=(contract.POSITIONS,),
        output=contract.DISPLACEMENT,
        model={"target_scale": 1.0},
        onnx={"file": "model.onnx"},
        example={"file": "example.npz", "atol": 1e-5},
        training={},
        versions={},
        verification={},
        created_utc="2026-01-01T00:00:00Z",
    )
    args.update(over)
    return args


def test_inputs_and_outputs_follow_the_contract():
    m = build_manifest(
        **_args(inputs=(contract.POSITIONS, contract.PREVIOUS_DISPLACEMENT), output="velocity_correction")
    )
    assert [i["name"] for i in m["inputs"]] == [i["meaning"] for i in m["inputs"]] == list(contract.INPUT_MEANINGS[:2])
    assert m["outputs"] == [
        {"name": contract.OUTPUT_NAME, "dtype": "float32", "shape": ["batch", 12, 3], "meaning": "velocity_correction"}
    ]
    assert m["model"]["num_nodes"] == contract.N_BEADS and m["model"]["kind"] == "e3nn"


@pytest.mark.parametrize("over, fragment", [({"inputs": ("velocity",)}, "input meaning"), ({"output": "x"}, "output")])
def test_unknown_meanings_are_refused(over, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_manifest(**_args(**over))


def test_a_built_manifest_verifies(make_bundle):
    path = make_bundle("toy", "built")  # the fixtures build their manifests with build_manifest too
    manifest = json.loads((path / "manifest.json").read_text())
    assert verify_bundle(path)["inputs"] == manifest["inputs"]
    manifest.pop("files")
    assert write_manifest(path, manifest)["files"]  # and write_manifest re-lists the files


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


def _history_manifest(make_bundle, mutate):

    from _toys import rehash

    d = make_bundle("history")
    m = json.loads((d / "manifest.json").read_text())
    mutate(m)
    (d / "manifest.json").write_text(json.dumps(m))
    rehash(d)
    return d


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda m: m["model"].pop("ar_coefficients"), "ar_coefficients is None"),
        (lambda m: m["model"].update(ar_coefficients=[1.0, "x", 2.0]), "finite numbers"),
        (lambda m: m["model"].update(ar_coefficients=[1.0, 2.0]), "2 AR coefficients but the history input holds 3"),
        (lambda m: m["inputs"][1].update(shape=["batch", 0, 12, 3]), "1 <= H <= 32"),
        (lambda m: m["inputs"][0].update(shape=["batch", 5, 3]), "expected ['batch', 12, 3]"),
        (lambda m: m["model"].update(permutation="cyclic"), "model.permutation is 'cyclic'"),
        (lambda m: m["model"].update(noise_rule="guess"), "model.noise_rule is 'guess'"),
    ],
    ids=["no-coefficients", "non-numeric", "count-mismatch", "zero-history", "positions-shape", "permutation", "noise"],
)
def test_history_fields_are_checked(make_bundle, mutate, fragment):
    from e3traj.runtime import InputError, verify_bundle

    d = _history_manifest(make_bundle, mutate)
    with pytest.raises(InputError) as e:
        verify_bundle(d)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_history_manifest_records_h_and_the_coefficients(make_bundle, toys):
    from e3traj.runtime import verify_bundle

    m = verify_bundle(make_bundle("history"))
    spec = {i["meaning"]: i["shape"] for i in m["inputs"]}
    assert spec["previous_displacements"] == ["batch", toys.H, 12, 3]
    assert m["model"]["ar_coefficients"] == list(toys.AR)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda m: m.pop("model"), None),  # the model section is optional: no traceback, and the bundle opens
        (lambda m: m["model"].update(ar_coefficients=[10**400, 1.0, 1.0]), "finite numbers"),
        (lambda m: m["example"].update(atol=10**400), "example.atol"),
    ],
    ids=["no-model-section", "huge-integer-coefficient", "huge-integer-atol"],
)
def test_hostile_numbers_and_missing_sections_are_one_line(make_bundle, mutate, fragment):
    from e3traj.runtime import InputError, verify_bundle

    d = _history_manifest(make_bundle, mutate)
    if fragment is None:
        with pytest.raises(InputError) as e:  # without the model section the ar_correction output has no rule
            verify_bundle(d)
        assert "ar_coefficients" in str(e.value) and "\n" not in str(e.value)
        return
    with pytest.raises(InputError) as e:
        verify_bundle(d)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_bundle_without_a_model_section_still_opens(make_bundle):

    from _toys import rehash

    from e3traj.runtime import Bundle

    d = make_bundle("toy")
    m = json.loads((d / "manifest.json").read_text())
    m.pop("model")
    (d / "manifest.json").write_text(json.dumps(m))
    rehash(d)
    with Bundle.open(d) as b:
        assert b.history == 0 and b.permutation == "any" and b.kind == "unknown"


def test_a_manifest_whose_shapes_disagree_with_num_nodes_is_refused(make_bundle):
    from _toys import rehash

    d = make_bundle("toy")
    m = json.loads((d / "manifest.json").read_text())
    m["model"]["num_nodes"] = 20
    (d / "manifest.json").write_text(json.dumps(m))
    rehash(d)
    with pytest.raises(InputError, match=r"output shape \['batch', 12, 3\]; expected \['batch', 20, 3\]"):
        verify_bundle(d)
    for bad in (2, 4096, "12", True):
        m["model"]["num_nodes"] = bad
        (d / "manifest.json").write_text(json.dumps(m))
        rehash(d)
        with pytest.raises(InputError, match="model.num_nodes"):
            verify_bundle(d)
