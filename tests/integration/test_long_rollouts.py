"""Long rollouts that stay physical, end to end: a langevin model trained on the simulator, exported, and rolled
out sampled by the runtime's fidelity report beside the predictor suite (train -> export -> runtime)."""

from __future__ import annotations

import pytest

from e3traj.export import export_checkpoint
from e3traj.runtime import Bundle, resolve_data
from e3traj.runtime._fidelity import fidelity_report
from e3traj.train import TrainConfig, train_model

pytestmark = pytest.mark.slow


def test_a_sampled_langevin_bundle_stays_a_polymer_at_the_references_temperature(tmp_path):
    data = resolve_data("sim")
    train_model(data, TrainConfig(model="langevin", max_time=None), output=tmp_path / "l.pt", progress=False)
    export_checkpoint(tmp_path / "l.pt", tmp_path / "bundle")
    with Bundle.open(tmp_path / "bundle", threads=1) as b:
        assert b.noise_rule == "thermostat" and b.noise_scale > 0
        rep = fidelity_report(b, data, steps=1500, n_starts=4, seed=0, simulated=True)
    rows = {
        r["name"].split(" (")[0].split(",")[0] + (" sampled" if "sampled" in r["name"] else ""): r for r in rep["rows"]
    }
    sampled, deterministic, ar = rows["model sampled"], rows["model"], rows["AR(8)"]
    assert sampled["stable_fraction"] == 1.0
    for lag in ("lag=1", "lag=10", "lag=100"):
        assert 0.5 <= sampled["motion_ratio"][lag] <= 2.0  # the thermostat keeps the reference's motion
        assert deterministic["motion_ratio"][lag] < 0.3 and ar["motion_ratio"][lag] < 0.1  # they freeze
    for k in ("bond_length", "radius_of_gyration"):
        assert sampled["w1"][k] < deterministic["w1"][k] and sampled["w1"][k] < ar["w1"][k]
    assert rows["constant velocity"]["stable_fraction"] < 1.0  # the naive extrapolation diverges
