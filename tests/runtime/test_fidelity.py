"""Long-rollout fidelity (runtime/_fidelity.py): stability, distribution distances, internal motion."""

from __future__ import annotations

import numpy as np
import pytest

from e3traj.runtime._fidelity import (
    bands_from,
    fidelity_report,
    fidelity_row,
    format_fidelity,
    observables,
    stability_steps,
    w1,
)
from e3traj.runtime._simulate import simulate


def _sim(frames=600, seed=0):
    xy = simulate(frames=frames, seed=seed)
    return np.concatenate([xy, np.zeros(xy.shape[:2] + (1,))], axis=-1)


def test_w1_of_shifted_samples_is_the_shift_and_empty_is_nan():
    rng = np.random.default_rng(0)
    a = rng.normal(size=5000)
    assert w1(a, a) == 0.0
    assert w1(a, a + 0.3) == pytest.approx(0.3, abs=1e-9)
    assert np.isnan(w1(a, np.array([np.nan])))


def test_stability_ends_at_the_first_broken_bond_or_overlap_or_nan():
    ref = _sim()
    bands = bands_from(ref)
    traj = np.repeat(ref[100:111, None], 3, axis=1)  # (11, 3, 12, 3): three starts, 10 steps, all physical
    traj[6:, 1, 5] += 10.0  # start 1: bond 4-5 stretched from step 6
    traj[3:, 2, 0] = np.nan  # start 2: non-finite from step 3
    got = stability_steps(traj, bands)
    assert got.tolist() == [10, 5, 2]
    overlap = traj[:, :1].copy()
    overlap[4:, 0, 7] = overlap[4:, 0, 2]  # beads 2 and 7 on top of each other
    assert stability_steps(overlap, bands).tolist() == [3]


def test_the_reference_scores_itself_near_zero_and_a_frozen_chain_has_no_motion():
    ref = _sim(1200)
    bands = bands_from(ref)
    same = fidelity_row("same", ref[:, None], ref, bands)
    assert same.stable_fraction == 1.0
    assert max(same.w1.values()) < 5e-3  # frames 1..T against 0..T: one frame apart
    assert same.motion_ratio["lag=1"] == pytest.approx(1.0)
    frozen = fidelity_row("frozen", np.repeat(ref[:1, None], 200, axis=0), ref, bands)
    assert frozen.stable_fraction == 1.0 and frozen.motion_ratio["lag=10"] == 0.0
    assert frozen.w1["radius_of_gyration"] > 0.1  # one frame is not the distribution
    blown = np.full((50, 1, 12, 3), np.nan)
    row = fidelity_row("nan", blown, ref, bands)
    assert row.stable_fraction == 0.0 and all(np.isnan(v) for v in row.w1.values())  # never 0 on no evidence


def test_observables_shapes():
    obs = observables(_sim(10))
    assert obs["bond_length"].shape == (110,) and obs["bond_angle"].shape == (100,)
    assert obs["radius_of_gyration"].shape == (10,) and obs["end_to_end"].shape == (10,)


def test_report_for_a_bundle_and_the_suite_with_the_noise_floor(history_bundle):
    from e3traj.runtime import Bundle, resolve_data

    data = resolve_data("sim", sim_frames=400)
    with Bundle.open(history_bundle) as b:
        rep = fidelity_report(b, data, steps=30, n_starts=3, seed=1, simulated=True)
    names = [r["name"] for r in rep["rows"]]
    assert names[0] == "model (e3nn-history)" and names[1:4] == [
        "persistence",
        "constant velocity",
        "constant acceleration",
    ]
    assert names[4].startswith("AR(") and len(rep["starts"]) == 3
    assert set(rep["floor"]) == {"bond_length", "bond_angle", "radius_of_gyration", "end_to_end"}
    persistence = rep["rows"][1]
    assert persistence["stable_fraction"] == 1.0 and persistence["motion_ratio"]["lag=1"] == 0.0  # it freezes
    text = format_fidelity(rep["_rows"], rep["_bands"], floor=rep["floor"], data_floor=rep["data_floor"])
    assert "noise floor" in text and "unstable at the first non-finite value" in text
    # the data's own frames against the reference: what a model trained on them saw
    assert set(rep["data_floor"]) == set(rep["floor"]) and "the data (its frames)" in text
    assert all(0 < v < 10 for v in rep["data_floor"].values())
    ratio = next(line for line in text.splitlines() if line.startswith("model (e3nn-history) / noise floor"))
    w, f = rep["rows"][0]["w1"]["bond_length"], rep["floor"]["bond_length"]
    assert f"bond_length {w / f:.3g}x" in ratio


def test_a_bundle_with_a_noise_scale_also_gets_a_sampled_row(make_bundle):
    import json

    from _toys import rehash

    from e3traj.runtime import Bundle, resolve_data

    d = make_bundle("history")
    m = json.loads((d / "manifest.json").read_text())
    m["model"]["noise_scale"] = 1e-4
    (d / "manifest.json").write_text(json.dumps(m))
    rehash(d)
    data = resolve_data("sim", sim_frames=300)
    with Bundle.open(d) as b:
        assert b.noise_scale == 1e-4
        rep = fidelity_report(b, data, steps=20, n_starts=2, seed=0)
    assert [r["name"] for r in rep["rows"]][:2] == ["model (e3nn-history)", "model, sampled (0.0001)"]
