"""A training step's index batch and its uint8 inputs on the training device, wherever the data lives.

With device placement this is `idx = next(sampler); x = train_x[idx]`, as it always was. With host
placement (`ssl_kd.data.placement.HostTensor`) the sampler draws host indices (no device read-back
to gather with), and while a step computes, a worker thread already gathers the next step's batch
(`InfiniteSampler.peek`) and copies it on a side stream, so the copy overlaps compute. A prefetched
batch is used only if its indices equal the ones drawn, so resuming or any other change to the
sampler can never feed a wrong batch: both placements give the same indices and the same bytes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from ssl_kd.data.placement import HostTensor
from ssl_kd.data.sampler import InfiniteSampler


class StepFeed(Iterator[tuple[torch.Tensor, torch.Tensor]]):
    """Yields (indices, inputs) on the training device; checkpoints as its sampler.

    `part` maps the sampler's global batch of indices to the part this process trains on (under
    torchrun its contiguous 1/N: `DistInfo.shard`); only those rows are gathered (and copied).
    """

    def __init__(self, indices: torch.Tensor, batch_size: int, seed: int, inputs: torch.Tensor | HostTensor,
                 part: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.inputs = inputs
        self.sampler = InfiniteSampler(indices.to(inputs.device), batch_size, seed)  # the indices live with the rows
        self.part = part or (lambda idx: idx)
        self.pending: tuple[torch.Tensor, Future] | None = None
        self.worker: ThreadPoolExecutor | None = None
        self.prefetched = 0  # batches served from the prefetch (tests, benchmarks)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.part(next(self.sampler))
        if not isinstance(self.inputs, HostTensor):
            return idx, self.inputs[idx]
        fetched = self._take(idx)
        if self.worker is None:
            self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssl_kd-prefetch")
        upcoming = self.part(self.sampler.peek())
        self.pending = (upcoming, self.worker.submit(self.inputs.fetch, upcoming))
        return self.inputs.claim(fetched)

    def _take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """The prefetched batch if it is `idx`'s, else a fresh fetch."""
        pending, self.pending = self.pending, None
        if pending is not None and torch.equal(pending[0], idx):
            self.prefetched += 1
            return pending[1].result()
        return self.inputs.fetch(idx)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
        self.pending = None
