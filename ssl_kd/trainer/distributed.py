"""Data-parallel training with torchrun: `torchrun --nproc_per_node N tools/train.py ...`.

The rule, chosen so that N processes train the same model as one process:

- `train.batch_size` (and `uratio`) are the GLOBAL batch. Every rank draws the same global index
  batch from the same seeded samplers and keeps its own contiguous 1/N of the indices: ranks see
  disjoint examples, in the same order as a one-process run, and the learning rate needs no
  scaling (the global batch is unchanged). The batch must divide by N. Each rank gathers and
  augments only its own examples: an example's views come from its own random stream, keyed by
  (seed, step, view, position in the global batch, dataset index) (`ssl_kd.data.draws`), so they
  are the views one process draws for it, and `--resume` stays exact.
- DistributedDataParallel averages the gradients, so parameters, optimiser state and the EMA of
  the parameters stay identical on every rank. BatchNorm statistics are per rank (each normalises
  its own 1/N); `train.sync_bn=true` converts to SyncBatchNorm (CUDA/NCCL only). Float buffers
  (running statistics) are averaged across ranks at every evaluation, so the evaluated model, and
  the checkpoints written right after it, are the same on every rank; a `save_every` checkpoint
  between evaluations holds rank 0's statistics (saving has no collective, as rank 0 alone decides
  when it writes best.pt).
- Random draws inside the algorithm's step (dropout) come from a per-rank stream (`rank_rng`), so
  ranks do not repeat each other's masks.
- Training scalars (losses, mask ratios, pseudo-label accuracies) are averaged over the ranks at
  log steps in one all-reduce (`mean_scalars`), so the log shows the global batch, not rank 0's
  part (a ratio such as the masked pseudo-label accuracy is the mean of the ranks' ratios).
- Algorithm state that follows the examples of a batch is updated from the gathered global batch
  (`gather_cat`: FlexMatch's record of confident predictions), so it is the same on every rank.
- Evaluation is sharded: each rank predicts its contiguous part of the test (and validation) set
  and the logits are gathered (`sharded`), so every rank computes the one-process metrics from
  the whole set. Influence (KD-AIF) scores the gathered global batch and solves on every rank from
  the same data, so its statistics and weights are the same on every rank and as in one process;
  a trainable teacher's gradients are averaged across ranks (`average_grads_`).
- Rank 0 alone writes logs, metrics and checkpoints.
- Failures: the divergence guard's decision is global (every rank stops at the same check step);
  a rank that raises exits non-zero with its message and torchrun stops the others; a rank left
  waiting in a collective gives up after `train.dist_timeout_s` instead of hanging. A signal stops
  every rank at the same log step (`Trainer.stop_agreed`), where rank 0 saves.

Multi-node: `torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

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


def world() -> DistInfo:
    """This process's place from the process group (for code that is not handed a DistInfo)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_is_main() -> bool:
    """Rank 0 (or no torchrun), from the environment: usable before and after the process group."""
    return int(os.environ.get("RANK", "0")) == 0


def is_peer_failure(err: BaseException) -> bool:
    """Whether `err` is a collective's failure (a peer died, hung or closed its connection)."""
    text = str(err)
    return env_world_size() > 1 and (isinstance(err, dist.DistError) or any(
        key in text for key in ("gloo", "NCCL", "Connection closed", "Connection reset", "Timed out", "timed out")))


def peer_failure(err: BaseException) -> str:
    """One line for a collective that failed because another process of the job died or hung."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    rank, size = int(os.environ.get("RANK", "0")), env_world_size()
    others = [r for r in range(size) if r != rank]
    who = f"rank {others[0]}" if len(others) == 1 else f"one of ranks {others[0]}-{others[-1]}"
    return (f"rank {rank} of {size}: a collective failed ({first[:160]}...): {who} stopped or hung "
            f"(its own log above says why)")


def init_from_env(device: torch.device, timeout_s: float = 600.0) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes in the environment (none: one process).

    NCCL on CUDA (each rank on GPU LOCAL_RANK), gloo on the CPU. A collective that waits longer
    than `timeout_s` for another rank (one that died or went elsewhere) raises instead of hanging."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not timeout_s > 0:
        raise ConfigError(f"train.dist_timeout_s={timeout_s}: give the seconds a collective may wait for another process (> 0)")
    if world_size == 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return info, device


@contextmanager
def process_group(device: torch.device, timeout_s: float = 600.0) -> Iterator[tuple[DistInfo, torch.device]]:
    """init_from_env for the block, then the group it created destroyed while the interpreter is
    still whole: left to interpreter teardown, gloo's worker threads can abort the process
    ("terminate called without an active exception", SIGABRT) after a run that succeeded.
    A group that existed before the block (a caller's own) is left alone."""
    created = not (dist.is_available() and dist.is_initialized())
    info, device = init_from_env(device, timeout_s)
    try:
        yield info, device
    except BaseException:
        if created and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - after a peer's failure; the run's own error is the one to report
                pass
        raise
    if created and dist.is_initialized():
        dist.destroy_process_group()


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


@contextmanager
def rank_rng(info: DistInfo, seed: int, step: int, device: torch.device, phase: int = 0) -> Iterator[None]:
    """Random numbers of this rank's own for the block (the network's dropout masks): every rank
    seeds the global RNG alike (one run, one seed), and without this would draw the same masks for
    their different examples. Seeded by (seed, step, rank, phase), so resume stays exact;
    the shared stream continues unchanged after the block. One process: no change at all."""
    if not info.enabled:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(((seed * 1_000_003 + step) * 4096 + info.rank) * 2 + phase)
        yield


def part_sizes(n: int, world_size: int) -> list[int]:
    """Sizes of the contiguous parts of n items over the ranks, in rank order (balanced: they differ
    by at most one; a global batch that divides by N gives DistInfo.shard's parts)."""
    return [n // world_size + (r < n % world_size) for r in range(world_size)]


def gather_parts(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Every rank's `x` (this rank's part, of sizes[rank] rows) concatenated in rank order: each is
    padded to the largest part for all_gather, then trimmed."""
    pad = max(sizes) - x.shape[0]
    if pad:
        x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def sharded(fn: Callable[[slice], Any], n: int) -> Any:
    """`fn(slice(0, n))` computed in parts: each rank calls `fn` on its contiguous part of the n
    items and the results (a tensor or a tuple of tensors, rows = items) are gathered, so every
    rank gets the whole result for 1/N of the work. A collective: every rank must call it with
    the same n. One process, or fewer items than ranks: `fn` on everything."""
    info = world()
    if not info.enabled or n < info.world_size:
        return fn(slice(0, n))
    sizes = part_sizes(n, info.world_size)
    start = sum(sizes[: info.rank])
    out = fn(slice(start, start + sizes[info.rank]))
    if isinstance(out, torch.Tensor):
        return gather_parts(out, sizes)
    return tuple(gather_parts(t, sizes) for t in out)


def local_part(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of a global batch (the inverse of gather_cat)."""
    return world().shard(x)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of `x` over every rank's elements (equal-sized shards); one process: x.mean()."""
    mean = x.float().mean().clone()
    all_reduce_mean_([mean], world())
    return mean


def average_grads_(params: Iterable[torch.Tensor]) -> None:
    """Average the gradients of `params` across ranks in place (for a network trained outside
    DistributedDataParallel, such as a teacher with its own optimiser). Which parameters have a
    gradient is the same on every rank (the same code runs). One process: untouched."""
    info = world()
    if info.enabled:
        all_reduce_mean_([p.grad for p in params if p.grad is not None], info)


def all_true(flag: bool) -> bool:
    """Whether `flag` holds on every rank (one host-side all-reduce; one process: `flag`)."""
    info = world()
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """`x` of every rank concatenated in rank order, i.e. a global batch from its shards; for
    algorithm state that must follow the whole batch (FlexMatch's per-example record). One
    process: `x` itself."""
    info = world()
    return gather_parts(x, [x.shape[0]] * info.world_size) if info.enabled else x


class SilentLogger:
    """What ranks other than 0 log to: nothing (rank 0's RunLogger writes the run folder)."""

    def __init__(self, eval_key: str) -> None:
        self.eval_key = eval_key

    def scalars(self, *args: object) -> None: ...

    def histogram(self, *args: object) -> None: ...

    def figure(self, *args: object) -> None: ...

    def image(self, *args: object) -> None: ...

    def text(self, *args: object) -> None: ...

    def hparams(self, *args: object) -> None: ...

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


def mean_scalars(logs: dict[str, Any], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Scalar logs (tensors or numbers) as floats averaged over the ranks: one all-reduce of them
    all, in sorted key order (every rank logs the same keys: the same code runs). One process:
    the floats themselves."""
    if not info.enabled or not logs:
        return {k: float(v) for k, v in logs.items()}
    keys = sorted(logs)
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    values = torch.stack([torch.as_tensor(logs[k]).detach().to(on, torch.float64).reshape(()) for k in keys])
    dist.all_reduce(values)
    return dict(zip(keys, (values / info.world_size).tolist()))


def average_buffers_(modules: list[nn.Module | None], info: DistInfo) -> None:
    """Make per-rank BatchNorm statistics (of the model and its EMA) the same on every rank."""
    all_reduce_mean_([b for m in modules if m is not None for b in m.buffers()], info)
