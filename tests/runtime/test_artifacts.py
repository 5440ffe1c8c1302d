"""Every committed reference bundle under artifacts/ verifies, loads, re-checks its example and behaves."""

from pathlib import Path

import numpy as np
import pytest

from e3traj.runtime import DMOL_SHA256, Bundle, frames_sha256, verify_bundle
from e3traj.runtime._equivariance import check_bundle
from e3traj.runtime._simulate import simulate

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
BUNDLES = sorted(p for p in ARTIFACTS.iterdir() if (p / "manifest.json").is_file())


def test_reference_bundles_exist_for_both_kinds_and_sources():
    names = {p.name for p in BUNDLES}
    for source in ("sim", "dmol"):
        assert {f"{source}-e3nn", f"{source}-baseline", f"{source}-e3nn-velocity"} <= names


@pytest.mark.parametrize("path", BUNDLES, ids=[p.name for p in BUNDLES])
def test_committed_bundle_verifies_loads_and_checks(path):
    manifest = verify_bundle(path)
    with Bundle.open(path, threads=1) as b:
        assert b.recheck_example() <= manifest["example"]["atol"]
        report = check_bundle(b, trials=2, seed=1, tolerance=1e-4)
    # the e3nn kinds pass every case; the baseline must fail rotation and translation (the negative control)
    if manifest["model"]["equivariant"]:
        assert report.passed, report.table()
    else:
        assert not report.case("rotation").passed and not report.case("translation").passed


def test_sim_bundles_were_trained_on_what_the_simulator_makes_today():
    frames = simulate(frames=2048, seed=0)
    lifted = np.concatenate([frames, np.zeros(frames.shape[:2] + (1,))], axis=-1)
    digest = frames_sha256(lifted)
    for p in BUNDLES:
        if p.name.startswith("sim-"):
            m = verify_bundle(p)
            assert m["training"]["data_sha256"] == digest, f"{p.name}: rebuild with make artifacts"
        elif p.name.startswith("dmol-"):
            assert verify_bundle(p)["training"]["data_file_sha256"] == DMOL_SHA256
