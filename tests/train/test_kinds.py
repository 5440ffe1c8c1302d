"""The registry of model kinds (train/_kinds.py): every entry is complete and consistent with the contract."""

from __future__ import annotations

import pytest
import torch

from e3traj.runtime import UsageError
from e3traj.runtime import contract as C
from e3traj.train import KINDS, E3nnConfig, get_kind


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_builds_and_regresses_its_target(name):
    kind = KINDS[name]
    assert kind.name == name and kind.help
    assert set(kind.inputs) <= set(C.INPUT_MEANINGS) and kind.inputs[0] == C.POSITIONS
    assert kind.output in C.OUTPUT_MEANINGS
    assert kind.equivariant == (name != "baseline")  # the baseline is the negative control
    history = 4  # --history K: a window kind takes K - 1 = 3 previous displacements
    h = kind.past_frames(history)
    config = None
    if kind.e3nn:
        config = E3nnConfig(irreps_hidden="2x0e + 2x1o", layers=1, irreps_in=kind.irreps_in(history))
    spec = {"history": h, "length_scale": 0.36, "ar_coefficients": [1.5, -0.6, 0.1]} if kind.window else {}
    if kind.window:
        spec.update(n_beads=12, wall_low=[0.1] * 4, wall_high=[1.0, 2.0, 3.0])
    model = kind.build(config, 0.01, 0.02, 0, spec)
    x = torch.randn(3, 12, 3, dtype=torch.float64)
    past = x[:, None] - 0.01 * torch.arange(max(h, 1), 0, -1, dtype=x.dtype)[None, :, None, None]
    from e3traj.train._train import model_inputs

    inputs = model_inputs(kind, x, past)
    assert [tuple(a.shape) for a in inputs] == [
        (3, h, 12, 3) if m == C.PREVIOUS_DISPLACEMENTS else (3, 12, 3) for m in kind.inputs
    ]
    out = kind.raw(model, [a.float() for a in inputs])
    assert out.shape == (3, 12, 3)
    if kind.window:
        spec["head_weights"] = [0.0] * model.features.n_features
    assert kind.target(x, x + 0.01, past, spec).shape == (3, 12, 3)
    assert kind.needs_previous == (h > 0)
    assert kind.permutation in C.PERMUTATIONS and (kind.permutation == "chain_reversal") == kind.window


def test_unknown_kinds_name_the_choices():
    with pytest.raises(UsageError, match="'history'.*baseline, e3nn, e3nn-velocity, e3nn-history"):
        get_kind("history", error=UsageError)


def test_the_cli_offers_exactly_the_registered_kinds():
    from e3traj.train.cli import train

    option = next(p for p in train.params if p.name == "kind")
    assert list(option.type.choices) == list(KINDS)


def test_reading_the_registry_does_not_load_torch():
    # the CLI reads the kinds for --model: `e3traj train --help` and `e3traj evaluate BUNDLE` stay fast
    import subprocess
    import sys

    code = "import sys, e3traj.train.cli; print('torch' in sys.modules, 'e3nn' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.split() == ["False", "False"], r.stdout + r.stderr
