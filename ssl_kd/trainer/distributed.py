"""Data-parallel training with torchrun: `torchrun --nproc_per_node N tools/train.py ...`.

The rule, chosen so that N processes train the same model as one process:

- `train.batch_size` (and `uratio`) are the GLOBAL batch. Every rank draws the same global index
  batch from the same seeded samplers, makes the views of the whole batch with the same RNG
  stream, and keeps its own contiguous 1/N of it: ranks see disjoint examples, in the same order
  as a one-process run, and the learning rate needs no scaling (the global batch is unchanged).
  The batch must divide by N. Views are thus computed N times over; augmentation is a few percent
  of a step, and this keeps every rank's RNG stream identical, which makes `--resume` exact.
- DistributedDataParallel averages the gradients, so parameters, optimiser state and the EMA of
  the parameters stay identical on every rank. BatchNorm statistics are per rank (each normalises
  its own 1/N); `train.sync_bn=true` converts to SyncBatchNorm (CUDA/NCCL only). Float buffers
  (running statistics) are averaged across ranks at every evaluation, so the evaluated model, and
  the checkpoints written right after it, are the same on every rank; a `save_every` checkpoint
  between evaluations holds rank 0's statistics (saving has no collective, as rank 0 alone decides
  when it writes best.pt).
- Algorithm state that follows the examples of a batch is updated from the gathered global batch
  (`gather_cat`: FlexMatch's record of confident predictions), so it is the same on every rank.
- Rank 0 alone writes logs, metrics and checkpoints; every rank evaluates (the same numbers).
- A rank that fails exits non-zero with its message; torchrun then stops the other ranks.

Multi-node: `torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ssl_kd.algorithm import Batch
from ssl_kd.errors import ConfigError


@dataclass
class DistInfo:
    """This process's place in the job; the defaults are a plain one-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous 1/N of a global batch along dim 0."""
        if not self.enabled:
            return x
        size = x.shape[0] // self.world_size
        return x[self.rank * size : (self.rank + 1) * size]

    def shard_batch(self, batch: Batch) -> Batch:
        if not self.enabled:
            return batch
        return Batch(x_l={k: self.shard(v) for k, v in batch.x_l.items()}, y_l=self.shard(batch.y_l),
                     idx_l=self.shard(batch.idx_l), x_u={k: self.shard(v) for k, v in batch.x_u.items()},
                     idx_u=None if batch.idx_u is None else self.shard(batch.idx_u))


def init_from_env(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes in the environment (none: one process).

    NCCL on CUDA (each rank on GPU LOCAL_RANK), gloo on the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def check_batch(info: DistInfo, batch_size: int) -> None:
    """The global batch B must split evenly (mu * B then does too)."""
    if batch_size % info.world_size:
        raise ConfigError(f"train.batch_size={batch_size} is the global batch and must divide by the {info.world_size} "
                          f"processes; use a multiple of {info.world_size}")


def convert_batchnorm(model: nn.Module, info: DistInfo, device: torch.device, sync_bn: bool) -> nn.Module:
    """`model` with SyncBatchNorm layers when asked and distributed (before the EMA and optimiser see it)."""
    if not (info.enabled and sync_bn):
        return model
    if device.type != "cuda":
        raise ConfigError("train.sync_bn=true needs CUDA (SyncBatchNorm has no CPU kernel); drop it on the CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """The module algorithms call: DDP around `model` (sharing its weights) when distributed."""
    if not info.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """`x` of every rank concatenated in rank order, i.e. a global batch from its shards; for
    algorithm state that must follow the whole batch (FlexMatch's per-example record). One
    process: `x` itself."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class SilentLogger:
    """What ranks other than 0 log to: nothing (rank 0's RunLogger writes the run folder)."""

    def __init__(self, eval_key: str) -> None:
        self.eval_key = eval_key

    def scalars(self, *args: object) -> None: ...

    def histogram(self, *args: object) -> None: ...

    def figure(self, *args: object) -> None: ...

    def image(self, *args: object) -> None: ...

    def per_class(self, *args: object) -> None: ...

    def evaluation(self, row: dict) -> bool:
        return False

    def summary(self, *args: object, **kwargs: object) -> dict:
        return {}

    def close(self) -> None: ...


def all_reduce_mean_(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Average floating-point tensors across ranks in place; integer ones and one process: untouched."""
    floats = [t for t in tensors if t.is_floating_point()]
    if not info.enabled or not floats:
        return
    flat = torch.cat([t.reshape(-1).float() for t in floats])
    dist.all_reduce(flat)
    flat /= info.world_size
    for t, part in zip(floats, flat.split([t.numel() for t in floats])):
        t.copy_(part.view_as(t))


def average_buffers_(modules: list[nn.Module | None], info: DistInfo) -> None:
    """Make per-rank BatchNorm statistics (of the model and its EMA) the same on every rank."""
    all_reduce_mean_([b for m in modules if m is not None for b in m.buffers()], info)
