"""e3traj runtime: everything a host needs (numpy, onnxruntime and click only)."""

from ._version import __version__

__all__ = ["__version__"]

# host side: bundles, packing, rollouts, equivariance checks
from ._bundle import Bundle, verify_bundle, write_manifest  # noqa: E402
from ._equivariance import CaseResult, EquivarianceReport, check_bundle, check_equivariance  # noqa: E402
from ._pack import pack_bundle, unpack_bundle  # noqa: E402
from ._rollout import RolloutResult, rollout, save_rollout, write_xyz  # noqa: E402

__all__ += [
    "Bundle",
    "verify_bundle",
    "write_manifest",
    "pack_bundle",
    "unpack_bundle",
    "RolloutResult",
    "rollout",
    "save_rollout",
    "write_xyz",
    "CaseResult",
    "EquivarianceReport",
    "check_equivariance",
    "check_bundle",
]
