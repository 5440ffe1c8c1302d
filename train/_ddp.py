"""Data-parallel training under ``torchrun`` (or ``srun``): P processes, each on its share of every global batch,
gradients averaged with ``torch.distributed`` (gloo).

- ``--batch-size`` is the global batch: each of the P ranks takes every P-th sample of it, so every training pair
  is seen once per epoch (no padding, no duplicates); a rank's loss is weighted by its share, so the averaged
  gradient is the global batch's mean gradient and P = 1 and P = 2 take the same steps up to float rounding.
- The gradients are all-reduced by hand in one flat buffer after ``backward``, not by ``DistributedDataParallel``:
  the model kinds call their models' methods (``raw``, ``net``), which the DDP wrapper's forward would not see.
- Validation runs whole on every rank (the validation part is small): it is exact and, the weights being equal
  after every averaged step, identical on every rank, so early stopping agrees everywhere.
- Rank 0 alone writes the checkpoint, the log and the progress bar; the time budget is decided collectively.

The process group (gloo: every tensor of the training is on the CPU, on CUDA machines too) comes from torchrun's
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``, or from srun's ``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``
(``SLURM_NTASKS`` is set in the whole batch script, not only under srun), with ``MASTER_ADDR``/``MASTER_PORT`` set
by the job script, as MACE does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

__all__ = ["Dist"]


class Dist:
    """This process's place among the ranks (``world == 1``: a plain single-process run, no communication)."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = int(rank), int(world)

    @classmethod
    def from_env(cls, environ=None) -> Dist:
        from e3traj.runtime import UsageError

        env = os.environ if environ is None else environ
        try:  # SLURM_STEP_NUM_TASKS: set by srun only (SLURM_NTASKS is set in the whole batch script)
            world = int(env.get("WORLD_SIZE", env.get("SLURM_STEP_NUM_TASKS", "1")) or 1)
            rank = int(env.get("RANK", env.get("SLURM_PROCID", "0")) or 0)
        except ValueError:
            raise UsageError(
                f"distributed run: WORLD_SIZE/RANK (or SLURM_STEP_NUM_TASKS/SLURM_PROCID) are not integers: "
                f"{env.get('WORLD_SIZE')!r}/{env.get('RANK')!r}"
            ) from None
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
                raise UsageError(
                    f"distributed run of {world} ranks without MASTER_ADDR/MASTER_PORT; start it with torchrun, or "
                    "export both in the job script (srun)"
                )
            os.environ.setdefault("RANK", str(rank))
            os.environ.setdefault("WORLD_SIZE", str(world))
            import datetime

            try:  # gloo: the training and its collectives run on CPU tensors, on CUDA machines too
                dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(minutes=10))
            except (RuntimeError, ValueError) as exc:
                where = f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}"
                raise UsageError(
                    f"distributed run: rank {rank} of {world} could not join the group at {where} "
                    f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}); check the address"
                ) from None
        return cls(rank, world)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's samples of a global batch and the weight of its mean loss (``n_rank * P / n_batch``; a rank
        whose share is empty runs one sample with weight 0 so that every rank joins the all-reduce)."""
        if self.world == 1:
            return idx, 1.0
        mine = idx[self.rank :: self.world]
        if not len(mine):
            return idx[:1], 0.0
        return mine, len(mine) * self.world / len(idx)

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over the ranks (one flat all-reduce)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def any(self, flag: bool) -> bool:
        """True when any rank's ``flag`` is (the time budget: every rank stops at the same batch)."""
        if self.world == 1:
            return bool(flag)
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks (the epoch's training loss over every sample)."""
        if self.world == 1:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def same(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (the validation MSE: every rank takes the same early-stopping step)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.broadcast(t, src=0)
        return float(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
