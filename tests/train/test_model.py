"""The one-frame model (train/_model.py): the network's displacement, scaled to data units."""

from __future__ import annotations

import pytest
import torch
from _nets import (
    CONFIGS,
    F32_BOUND,
    pair_of,
    probe_frames,
    reference_outputs,
)

from e3traj.train import (
    DisplacementModel,
    E3nnConfig,
)


# ---------------------------------------------------------------------------------------------------------------
def test_displacement_model_scales_the_network():
    model = DisplacementModel(CONFIGS["default"], scale=0.05)
    fixed, ref = pair_of("default")
    model.net.load_state_dict(fixed.state_dict())
    frames = probe_frames()[:3]
    with torch.no_grad():
        got = model(frames)
    want = reference_outputs(ref, frames, None) * 0.05
    assert float(want.abs().max()) > 1e-3
    assert float((got - want).abs().max()) <= F32_BOUND * max(0.05, float(want.abs().max()))  # float32 noise floor
    with pytest.raises(ValueError, match="irreps_out"):
        DisplacementModel(E3nnConfig(irreps_out="1x0e"), scale=1.0)
    with pytest.raises(ValueError, match="irreps_in"):  # node features are the velocity model's
        DisplacementModel(CONFIGS["velocity"], scale=1.0)
    with pytest.raises(ValueError, match="scale"):
        DisplacementModel(E3nnConfig(), scale=0.0)
    assert float(model.state_dict()["scale"]) == pytest.approx(0.05)
