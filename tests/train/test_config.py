"""The network's configuration (train/_config.py): round trips and refuses bad values."""

from __future__ import annotations

import dataclasses

import pytest

from e3traj.train import (
    E3nnConfig,
)

# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
def test_config_round_trip_and_validation():
    config = E3nnConfig(irreps_in="1x1o", layers=2, num_neighbors=11)
    assert isinstance(config.num_neighbors, float)
    data = config.to_dict()
    assert data["irreps_in"] == "1x1o" and data["layers"] == 2
    assert E3nnConfig.from_dict(data) == config
    assert E3nnConfig.from_dict({}) == E3nnConfig()
    assert E3nnConfig().to_dict()["irreps_hidden"] == "5x0e + 5x0o + 5x1e + 5x1o"
    with pytest.raises(ValueError, match="bogus"):
        E3nnConfig.from_dict({"layers": 3, "bogus": 1})
    with pytest.raises(ValueError, match="layers"):
        E3nnConfig(layers=-1)
    with pytest.raises(ValueError, match="max_radius"):
        E3nnConfig(max_radius=float("nan"))
    with pytest.raises(ValueError, match="5xq"):
        E3nnConfig(irreps_hidden="5xq")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.layers = 4  # type: ignore[misc]
