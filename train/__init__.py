"""Training (needs the train extra): the model kinds, the e3nn network, checkpoints and the training loop.

The public API is what this module exports; export/ uses these names, never a private module.
"""

from ._checkpoint import CHECKPOINT_FORMAT, MODEL_KINDS, build_model, load_checkpoint, save_checkpoint
from ._config import E3nnConfig, build_reference_network, load_reference_weights
from ._kinds import KINDS, ModelKind, get_kind
from ._model import DisplacementModel
from ._network import FixedGraphNetwork
from ._radial import reference_flops_per_frame, tabulate_radial
from ._train import TrainConfig, TrainResult, evaluate_checkpoint, step_function, train_model

__all__ = [
    "KINDS",
    "ModelKind",
    "get_kind",
    "MODEL_KINDS",
    "CHECKPOINT_FORMAT",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
    "E3nnConfig",
    "build_reference_network",
    "load_reference_weights",
    "DisplacementModel",
    "FixedGraphNetwork",
    "reference_flops_per_frame",
    "tabulate_radial",
    "TrainConfig",
    "TrainResult",
    "train_model",
    "step_function",
    "evaluate_checkpoint",
]
