"""Decoupled Knowledge Distillation (DKD, Zhao et al., CVPR 2022) and its influence-weighted variant.

DKD splits KD's tempered KL into target-class KD (TCKD: the binary target-vs-rest distributions)
and non-target-class KD (NCKD: the distributions among the non-target classes) and weights them
separately; the student minimises, per labelled example,

    CE(y) + r(k) * (alpha * TCKD + beta * NCKD),     both KL terms at temperature tau with tau^2,

r(k) a linear warm-up to 1 over the first `dkd_warmup` of the steps. Paper defaults (CIFAR-100):
alpha 1, beta 8, tau 4, warm-up 20 of 240 epochs (1/12 of the steps). Labels enter the loss, so
DKD runs in KD mode only. Everything else (teacher checkpoint, teacher updates, per-example weight
hook, logging) is KD's: `dkd` only overrides `kd_mode_loss` (algorithms/kd.py).

`dkdaif` is DKD with `weights.kind=influence` by default (every `weights.*` option applies): the
influence weights multiply DKD's per-example loss. Its head-restricted influence needs each
example's gradient of that loss w.r.t. the logits, which `ssl_kd.distill.LossWeighter` takes by
autograd (`kd_mode_weighter`). With `weights.kind=none` it equals `dkd` exactly (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ssl_kd.algorithms.kd import KD, KDConfig
from ssl_kd.distill import LossWeighter, at_least_float32, dkd_parts
from ssl_kd.errors import ConfigError
from ssl_kd.registry import register_algorithm


@dataclass
class DKDConfig(KDConfig):
    mode: str = "kd"  # DKD needs a label per example: KD mode only
    tau: float = 4.0  # temperature of both KL terms
    alpha: float = 1.0  # weight of TCKD (KD's alpha-mix is not used: the cross-entropy always has weight 1)
    beta: float = 8.0  # weight of NCKD
    dkd_warmup: float = 20 / 240  # fraction of train.steps over which the DKD terms ramp up linearly (0: none)


@register_algorithm("dkd")
class DKD(KD):
    Config = DKDConfig
    name = "dkd"
    needs_teacher_ckpt = True  # KD mode only: it always distils a checkpoint teacher

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        self.ramp_steps = round(cfg.dkd_warmup * ctx.total_steps)

    def check_config(self) -> None:
        super().check_config()
        if self.mode != "kd":
            raise ConfigError(f"{self.name} distils a checkpoint teacher on labelled data (its loss needs each example's "
                              f"label): use algo.mode=kd with --teacher-ckpt, or kd/kdaif for SSL mode")
        if self.cfg.beta < 0 or not 0 <= self.cfg.dkd_warmup < 1:
            raise ConfigError(f"algo.beta={self.cfg.beta} and algo.dkd_warmup={self.cfg.dkd_warmup}: "
                              "give beta >= 0 and a warm-up fraction in [0, 1)")

    def kd_mode_weighter(self, cfg: Any) -> LossWeighter:
        """Influence of DKD's own per-example loss (autograd logit gradients)."""
        return LossWeighter(cfg, self.packed_loss)

    def packed_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """DKD's per-example loss at this step for `pack_targets` targets (teacher distribution, label)."""
        return self.kd_mode_loss(logits, targets[:, :-1], targets[:, -1].long())[0]

    def ramp(self) -> float:
        """DKD's warm-up factor at this step: (k + 1) / warm-up steps, then 1 (the paper's epoch / 20)."""
        return min(1.0, (self.step + 1) / self.ramp_steps) if self.ramp_steps else 1.0

    def kd_mode_loss(self, s_logits: torch.Tensor, teacher_probs: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = F.cross_entropy(at_least_float32(s_logits), labels, reduction="none")
        parts = dkd_parts(s_logits, teacher_probs, labels, self.cfg.tau)
        loss = ce + self.ramp() * (self.cfg.alpha * parts.tckd + self.cfg.beta * parts.nckd)
        return loss, {"sup": ce, "tckd": parts.tckd, "nckd": parts.nckd}


@register_algorithm("dkdaif")
class DKDAIF(DKD):
    """`dkd` whose per-example terms carry influence weights unless `weights.kind` says otherwise."""

    name = "dkdaif"
    default_weights = "influence"
