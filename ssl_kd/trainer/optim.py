"""The optimiser and schedule of a run: SGD + `train.lr_schedule` (FixMatch's cosine, or multistep) for the image nets, AdamW with
linear warm-up and decay for Hugging Face transformers (their convention; see run_glue.py).

`train.optimizer=auto` takes the network's `optimizer_kind` (ssl_kd.nets.hf sets "adamw");
`sgd`/`adamw` force one. For AdamW, `train.warmup_steps=0` means 10% of `train.steps` (BERT's
warm-up), and biases and LayerNorm weights get no weight decay. `record_optimizer` writes what a
run uses into its config (auto resolved, AdamW's schedule as `linear` with its warm-up steps), so
config.yaml says what ran and reproduces it. AdamW is torch's fused kernel (on
the CPU as on CUDA): the same update to float rounding, and on the CPU 5x faster than the
per-parameter loop over a 30,522 x 384 embedding, the largest single cost of a small text step
(BENCHMARKS.md, issue 21).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from ssl_kd.errors import ConfigError
from ssl_kd.trainer.schedule import linear_factor, lr_factor, make_optimizer

OPTIMIZERS = ("auto", "sgd", "adamw")
SGD_ONLY = ("momentum", "nesterov")  # TrainConfig keys AdamW does not read
ADAMW_WARMUP_FRACTION = 0.1


def make_adamw(model: torch.nn.Module, lr: float, weight_decay: float, fused: bool | None = None) -> torch.optim.AdamW:
    """`fused` (default: when every parameter is a float tensor on the CPU or CUDA) uses the one-kernel update."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    if fused is None:
        params = decay + no_decay
        fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, eps=1e-8, fused=fused or None)


def optimizer_kind(model: torch.nn.Module, choice: str) -> str:
    if choice not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer={choice!r} is not valid; use one of: {', '.join(OPTIMIZERS)}")
    return getattr(model, "optimizer_kind", "sgd") if choice == "auto" else choice


def schedule_factor(model: torch.nn.Module, t: Any) -> Callable[[int], float]:
    """The multiplier of train.lr at each step, as the run's scheduler applies it (one source for the
    trainer's scheduler and for algorithms that need the student's lr, such as MPL's feedback)."""
    if optimizer_kind(model, getattr(t, "optimizer", "auto")) == "adamw":
        warmup = adamw_warmup(t)
        return lambda step: linear_factor(step, t.steps, warmup)
    return lambda step: lr_factor(step, t)


def adamw_warmup(t: Any) -> int:
    return t.warmup_steps or max(1, round(ADAMW_WARMUP_FRACTION * t.steps))


def record_optimizer(model: torch.nn.Module, t: Any) -> Any:
    """TrainConfig `t` as it runs on `model`: the optimizer named, and for AdamW the linear schedule
    and its warm-up steps (the values schedule_factor uses, so training is unchanged)."""
    kind = optimizer_kind(model, getattr(t, "optimizer", "auto"))
    ran = {"lr_schedule": "linear", "warmup_steps": adamw_warmup(t)} if kind == "adamw" else {}
    return dataclasses.replace(t, optimizer=kind, **ran)


def build_optimizer(model: torch.nn.Module, t: Any) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """(optimizer, per-step scheduler) for `model` under TrainConfig `t`."""
    if optimizer_kind(model, getattr(t, "optimizer", "auto")) == "adamw":
        optimizer: torch.optim.Optimizer = make_adamw(model, t.lr, t.weight_decay)
    else:
        optimizer = make_optimizer(model, t.lr, t.momentum, t.nesterov, t.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(model, t))
