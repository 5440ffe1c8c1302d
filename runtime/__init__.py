"""e3traj runtime: everything a host needs (numpy, onnxruntime and click only).

The public API is what this module exports; train/ and export/ use these names, never a private module.
"""

from . import _contract as contract
from . import _errors, _io
from ._bundle import Bundle
from ._data import (
    N_BEADS,
    Split,
    check_beads,
    frames_sha256,
    load_trajectory,
    read_trajectory,
    save_trajectory,
    split_pairs,
    validate_frames,
)
from ._equivariance import CaseResult, EquivarianceReport, check_bundle, check_equivariance
from ._errors import (  # noqa: F401  (re-exported through _errors.__all__)
    EXIT_CHECK,
    EXIT_INCOMPLETE,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    CheckFailed,
    E3TrajError,
    InputError,
    MissingExtra,
    RolloutIncomplete,
    UsageError,
    first_line,
    one_line,
)
from ._evaluate import format_evaluation, format_one_step
from ._io import atomic_output, atomic_output_dir, atomic_outputs, check_output_path, replacing, sha256_file  # noqa: F401
from ._manifest import build_manifest, write_manifest
from ._metrics import evaluate_predictor, one_step_metrics
from ._noise import (
    RolloutNoise,
    internal_msd,
    residual_scale,
    thermostat_scale,
    velocity_gain,
)
from ._pack import pack_bundle, unpack_bundle
from ._predictors import MAX_AR_ORDER, LinearExtrapolation, choose_ar, fit_ar, predictor_suite
from ._rollout import RolloutResult, rollout, save_rollout, write_xyz
from ._simulate import simulate
from ._sources import DMOL_SHA256, DataSource, dmol_path, resolve_data, resolve_many
from ._verify import verify_bundle
from ._version import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, CHECKPOINT_FORMAT_VERSION, __version__

__all__ = [
    "__version__",
    "contract",
    # bundles
    "Bundle",
    "verify_bundle",
    "write_manifest",
    "build_manifest",
    "pack_bundle",
    "unpack_bundle",
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "CHECKPOINT_FORMAT_VERSION",
    # rollouts, checks, metrics
    "RolloutResult",
    "rollout",
    "save_rollout",
    "write_xyz",
    "CaseResult",
    "EquivarianceReport",
    "check_equivariance",
    "check_bundle",
    "evaluate_predictor",
    "one_step_metrics",
    "LinearExtrapolation",
    "MAX_AR_ORDER",
    "format_evaluation",
    "format_one_step",
    "RolloutNoise",
    "residual_scale",
    "thermostat_scale",
    "internal_msd",
    "velocity_gain",
    "choose_ar",
    "fit_ar",
    "predictor_suite",
    # data
    "N_BEADS",
    "DataSource",
    "Split",
    "dmol_path",
    "DMOL_SHA256",
    "frames_sha256",
    "load_trajectory",
    "read_trajectory",
    "resolve_data",
    "resolve_many",
    "save_trajectory",
    "split_pairs",
    "validate_frames",
    "check_beads",
    "simulate",
    # errors, exit codes, one-line messages, safe outputs: everything those modules export
    *_errors.__all__,
    *_io.__all__,
]
