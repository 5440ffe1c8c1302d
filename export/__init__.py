"""Export trained models to bundles (needs the train extra)."""

from ._export import DEFAULT_OPSET, ExportSettings, export_checkpoint

__all__ = ["export_checkpoint", "ExportSettings", "DEFAULT_OPSET"]
