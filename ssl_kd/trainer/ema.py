"""Exponential moving average of a model, updated in place (no state-dict reloads per step)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` that never receives gradients."""
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def warmup_decay(decay: float, updates: int) -> float:
    """The decay of update number `updates` (0 for the first): min(decay, (1 + t) / (10 + t)), the
    bias-corrected warm-up of TensorFlow's ExponentialMovingAverage(num_updates=t). Without it the
    average starts at the random initialisation and, at decay 0.999, still holds 82% of it after
    200 steps (0.999^200): a short run reported a model that predicted one class."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model for parameters; buffers (BN statistics) are copied."""
    ema_params = list(ema.parameters())
    model_params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, model_params, 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)
