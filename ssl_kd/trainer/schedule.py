"""FixMatch's learning-rate schedule: lr * cos(cycles * pi * k / K), with optional linear warm-up."""
from __future__ import annotations

import math

import torch


def cosine_factor(step: int, total_steps: int, cycles: float, warmup: int = 0) -> float:
    """The multiplier of the base learning rate at `step` (what the optimiser uses for that step)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return max(0.0, math.cos(math.pi * cycles * progress))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, cycles: float, warmup: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total_steps, cycles, warmup))


def make_optimizer(model: torch.nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float,
                   fused: bool | None = None) -> torch.optim.SGD:
    """SGD with weight decay on weights only (FixMatch excludes biases and BN parameters).

    `fused` (default: when the parameters are on a GPU) updates every parameter in one kernel;
    on the CPU the default per-parameter update is kept, so CPU runs stay bit-for-bit as before.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    if fused is None:
        fused = bool(decay + no_decay) and all(p.is_cuda for p in decay + no_decay)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused or None)
