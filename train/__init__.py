"""Training (needs the train extra): the model kinds, the e3nn network, checkpoints and the training loop.

The public API is what this module exports; export/ uses these names, never a private module. Names load on first
use (PEP 562), so ``e3traj train --help`` and ``e3traj evaluate BUNDLE`` do not import torch and e3nn.
"""

from __future__ import annotations

import importlib

#: public name -> the private module that holds it
_HOMES = {
    "KINDS": "_kinds",
    "ModelKind": "_kinds",
    "get_kind": "_kinds",
    "MODEL_KINDS": "_checkpoint",
    "CHECKPOINT_FORMAT": "_checkpoint",
    "build_model": "_checkpoint",
    "checkpoint_n_beads": "_checkpoint",
    "load_checkpoint": "_checkpoint",
    "save_checkpoint": "_checkpoint",
    "E3nnConfig": "_config",
    "build_reference_network": "_config",
    "load_reference_weights": "_config",
    "DisplacementModel": "_model",
    "FixedGraphNetwork": "_network",
    "reference_flops_per_frame": "_radial",
    "tabulate_radial": "_radial",
    "TrainConfig": "_train",
    "TrainResult": "_train",
    "train_model": "_train",
    "step_function": "_train",
    "evaluate_checkpoint": "_train",
    "pyg_samples": "_pyg",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
