"""The velocity-aware model (train/_velocity.py): the scaled previous displacement is the node feature."""

from __future__ import annotations

import torch
from _nets import (
    CONFIGS,
    F32_BOUND,
    node_features,
    pair_of,
    probe_frames,
    reference_outputs,
)

# ---------------------------------------------------------------------------------------------------------------


def test_velocity_model_feeds_the_scaled_previous_displacement():
    from e3traj.train._velocity import VelocityModel

    config = CONFIGS["velocity"]
    model = VelocityModel(config, scale=0.05, input_scale=0.02)
    fixed, ref = pair_of("velocity")
    model.net.load_state_dict(fixed.state_dict())
    frames = probe_frames()[:3]
    prev = 0.02 * node_features(config, frames)
    with torch.no_grad():
        got = model(frames, prev)
    want = reference_outputs(ref, frames, prev / 0.02) * 0.05
    assert float(want.abs().max()) > 1e-3
    assert float((got - want).abs().max()) <= F32_BOUND * max(0.05, float(want.abs().max()))
