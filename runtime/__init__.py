"""e3traj runtime: everything a host needs (numpy, onnxruntime and click only)."""

from ._version import __version__

__all__ = ["__version__"]
