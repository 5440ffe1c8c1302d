"""Batched, seeded, time-budgeted training with early stopping on validation, and honest metrics."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e3traj.runtime import (
    MAX_AR_ORDER,
    DataSource,
    InputError,
    Split,
    UsageError,
    choose_ar,
    evaluate_predictor,
    one_step_metrics,
)

from ._checkpoint import build_model, load_checkpoint, save_checkpoint
from ._ddp import Dist
from ._kinds import KINDS, ModelKind, get_kind
from ._steps import _unrolled_loss, _val_mse, _windows, model_inputs, step_function

__all__ = ["TrainConfig", "TrainResult", "train_model", "step_function", "evaluate_checkpoint"]


@dataclass
class TrainConfig:
    """Training settings. ``epochs`` and ``max_time`` (seconds) are budgets: whichever ends first stops."""

    model: str = "e3nn"
    epochs: int = 200
    max_time: float | None = 120.0
    batch_size: int = 32
    lr: float | None = None  # default: the kind's (train/_kinds.py: 1e-3 e3nn, 3e-3 e3nn-velocity, 1e-2 baseline)
    lr_factor: float = 0.5  # ReduceLROnPlateau on validation MSE
    lr_patience: int = 3
    min_lr: float = 1e-5
    patience: int = 5  # early stopping: epochs without a better validation MSE
    seed: int = 0
    train_fraction: float = 0.8
    threads: int | None = None
    # frames in the window of a history kind (AR order K; K - 1 previous displacements); None: the AR order the
    # predictor suite chooses on validation (at least 2), resolved (and recorded) when training starts
    history: int | None = None
    unroll: int = 1  # window kinds: the loss sums the errors of this many autoregressive steps (1: one-step)
    e3nn: dict[str, Any] = field(default_factory=dict)  # overrides of E3nnConfig fields

    def __post_init__(self) -> None:
        get_kind(self.model, error=UsageError)
        h = self.history
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or not 2 <= h <= MAX_AR_ORDER):
            raise UsageError(
                f"history must be an integer in 2..{MAX_AR_ORDER} (frames in the window), got {self.history!r}"
            )
        if isinstance(self.unroll, bool) or not isinstance(self.unroll, int) or not 1 <= self.unroll <= 16:
            raise UsageError(f"unroll must be an integer in 1..16 (steps in the loss), got {self.unroll!r}")
        if self.epochs < 1:
            raise UsageError(f"epochs must be >= 1, got {self.epochs!r}")
        if self.max_time is not None and not self.max_time > 0:
            raise UsageError(f"max_time must be > 0 seconds, got {self.max_time!r}")
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {self.batch_size!r}")

    @property
    def kind(self) -> ModelKind:
        return KINDS[self.model]

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.kind.learning_rate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    checkpoint: dict[str, Any]
    path: Path | None
    stopped_because: str


def _build(cfg: TrainConfig, scale: float, input_scale: float, spec: dict, n_beads: int) -> torch.nn.Module:
    config = None
    if cfg.kind.e3nn:
        from ._config import training_config

        config = training_config(cfg.kind, cfg.e3nn, cfg.history or 2, n_beads)
    return cfg.kind.build(config, scale, input_scale, cfg.seed, spec or {})


def train_model(
    data: DataSource,
    cfg: TrainConfig,
    *,
    output: str | os.PathLike | None = None,
    resume: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train one model on the chapter's split of ``data``; write the best weights to ``output``.

    The e3nn model regresses the displacement divided by one scalar (the RMS training displacement), which keeps
    equivariance; the baseline regresses the next positions directly, as in the chapter.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = Dist.from_env()  # under torchrun/srun: this rank's share of every batch (train/_ddp.py)
    progress, log = progress and dist.main, log if dist.main else None
    split: Split = data.split(cfg.train_fraction)
    frames = torch.as_tensor(split.frames, dtype=torch.float64)
    kind = cfg.kind
    if kind.window and cfg.history is None:  # the kind's window, or the one the suite's best AR(k) uses
        cfg.history = kind.default_history or max(2, choose_ar(split)[0].order)
    h = kind.past_frames(cfg.history or 2)  # frames before the current one (velocity: 1, history: K - 1)
    if split.history_room < h or not len(split.train_index(h)):
        raise InputError(f"{data.path or data.source}: too few frames for a history of {cfg.history}")
    x64, past64, y64 = _windows(frames, split.train_index(h), h)
    vx, vpast, vy = _windows(frames, split.val_index(h), h)
    spec: dict[str, Any] = {}
    if kind.prepare is not None:
        if resume is not None and resume.get("spec"):
            spec = dict(resume["spec"])
        else:
            spec = kind.prepare(split, x64, past64, y64, cfg.history)
    inputs64 = model_inputs(kind, x64, past64)
    inputs32 = [a.float() for a in inputs64]
    target64 = kind.target(x64, y64, past64, spec)  # what the output stands for: displacement or correction
    scale = float(torch.sqrt((target64**2).mean()))
    d1 = (x64 - past64[:, -1]) if h else None
    # the RMS of the float32 displacements the model sees (as the velocity bundles were built)
    input_scale = float(torch.sqrt((d1.float().double() ** 2).mean())) if kind.uses_input_scale else 1.0
    if not math.isfinite(scale) or scale <= 0 or not math.isfinite(input_scale) or input_scale <= 0:
        raise InputError(
            f"{data.path or data.source}: training frames do not move (RMS target {scale}); check the data"
        )
    if resume is not None:
        if resume["kind"] != cfg.model:
            raise UsageError(f"cannot resume a {resume['kind']} checkpoint as --model {cfg.model}")
        if resume.get("data", {}).get("sha256") != data.sha256:
            raise UsageError("the resumed checkpoint was trained on other data (sha256 differs); pass the same --data")
        scale = float(resume["scale"])
        input_scale = float(resume.get("input_scale", 1.0))

    torch.manual_seed(cfg.seed)
    model = _build(cfg, scale, input_scale, spec, n_beads=int(frames.shape[1]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]  # none: fitted in closed form (langevin)
    opt = torch.optim.Adam(params or [torch.nn.Parameter(torch.zeros(()))], lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr
    )
    history: list[dict[str, float]] = []
    start_epoch, elapsed0 = 0, 0.0
    best_val, best_epoch, bad_epochs = math.inf, -1, 0
    best_state = copy.deepcopy(model.state_dict())
    if kind.window and resume is None:  # the untrained model is AR(K) + head: the mark to beat
        best_val, best_epoch = _val_mse(model, kind, spec, vx, vpast, vy), 0
        if log is not None:
            log(f"epoch 0 (AR({cfg.history}) + linear head, before training): val_mse {best_val:.4g}")
    if resume is not None:
        r = resume["resume"]
        model.load_state_dict(r["last_state_dict"])
        opt.load_state_dict(r["optimizer"])
        sched.load_state_dict(r["scheduler"])
        start_epoch, elapsed0 = int(r["epoch"]), float(r["elapsed"])
        best_val, best_epoch, bad_epochs = float(r["best_val"]), int(r["best_epoch"]), int(r["bad_epochs"])
        best_state = resume["state_dict"]
        history = list(resume.get("history", []))

    n = len(x64)
    unrolled = unroll_ok = None
    if cfg.unroll > 1 and kind.window:  # targets x_{t+1} .. x_{t+U}; usable where all U train, in one trajectory
        ts = split.train_index(h)
        unroll_ok = torch.as_tensor(np.concatenate([np.arange(a + h, v) <= v - cfg.unroll for a, v, _ in split.parts]))
        unrolled = frames[torch.as_tensor(np.minimum(ts[:, None] + np.arange(1, cfg.unroll + 1), len(frames) - 1))]
    labels = (target64 / scale).float() if kind.scaled_labels else y64.float()
    start = time.perf_counter()
    stopped = "epochs" if params else "nothing to train (fitted in closed form)"
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=f"train {kind.name}", unit="epoch", leave=True)
    try:
        for epoch in range(start_epoch, cfg.epochs if params else start_epoch):
            g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            perm = torch.randperm(n, generator=g)
            total, count = 0.0, 0
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                if unrolled is not None:
                    idx = idx[unroll_ok[idx]]  # pairs whose `unroll` next frames are training frames
                    if not len(idx):
                        continue
                idx, weight = dist.share(idx)
                if unrolled is not None:
                    loss = _unrolled_loss(model, kind, spec, x64[idx], past64[idx], unrolled[idx], scale)
                else:
                    out = kind.raw(model, [a[idx] for a in inputs32])
                    loss = torch.mean((out - labels[idx]) ** 2)
                opt.zero_grad(set_to_none=True)
                (loss * weight).backward()  # weight: this rank's share of the global batch (1 on one process)
                dist.average_gradients(params)
                opt.step()
                total, count = total + float(loss.detach()) * len(idx) * (weight > 0), count + len(idx) * (weight > 0)
                if cfg.max_time is not None and dist.any(time.perf_counter() - start > cfg.max_time):
                    break
            total, count = dist.sum([total, count])
            val = dist.same(_val_mse(model, kind, spec, vx, vpast, vy))  # rank 0's: one early-stopping decision
            sched.step(val)
            elapsed = elapsed0 + time.perf_counter() - start
            history.append(
                {
                    "epoch": epoch + 1,
                    "time": elapsed,
                    "train_loss": total / max(count, 1),
                    "val_mse": val,
                    "lr": opt.param_groups[0]["lr"],
                }
            )
            if not math.isfinite(val):
                stopped = "diverged (non-finite validation MSE); kept the best epoch"
                break
            if val < best_val:
                best_val, best_epoch, bad_epochs = val, epoch + 1, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
            if bar is not None:
                bar.set_postfix(loss=f"{total / max(count, 1):.3g}", val_mse=f"{val:.3g}", best=f"{best_val:.3g}")
                bar.update(1)
            if log is not None:
                log(f"epoch {epoch + 1}: loss {total / max(count, 1):.4g} val_mse {val:.4g}")
            if bad_epochs >= cfg.patience:
                stopped = f"early stopping (no better validation MSE for {cfg.patience} epochs)"
                break
            if cfg.max_time is not None and dist.any(time.perf_counter() - start > cfg.max_time):
                stopped = f"time budget ({cfg.max_time:g} s)"
                break
    finally:
        if bar is not None:
            bar.close()

    last_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    metrics = one_step_metrics(step_function(model, kind, spec), split)
    noise_scale = kind.noise_scale(step_function(model, kind, spec), spec, split)
    metrics["best_epoch"] = best_epoch
    metrics["train_seconds"] = history[-1]["time"] if history else 0.0
    config = model.net.config.to_dict() if kind.e3nn else {}
    pool = split.train_index(max(h, 1))
    sample_idx = torch.as_tensor(pool[np.linspace(0, len(pool) - 1, 16).astype(np.int64)])
    ckpt = {
        "kind": kind.name,
        "config": config,
        "state_dict": best_state,
        "scale": scale,
        "input_scale": input_scale,
        "noise_scale": noise_scale,
        "noise_rule": kind.noise_rule,
        "n_beads": int(frames.shape[1]),
        "spec": spec,
        "train": cfg.to_dict(),
        "data": {
            "source": data.source,
            "sha256": data.sha256,
            "file_sha256": data.file_sha256,
            "n_frames": int(len(data.frames)),
            "parts": [dict(p) for p in data.parts],  # several trajectories: each one's source and sha256
            "n_train": int(split.n_train),
            "n_val": int(len(split.val_x)),
            "train_fraction": cfg.train_fraction,
        },
        "metrics": metrics,
        # a few training inputs travel with the checkpoint so that export can check parity on real frames
        "sample_frames": frames[sample_idx],
        "sample_previous": frames[sample_idx - 1],
        "sample_past": torch.stack([frames[sample_idx - max(h, 1) + i] for i in range(max(h, 1))], dim=1),
        "history": history,
        "stopped_because": stopped,
        "resume": {
            "last_state_dict": last_state,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": history[-1]["epoch"] if history else start_epoch,
            "elapsed": history[-1]["time"] if history else elapsed0,
            "best_val": best_val,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
        },
        "versions": {"torch": str(torch.__version__)},
    }
    try:
        path = save_checkpoint(output, ckpt) if output is not None and dist.main else None  # rank 0 writes
    finally:
        dist.barrier()  # the other ranks wait for it, and go on even if it failed
    return TrainResult(checkpoint=ckpt, path=path, stopped_because=stopped)


def evaluate_checkpoint(ckpt: dict[str, Any], data: DataSource, *, train_fraction: float | None = None, **kw):
    """Metrics of a checkpoint's model on ``data`` (see :func:`e3traj.runtime.evaluate_predictor`)."""
    from e3traj.runtime import check_beads

    from ._checkpoint import checkpoint_n_beads

    check_beads(data.frames.shape[1], data.path or data.source, checkpoint_n_beads(ckpt))
    model = build_model(ckpt)
    frac = train_fraction if train_fraction is not None else ckpt.get("train", {}).get("train_fraction", 0.8)
    split = data.split(frac)
    return evaluate_predictor(step_function(model, ckpt["kind"], ckpt.get("spec")), split, **kw)


__all__ += ["load_checkpoint"]
