"""The equivariance checker: it passes exact models, fails broken ones, and applies the right transforms."""

from __future__ import annotations

import json

import numpy as np
import pytest

from e3traj.runtime import Bundle, EquivarianceReport, check_bundle, check_equivariance
from e3traj.runtime._equivariance import CASES, random_rotation

POS = {"positions": "positions"}
VEL = {"positions": "positions", "previous_displacement": "previous_displacement"}


def _frames(batch=6, seed=0, planar=True):
    rng = np.random.default_rng(seed)
    base = np.stack([np.arange(12) * 0.9, 0.4 * (np.arange(12) % 2), np.zeros(12)], axis=-1)
    x = base + rng.normal(scale=0.1, size=(batch, 12, 3))
    if planar:
        x[..., 2] = 0.0
    return x


def toy(inputs):  # float64 version of the toy bundle: exactly E(3)- and permutation-equivariant
    x = inputs["positions"]
    return 0.01 * (x.mean(axis=1, keepdims=True) - x)


def velocity(inputs):
    x, v = inputs["positions"], inputs["previous_displacement"]
    return 0.01 * (x.mean(axis=1, keepdims=True) - x) + 0.1 * v


W = np.array([[0.9, 0.1, 0.05], [-0.1, 0.95, 0.02], [0.03, -0.02, 0.9]])


def baseline(inputs):
    return inputs["positions"] @ W + 0.01


def test_random_rotation_is_proper_and_orthogonal():
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = random_rotation(rng)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)


@pytest.mark.parametrize("planar", [True, False])
def test_an_exact_model_passes_every_case(planar):
    report = check_equivariance(toy, POS, "displacement", {"positions": _frames(planar=planar)})
    assert [c.case for c in report.cases] == list(CASES)
    assert report.passed, report.table()
    assert max(c.max_rel_error for c in report.cases) < 1e-12


def test_the_linear_baseline_fails_rotation_and_translation():
    report = check_equivariance(baseline, POS, "next_positions", {"positions": _frames()}, trials=2)
    assert not report.passed
    for case in ("rotation", "improper", "translation", "planar", "mirror_z"):
        assert not report.case(case).passed, case
        assert report.case(case).max_rel_error > 1e-2
    assert report.case("permutation").passed  # bead-wise linear maps commute with permutations
    assert set(report.failed) == {"rotation", "improper", "translation", "planar", "mirror_z"}


def test_next_positions_must_translate_with_the_input():
    # y = x is the exact identity dynamics; the checker must expect g x + t for next_positions
    report = check_equivariance(lambda d: d["positions"].copy(), POS, "next_positions", {"positions": _frames()})
    assert report.passed, report.table()
    # the same map read as a displacement is not translation-invariant
    report = check_equivariance(lambda d: d["positions"].copy(), POS, "displacement", {"positions": _frames()})
    assert not report.case("translation").passed and report.case("rotation").passed


def test_thresholds_separate_tiny_from_real_symmetry_breaking():
    def broken(eps):
        return lambda d: toy(d) + eps * d["positions"][..., [0]] ** 2 * np.array([1.0, 0.0, 0.0])

    frames = {"positions": _frames(planar=False)}
    assert check_equivariance(broken(1e-10), POS, "displacement", frames).case("rotation").passed
    report = check_equivariance(broken(1e-3), POS, "displacement", frames)
    assert not report.case("rotation").passed and not report.case("translation").passed


def test_a_model_that_depends_on_bead_order_fails_only_permutation():
    def anchored(d):  # pulls every bead towards bead 0: E(3)-equivariant, but bead 0 is special
        x = d["positions"]
        return 0.01 * (x[:, :1] - x)

    report = check_equivariance(anchored, POS, "displacement", {"positions": _frames()})
    assert report.failed == ["permutation"]


def test_a_constant_out_of_plane_output_fails_planar():
    report = check_equivariance(
        lambda d: toy(d) + np.array([0, 0, 1e-3]), POS, "displacement", {"positions": _frames()}
    )
    assert not report.case("planar").passed and report.case("planar").max_abs_error == pytest.approx(1e-3)


def test_velocity_inputs_transform_as_vectors_and_are_never_translated():
    seen = []

    def recording(d):
        seen.append({k: v.copy() for k, v in d.items()})
        return velocity(d)

    x, v = _frames(seed=1, planar=False), _frames(seed=2, planar=False) * 0.01
    report = check_equivariance(
        recording, VEL, "velocity_correction", {"positions": x, "previous_displacement": v}, trials=1, seed=3
    )
    assert report.passed, report.table()
    # calls: base, rotation, improper, mirror_z, translation, permutation, planar
    base, rot, imp, mir, trans, perm, flat = seen
    g = np.linalg.lstsq(v.reshape(-1, 3), rot["previous_displacement"].reshape(-1, 3), rcond=None)[0].T
    np.testing.assert_allclose(rot["positions"], x @ g.T, atol=1e-10)  # same g for both inputs, no shift
    assert np.linalg.det(g) == pytest.approx(1.0)
    g_imp = np.linalg.lstsq(x.reshape(-1, 3), imp["positions"].reshape(-1, 3), rcond=None)[0].T
    assert np.linalg.det(g_imp) == pytest.approx(-1.0)
    np.testing.assert_allclose(mir["positions"][..., 2], -x[..., 2])
    np.testing.assert_array_equal(trans["previous_displacement"], v)  # displacements are not translated
    shift = trans["positions"] - x
    assert np.allclose(shift, shift[0, 0]) and 1.0 <= np.linalg.norm(shift[0, 0]) <= 5.0
    order = [int(np.argmin(np.abs(x[0] - b).sum(axis=1))) for b in perm["positions"][0]]
    np.testing.assert_array_equal(perm["previous_displacement"], v[:, order])
    assert np.all(flat["positions"][..., 2] == 0) and np.all(flat["previous_displacement"][..., 2] == 0)


def test_a_velocity_model_with_an_absolute_position_term_fails_translation_only():
    def wrong(d):  # a correction that follows the centroid: rotates correctly but is not translation-invariant
        return velocity(d) + 0.1 * d["positions"].mean(axis=1, keepdims=True)

    frames = {"positions": _frames(planar=False), "previous_displacement": _frames(seed=5, planar=False) * 0.01}
    report = check_equivariance(wrong, VEL, "velocity_correction", frames)
    assert not report.case("translation").passed and report.case("rotation").passed


def test_report_is_deterministic_serialisable_and_tabulated():
    frames = {"positions": _frames()}
    a = check_equivariance(baseline, POS, "next_positions", frames, seed=7)
    b = check_equivariance(baseline, POS, "next_positions", frames, seed=7)
    c = check_equivariance(baseline, POS, "next_positions", frames, seed=8)
    assert a.to_dict() == b.to_dict() and a.to_dict() != c.to_dict()
    data = json.loads(json.dumps(a.to_dict()))
    assert data["passed"] is False and [row["case"] for row in data["cases"]] == list(CASES)
    table = a.table().splitlines()
    assert table[0].split() == ["case", "max", "abs", "err", "max", "rel", "err", "result"]
    rows = {line.split()[0]: line.split()[3] for line in table[2 : 2 + len(CASES)]}
    assert rows["rotation"] == "FAIL" and rows["permutation"] == "PASS"
    assert isinstance(a, EquivarianceReport)


def test_bad_arguments_are_value_errors():
    frames = {"positions": _frames()}
    with pytest.raises(ValueError, match="acceleration"):
        check_equivariance(toy, POS, "acceleration", frames)
    with pytest.raises(ValueError, match="velocity"):
        check_equivariance(toy, {"positions": "velocity"}, "displacement", frames)
    with pytest.raises(ValueError, match="trials"):
        check_equivariance(toy, POS, "displacement", frames, trials=0)
    with pytest.raises(ValueError, match="previous_displacement"):
        check_equivariance(toy, VEL, "displacement", frames)


def test_check_bundle_on_real_onnx_bundles(toy_bundle, baseline_bundle, velocity_bundle):
    for path in (toy_bundle, velocity_bundle):
        with Bundle.open(path) as b:
            report = check_bundle(b, trials=2, seed=1)
        assert report.passed, report.table()
        assert report.cases[-1].case == "example" and report.cases[-1].criterion == "absolute"
        assert report.case("rotation").max_rel_error < 1e-5  # float32 rounding only
    with Bundle.open(baseline_bundle) as b:
        report = check_bundle(b, trials=2, seed=1)
    assert not report.case("rotation").passed and not report.case("translation").passed
    assert report.case("example").passed and report.case("permutation").passed


def test_check_bundle_example_row_fails_on_a_wrong_reference(make_bundle):
    path = make_bundle("toy", example_atol=0.0)
    with Bundle.open(path) as b:
        report = check_bundle(b, trials=1)
    row = report.case("example")
    assert row.threshold == 0.0 and row.max_abs_error > 0 and not row.passed
    assert report.failed == ["example"]


# --------------------------------------------------------------------------------------------- evidence (issue 15)


def test_no_frames_is_refused_not_passed():
    with pytest.raises(ValueError, match="holds no frames"):
        check_equivariance(baseline, POS, "next_positions", {"positions": np.zeros((0, 12, 3))})


def test_nan_errors_fail_and_show_as_nan():
    def nan_after_rotation(inputs):
        y = toy(inputs)
        if abs(inputs["positions"][0, 0, 1]) > 1.5:  # any transform that moves bead 0 far: NaN out
            y = y * np.nan
        return y

    frames = _frames()
    report = check_equivariance(nan_after_rotation, POS, "displacement", {"positions": frames + [0, 2.0, 0]})
    assert not report.passed
    bad = [c for c in report.cases if np.isnan(c.max_rel_error)]
    assert bad and all(not c.passed for c in bad)
    assert " nan " in report.table() and "inf" not in report.table()


@pytest.mark.parametrize("output", ["zeros", "nan"])
def test_degenerate_outputs_fail_every_case(output):
    def degenerate(inputs):
        x = inputs["positions"]
        return np.zeros_like(x) if output == "zeros" else np.full_like(x, np.nan)

    report = check_equivariance(degenerate, POS, "displacement", {"positions": _frames()})
    assert not any(c.passed for c in report.cases), report.table()
    note = "all-zero outputs prove nothing" if output == "zeros" else "non-finite outputs"
    assert note in report.table()


def test_check_frames_are_seeded_polymer_like_and_planar_in_part():
    from e3traj.runtime._equivariance import MIN_CHECK_FRAMES, check_frames

    a = check_frames(VEL, seed=3)
    b = check_frames(VEL, seed=3)
    assert a["positions"].shape == (MIN_CHECK_FRAMES, 12, 3) and MIN_CHECK_FRAMES >= 16
    np.testing.assert_array_equal(a["positions"], b["positions"])
    assert not np.array_equal(a["positions"], check_frames(VEL, seed=4)["positions"])
    chains = a["positions"][: MIN_CHECK_FRAMES // 2]
    np.testing.assert_allclose(np.linalg.norm(np.diff(chains, axis=1), axis=-1), 0.36, rtol=1e-12)
    planar = np.all(a["positions"][..., 2] == 0, axis=1)
    assert 0 < planar.sum() < MIN_CHECK_FRAMES and np.all(a["previous_displacement"][planar, :, 2] == 0)


def _rewrite_example(bundle, toys, **arrays):
    np.savez(bundle / "example.npz", **arrays)
    toys.rehash(bundle)


def test_an_empty_example_fails_the_check_and_the_model_is_still_tested(make_bundle, toys, cli):
    # a non-equivariant model (the baseline) with a 0-frame example used to print "all cases PASS"
    path = make_bundle("baseline", "empty-example")
    empty = np.zeros((0, 12, 3), dtype=np.float32)
    _rewrite_example(path, toys, positions=empty, prediction=empty)
    with Bundle.open(path) as b:
        report = check_bundle(b, trials=1)
    assert report.frames >= 16 and not report.passed
    assert not report.case("rotation").passed and not report.case("translation").passed  # on its own frames
    example = report.case("example")
    assert not example.passed and "0 frame(s)" in example.note and np.isnan(example.max_abs_error)
    r = cli("check", path, "--trials", "1")
    assert r.exit_code == 4 and "all cases PASS" not in r.stdout and "example" in r.stderr


def test_an_equivariant_bundle_with_an_empty_example_still_fails_on_the_example(make_bundle, toys):
    path = make_bundle("toy", "toy-empty-example")
    empty = np.zeros((0, 12, 3), dtype=np.float32)
    _rewrite_example(path, toys, positions=empty, prediction=empty)
    with Bundle.open(path) as b:
        report = check_bundle(b, trials=1)
    assert report.failed == ["example"], report.table()  # the model itself passes on the generated frames


def test_an_all_zero_reference_fails_the_example_row(make_bundle, toys):
    path = make_bundle("toy", "zero-ref")
    with np.load(path / "example.npz") as z:
        x = z["positions"]
    _rewrite_example(path, toys, positions=x, prediction=np.zeros_like(x))
    with Bundle.open(path) as b:
        row = check_bundle(b, trials=1).case("example")
    assert not row.passed and row.note == "all-zero outputs prove nothing"


HIST = {"positions": "positions", "previous_displacements": "previous_displacements"}


def _bonded(inputs):
    """Knows the chain: pulls each bead toward the mean of its bonded neighbours (reversal-symmetric), plus
    the mean previous displacement; equivariant under E(3) and the chain's reversal, not under a shuffle."""
    x = inputs["positions"]
    pad = np.concatenate([x[:, :1], x, x[:, -1:]], axis=1)
    lap = 0.5 * (pad[:, :-2] + pad[:, 2:]) - x
    return 0.1 * lap + 0.2 * inputs["previous_displacements"].mean(axis=1)


def _hist_frames(h=3, seed=1, planar=True):
    rng = np.random.default_rng(seed)
    x = _frames(6, seed, planar)
    d = rng.normal(scale=0.02, size=(6, h, 12, 3))
    if planar:
        d[..., 2] = 0.0
    return {"positions": x, "previous_displacements": d}


def test_a_topology_aware_model_passes_on_its_promise_and_fails_a_shuffle():
    frames = _hist_frames()
    chain = check_equivariance(_bonded, HIST, "ar_correction", frames, permutation="chain_reversal")
    assert chain.passed, chain.table()
    assert chain.case("permutation").trials == 1 and "reversal" in chain.case("permutation").note
    shuffled = check_equivariance(_bonded, HIST, "ar_correction", frames, permutation="any")
    assert shuffled.failed == ["permutation"], shuffled.table()


def test_the_reversal_check_fails_a_model_that_tells_the_ends_apart():
    """Bead 0 treated unlike bead 11: the promised reversal must FAIL, every other case still passes."""

    def lopsided(inputs):
        y = _bonded(inputs)
        y[:, 0] = y[:, 0] * 3.0
        return y

    report = check_equivariance(lopsided, HIST, "ar_correction", _hist_frames(), permutation="chain_reversal")
    assert report.failed == ["permutation"], report.table()


def test_every_history_frame_is_transformed_the_same_way():
    """A model that reads only the oldest displacement is checked on it too: rotating only d_1 would miss it."""

    def oldest(inputs):
        return 0.1 * inputs["previous_displacements"][:, -1] + toy(inputs)

    assert check_equivariance(oldest, HIST, "ar_correction", _hist_frames()).passed

    def breaks_on_the_oldest(inputs):
        d = inputs["previous_displacements"][:, -1]
        return 0.1 * d @ W + toy(inputs)  # not a rotation-equivariant map of d

    report = check_equivariance(breaks_on_the_oldest, HIST, "ar_correction", _hist_frames())
    assert {"rotation", "improper"} <= set(report.failed), report.table()


def test_a_history_bundle_checks_on_its_own_frames_too(history_bundle):
    with Bundle.open(history_bundle) as b:
        report = check_bundle(b)
    assert report.passed, report.table()
    assert report.frames == 8 + 16  # the example's frames and the check's own


def test_unknown_permutation_promise_is_refused():
    with pytest.raises(ValueError, match="permutation must be one of"):
        check_equivariance(toy, POS, "displacement", {"positions": _frames()}, permutation="cyclic")
