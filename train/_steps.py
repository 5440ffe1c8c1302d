"""How a model of a kind steps: its inputs from frames, the next frame, the model as a runtime predictor, the
training windows, the unrolled loss and the validation MSE (shared by training, evaluation and export)."""

from __future__ import annotations

import numpy as np
import torch

from e3traj.runtime import contract as C

from ._kinds import ModelKind, get_kind

__all__ = ["model_inputs", "step_function"]


def model_inputs(kind: ModelKind, x: torch.Tensor, past: torch.Tensor | None) -> list[torch.Tensor]:
    """The model's inputs (float64, in the order of ``kind.inputs``) for frames ``x`` and the frames before.

    Shapes: ``x`` ``(B, 12, 3)``, ``past`` ``(B, H, 12, 3)`` chronological -> ``(B, 12, 3)`` each, or
    ``(B, H, 12, 3)`` for ``previous_displacements``.
    """
    out = []
    for meaning in kind.inputs:
        if meaning == C.POSITIONS:
            out.append(x)
        elif meaning == C.PREVIOUS_DISPLACEMENT:
            out.append(x - past[:, -1])
        else:
            out.append(torch.stack(C.past_displacements(x, past, past.shape[1]), dim=1))
    return out


def _predict_next(model: torch.nn.Module, kind: ModelKind, spec: dict, x: torch.Tensor, past) -> torch.Tensor:
    """Next positions (float64) from float64 positions and the frames before; the model sees float32."""
    y = model(*[a.float() for a in model_inputs(kind, x, past)]).double()
    return C.next_frame(kind.output, x, y, past, spec.get("ar_coefficients", ()))


class _TorchPredictor:
    """A model as a runtime predictor: ``history`` frames before, ``step(x, previous)`` in float64 numpy."""

    def __init__(self, model: torch.nn.Module, kind: ModelKind, spec: dict, history: int) -> None:
        self.model, self.kind, self.spec, self.history = model, kind, spec, history

    def step(self, x: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
        past = None
        if self.history:
            past = torch.as_tensor(C.as_past(np.asarray(previous, dtype=np.float64), self.history, xt.shape))
        with torch.no_grad():
            return _predict_next(self.model, self.kind, self.spec, xt, past).numpy()


def step_function(model: torch.nn.Module, kind: ModelKind | str, spec: dict | None = None, history: int | None = None):
    """The model as a runtime predictor (``history`` and ``step(x, previous)``, positions in float64)."""
    kind = kind if isinstance(kind, ModelKind) else get_kind(kind)
    spec = dict(spec or {})
    h = int(spec["history"]) if kind.window else kind.past_frames(0)
    return _TorchPredictor(model, kind, spec, h if history is None else history)


def _windows(frames: torch.Tensor, ts: np.ndarray, h: int):
    """x = frames[t], past = frames[t-h:t] (chronological), y = frames[t+1] for the pairs ``ts``."""
    ts = torch.as_tensor(ts, dtype=torch.int64)
    past = frames[ts[:, None] + torch.arange(-h, 0)[None, :]] if h else None  # as runtime's frames_before
    return frames[ts], past, frames[ts + 1]


def _unrolled_loss(model, kind, spec, x, past, targets, scale: float) -> torch.Tensor:
    """Mean over U autoregressive steps of the squared error of the next frame, in units of ``scale``: step 1 is
    the one-step loss; later steps feed the model its own predictions (the window shifts), as a rollout does.

    Shapes: ``x`` ``(B, 12, 3)``, ``past`` ``(B, H, 12, 3)``, ``targets`` ``(B, U, 12, 3)`` (float64).
    """
    loss = x.new_zeros((), dtype=torch.float32)
    for k in range(targets.shape[1]):
        nxt = _predict_next(model, kind, spec, x, past)
        loss = loss + (((nxt - targets[:, k]) / scale) ** 2).mean().float()
        past = torch.cat([past[:, 1:], x[:, None]], dim=1)
        x = nxt
    return loss / targets.shape[1]


def _val_mse(model, kind, spec, vx, vpast, vy) -> float:
    model.eval()
    with torch.no_grad():
        err = _predict_next(model, kind, spec, vx, vpast) - vy
    model.train()
    return float((err * err).mean())
