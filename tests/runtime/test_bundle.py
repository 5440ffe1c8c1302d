"""Bundle manifest writing, verification before any model is parsed, and the runtime model."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from _toys import rehash

from e3traj.runtime import Bundle
from e3traj.runtime._errors import CheckFailed, InputError, UsageError
from e3traj.runtime._session import CHUNK


def _frames(batch: int, seed: int = 0) -> np.ndarray:
    """Random chains: a zig-zag plus noise, shifted per row. Shapes: (batch, 12, 3)."""
    rng = np.random.default_rng(seed)
    base = np.stack([np.arange(12) * 0.9, 0.4 * (np.arange(12) % 2), np.zeros(12)], axis=-1)
    return base + rng.normal(scale=0.1, size=(batch, 12, 3)) + rng.normal(size=(batch, 1, 3))


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


def test_bundle_written_by_the_fixture_round_trips(tmp_path, toys):
    path = toys.write_bundle(tmp_path / "b", "velocity")
    with Bundle.open(path) as b:
        inputs, ref = b.load_example()
        assert set(inputs) == {"positions", "previous_displacement"} and ref.shape == (8, 12, 3)
        assert all(v.dtype == np.float64 for v in inputs.values())


def test_the_example_parsed_is_the_example_verified(toy_bundle, toys):
    with Bundle.open(toy_bundle) as b:
        before = b.load_example()[1]
        # swap in another valid example after verification (the race the issue measured 4 times in 25)
        np.savez(toy_bundle / "example.npz", positions=np.ones((8, 12, 3), np.float32), prediction=np.ones((8, 12, 3)))
        b._example = None  # force a re-read: it must come from the verified bytes, not from disk
        np.testing.assert_array_equal(b.load_example()[1], before)
        assert b.recheck_example() <= 1e-5
