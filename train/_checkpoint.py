"""Checkpoints: weights + full config + training-data sha256 + metrics, written atomically, read safely."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from e3traj.runtime import CHECKPOINT_FORMAT_VERSION, InputError, __version__, atomic_output, first_line

from ._kinds import KINDS, get_kind, positive_float

__all__ = [
    "CHECKPOINT_FORMAT",
    "MODEL_KINDS",
    "save_checkpoint",
    "load_checkpoint",
    "build_model",
    "checkpoint_n_beads",
]

CHECKPOINT_FORMAT = "e3traj-checkpoint"
MODEL_KINDS = tuple(KINDS)


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (temp file + rename). ``ckpt`` gets the format fields added."""
    ckpt = dict(ckpt)
    ckpt["format"] = CHECKPOINT_FORMAT
    ckpt["format_version"] = CHECKPOINT_FORMAT_VERSION
    ckpt["e3traj_version"] = __version__
    out = Path(path)
    with atomic_output(out, suffix=".pt") as tmp:
        torch.save(ckpt, tmp)
    return out


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and validate its format, kind and weights.

    Raises:
        InputError: missing, corrupt, not a checkpoint, newer format, unknown kind, or non-finite weights.
    """
    name = str(path)
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{name}: checkpoint not found; pass a file written by 'e3traj train -o'")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(
            f"{name}: not a readable checkpoint ({first_line(exc)[:160]}); retrain or restore the file"
        ) from None
    except Exception as exc:  # weights_only refusal of unknown globals raises UnpicklingError
        raise InputError(
            f"{name}: refused to load ({type(exc).__name__}); only checkpoints from 'e3traj train' load"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(
            f"{name}: not an e3traj checkpoint (no format '{CHECKPOINT_FORMAT}'); pass a file from 'e3traj train'"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise InputError(
            f"{name}: checkpoint format_version {version!r} is newer than this e3traj reads "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade e3traj"
        )
    get_kind(ckpt.get("kind"), error=InputError, where=f"{name}: field 'kind' is")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise InputError(f"{name}: field 'state_dict' is missing or empty; retrain the model")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{name}: weight {key!r} is not a tensor; retrain the model")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"{name}: weight {key!r} holds NaN or Inf; retrain or pick an earlier checkpoint")
    scale = ckpt.get("scale", 1.0)
    if not isinstance(scale, float) or not math.isfinite(scale) or scale <= 0:
        raise InputError(f"{name}: field 'scale' is {scale!r}, expected a positive finite float; retrain the model")
    return ckpt


def checkpoint_n_beads(ckpt: dict[str, Any]) -> int:
    """The beads per frame a checkpoint was trained for: ``n_beads``, else its network's ``num_nodes``, else its
    spec's, else 12 (checkpoints from before N was recorded were all 12-bead)."""
    for value in (
        ckpt.get("n_beads"),
        (ckpt.get("config") or {}).get("num_nodes"),
        (ckpt.get("spec") or {}).get("n_beads"),
    ):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 12


def build_model(ckpt: dict[str, Any], *, name: str = "checkpoint") -> torch.nn.Module:
    """Rebuild the model a checkpoint describes (its kind's registry entry) and load its weights (strict)."""
    kind = get_kind(ckpt["kind"], error=InputError, where=f"{name}: field 'kind' is")
    config = None
    if kind.e3nn:
        from ._config import E3nnConfig

        try:
            config = E3nnConfig.from_dict(ckpt["config"])
        except (TypeError, ValueError, KeyError) as exc:
            raise InputError(f"{name}: field 'config' is invalid ({exc}); retrain the model") from None
    input_scale = ckpt.get("input_scale", 1.0)
    if kind.uses_input_scale and not positive_float(input_scale):
        raise InputError(f"{name}: field 'input_scale' is {input_scale!r}, expected a positive float; retrain")
    spec = ckpt.get("spec") or {}
    if kind.window and (not isinstance(spec, dict) or not isinstance(spec.get("history"), int)):
        raise InputError(f"{name}: field 'spec' is {spec!r}; a {kind.name} checkpoint needs its history; retrain")
    try:
        model = kind.build(config, float(ckpt["scale"]), float(input_scale), 0, spec)
    except ValueError as exc:
        raise InputError(f"{name}: field 'config' does not fit a {kind.name} model ({exc}); retrain") from None
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise InputError(
            f"{name}: weights do not fit a {kind.name} model ({first_line(exc)[:160]}); "
            "was it written by another version?"
        ) from None
    model.eval()
    return model
