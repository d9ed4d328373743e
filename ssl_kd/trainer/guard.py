"""Divergence guard: non-finite weights never reach a checkpoint.

The per-step path only appends the (device) loss to a short list; the host looks at it, and at
every floating tensor of the model, the EMA and the optimiser state, on check steps
(`train.check_finite_every`) and before every save or evaluation. On the GPU this keeps the step
free of host-device synchronisation; a divergence is caught at most N steps late, and the steps
in between are thrown away with the rest of the run, never saved.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ssl_kd.errors import SSLKDError
from ssl_kd.trainer import distributed


class DivergenceError(SSLKDError):
    """Training produced a non-finite loss or non-finite weights; nothing was saved after it."""


def floating_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every floating-point tensor inside nested dicts/lists (a state dict, optimiser state)."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from floating_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from floating_tensors(value)


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """One host sync for any number of tensors (per-tensor reductions stay on their device)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.numel()]
    return bool(torch.stack(flags).all()) if flags else True


def count_nonfinite(tensors: Iterable[torch.Tensor]) -> int:
    return int(sum(int((~torch.isfinite(t)).sum()) for t in tensors))


def nonfinite_parts(parts: Mapping[str, Any]) -> dict[str, int]:
    """{part name: number of non-finite values} for the parts that have any (slow path)."""
    counts = {name: count_nonfinite(floating_tensors(obj)) for name, obj in parts.items()}
    return {name: n for name, n in counts.items() if n}


class FiniteGuard:
    """Remembers the losses since the last check and checks the training state on demand."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.losses: list[torch.Tensor] = []
        self.first_step = 0  # the step of losses[0]
        self.last_good: tuple[int, Path] | None = None  # (step, path) of the last checkpoint written

    def record(self, step: int, loss: torch.Tensor) -> None:
        """Per step: no host sync, only a detached reference to the loss."""
        if not self.losses:
            self.first_step = step
        self.losses.append(loss.detach())

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def check(self, step: int, parts: Mapping[str, Any]) -> None:
        """Raise DivergenceError when a recorded loss or any tensor of `parts` is not finite."""
        losses = torch.stack(self.losses).float() if self.losses else torch.zeros(0)
        tensors = [losses, *(t for obj in parts.values() for t in floating_tensors(obj))]
        finite = all_finite(tensors)
        if distributed.all_true(finite):  # torchrun: every rank stops at the same check step
            self.losses.clear()
            return
        if finite:
            raise DivergenceError(f"training diverged by step {step} in another process (its own error names the "
                                  f"cause); this process's loss and weights are finite; lower train.lr (--lr) or check the data")
        bad = nonfinite_parts(parts)
        values = losses.tolist()
        first_bad = next((self.first_step + i for i, v in enumerate(values) if not torch.isfinite(torch.tensor(v))), None)
        shown = ", ".join(f"{v:.4g}" for v in values[-5:])
        where = (f"the loss first became non-finite at step {first_bad}" if first_bad is not None
                 else f"the loss stayed finite over steps {self.first_step}-{step}")
        what = ", ".join(f"{n} in the {name}" for name, n in bad.items()) or "none in the weights"
        good = (f"last good checkpoint: {self.last_good[1]} (step {self.last_good[0]})" if self.last_good
                else "no checkpoint was written before it")
        raise DivergenceError(
            f"training diverged by step {step}: {where} (last losses: {shown}); non-finite values: {what}; "
            f"nothing was saved after the divergence, {good}; lower train.lr (--lr) or check the data"
        )
