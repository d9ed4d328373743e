"""Learning-rate schedules, chosen by `train.lr_schedule`, each with an optional linear warm-up:

- `cosine` (FixMatch's): lr * cos(cycles * pi * k / K);
- `multistep` (the CIFAR distillation zoo's, RepDistiller/CRD/DKD): lr * decay^m, m the number of
  milestones passed, milestones given as fractions of train.steps (150/180/210 of 240 epochs is
  0.625/0.75/0.875);
- `linear` (Hugging Face's run_glue): linear warm-up, then linear decay to 0 at train.steps; what
  AdamW runs always use (ssl_kd.trainer.optim), and what their config.yaml records.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ssl_kd.errors import ConfigError

LR_SCHEDULES = ("cosine", "multistep", "linear")
SCHEDULE_OPTIONS = {"cosine": ("cosine_cycles",), "multistep": ("lr_milestones", "lr_decay"), "linear": ()}  # TrainConfig keys each reads


def cosine_factor(step: int, total_steps: int, cycles: float, warmup: int = 0) -> float:
    """The multiplier of the base learning rate at `step` (what the optimiser uses for that step)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return max(0.0, math.cos(math.pi * cycles * progress))


def multistep_factor(step: int, total_steps: int, milestones: tuple[float, ...], decay: float, warmup: int = 0) -> float:
    """The multiplier at `step` under step decay at the fractions `milestones` of `total_steps`."""
    if step < warmup:
        return (step + 1) / warmup
    return decay ** sum(step >= round(m * total_steps) for m in milestones)


def linear_factor(step: int, total_steps: int, warmup: int) -> float:
    """Linear warm-up from 1/warmup to 1 over `warmup` steps, then linear decay to 0 at `total_steps`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def lr_factor(step: int, train_cfg: Any) -> float:
    """The multiplier of train.lr at `step` under the run's `train.lr_schedule`."""
    t = train_cfg
    if t.lr_schedule == "multistep":
        return multistep_factor(step, t.steps, t.lr_milestones, t.lr_decay, t.warmup_steps)
    if t.lr_schedule == "linear":
        return linear_factor(step, t.steps, t.warmup_steps)
    return cosine_factor(step, t.steps, t.cosine_cycles, t.warmup_steps)


def make_schedule(optimizer: torch.optim.Optimizer, train_cfg: Any) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train_cfg))


def check_schedule(train_cfg: Any) -> None:
    t = train_cfg
    if t.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"train.lr_schedule={t.lr_schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
    ms = list(t.lr_milestones)
    if t.lr_schedule == "multistep" and (not all(0 < m < 1 for m in ms) or ms != sorted(ms) or not 0 < t.lr_decay <= 1):
        raise ConfigError(f"train.lr_milestones={tuple(ms)} and train.lr_decay={t.lr_decay}: give increasing fractions "
                          "of train.steps in (0, 1), e.g. [0.625,0.75,0.875], and a decay in (0, 1]")


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
