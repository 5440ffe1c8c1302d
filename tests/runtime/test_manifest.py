"""The bundle format's one definition (runtime/_manifest.py): what it builds is what the host accepts."""

from __future__ import annotations

import json

import pytest

from e3traj.runtime import build_manifest, contract, verify_bundle, write_manifest


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
    assert [i["name"] for i in m["inputs"]] == [i["meaning"] for i in m["inputs"]] == list(contract.INPUT_MEANINGS)
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
