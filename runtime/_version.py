"""Versions, in one place: the package, the bundle format, and what a bundle may require of a host."""

__all__ = ["__version__", "BUNDLE_FORMAT", "BUNDLE_FORMAT_VERSION", "CHECKPOINT_FORMAT_VERSION"]

__version__ = "0.1.0"

#: Name and version of the bundle format written by ``e3traj export`` and read by the runtime.
BUNDLE_FORMAT = "e3traj-bundle"
BUNDLE_FORMAT_VERSION = 1

#: Version of the training checkpoint format written by ``e3traj train``.
CHECKPOINT_FORMAT_VERSION = 1
