"""Infinite, seeded, resumable index batches (no DataLoader: the data lives on the training device)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ssl_kd.errors import CheckpointError, ConfigError, DataError


class InfiniteSampler(Iterator[torch.Tensor]):
    """Yields batches of `indices` forever, reshuffled every epoch.

    The shuffle uses a CPU torch.Generator of its own, so batches depend only on `seed`, not on
    the global RNG or the device. An epoch's tail continues into the next epoch, so every batch is
    full, even when `batch_size` exceeds the number of indices (then a batch spans epochs and may
    repeat an index). `state_dict()` captures the epoch order and position, so a resumed run
    continues with exactly the batches the uninterrupted run would have drawn.
    """

    def __init__(self, indices: torch.Tensor, batch_size: int, seed: int) -> None:
        if indices.numel() == 0:
            raise DataError("cannot sample batches from an empty split; check the dataset's label count and "
                            "data.val_per_class.")
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}; set train.batch_size "
                              "(and train.uratio for the unlabelled batch) to positive numbers.")
        self.indices = indices.flatten()
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = self._new_epoch()
        self.position = 0

    def _new_epoch(self) -> torch.Tensor:
        """A fresh order, moved once per epoch to the indices' device (no per-batch transfer)."""
        return torch.randperm(len(self.indices), generator=self.generator).to(self.indices.device)

    def __next__(self) -> torch.Tensor:
        parts, needed = [], self.batch_size
        while needed:
            if self.position == len(self.order):
                self.order, self.position = self._new_epoch(), 0
            taken = self.order[self.position : self.position + needed]
            parts.append(taken)
            self.position += len(taken)
            needed -= len(taken)
        return self.indices[parts[0] if len(parts) == 1 else torch.cat(parts)]

    def peek(self) -> torch.Tensor:
        """The batch the next `next()` will return, leaving the sampler's state as it was (prefetching)."""
        saved = self.generator.get_state(), self.order, self.position
        batch = next(self)
        self.generator.set_state(saved[0])
        self.order, self.position = saved[1], saved[2]
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "order": self.order.to("cpu", copy=True),
            "position": self.position,
            "num_indices": len(self.indices),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_indices"] != len(self.indices):
            raise CheckpointError(
                f"the checkpoint's sampler drew from {state['num_indices']} indices but this split has "
                f"{len(self.indices)}; resume with the same dataset and data settings as the checkpointed run."
            )
        self.generator.set_state(state["generator"].cpu())  # a checkpoint may be mapped to the GPU
        self.order = state["order"].to(self.indices.device)
        self.position = int(state["position"])
