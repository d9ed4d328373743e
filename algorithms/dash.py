"""Dash (Xu et al., ICML 2021, "Dash: semi-supervised learning with dynamic thresholding"): an
unlabelled example is used when the loss of its weak view against its own pseudo-label is below a
threshold rho_t that shrinks as training goes: rho_t = max(C * gamma^-k * rho_hat, rho_min), k the
number of updates so far (one every `update_fraction` of training; USB: every 10 of its 1,024 epochs).

rho_hat is measured once, after a supervised-only warm-up: the model's mean cross-entropy over the
labelled split (eval mode). USB takes it from the evaluation loss, i.e. the test split; the
labelled split is what the paper's analysis uses and keeps the test split out of training.
Targets are soft, softmax(logits_weak / T), until rho reaches rho_min, then hard argmax labels (as
USB). The warm-up is counted in the run's steps (USB runs it before them).

Defaults from the paper and USB's classic-CV configs: T 0.5, gamma 1.27, C 1.0001, rho_min 0.05,
lambda_u 1, warm-up 2,048 of 2^20 steps. Takes per-example weights after the mask.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.components import forward_concat, masked_mean, soft_cross_entropy
from ssl_kd.errors import ConfigError
from ssl_kd.registry import register_algorithm
from ssl_kd.weighting.spec import WeightSpec, labelling_logits

FULL_RUN = 2 ** 20  # the steps of the standard protocol, which the paper's step counts refer to


@dataclass
class DashConfig:
    temperature: float = 0.5  # sharpening of the soft targets
    gamma: float = 1.27  # rho shrinks by this factor at every update
    c: float = 1.0001  # rho's first value is c * rho_hat
    rho_min: float = 0.05  # rho's floor; reaching it switches to hard labels
    warmup_fraction: float = 2048 / FULL_RUN  # supervised-only steps before rho_hat is measured
    update_fraction: float = 10 * 1024 / FULL_RUN  # rho is updated once every this fraction of train.steps
    lambda_u: float = 1.0  # weight of the unlabelled loss


@register_algorithm("dash")
class Dash(Algorithm):
    Config = DashConfig
    labelled_views = ("weak",)
    unlabelled_views = ("weak", "strong")
    takes_weights = True

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        if cfg.gamma <= 1 or cfg.temperature <= 0 or cfg.rho_min <= 0:
            raise ConfigError(f"dash needs algo.gamma > 1, algo.temperature > 0 and algo.rho_min > 0 "
                              f"(got {cfg.gamma}, {cfg.temperature}, {cfg.rho_min}); the paper uses 1.27, 0.5, 0.05")
        self.rho_hat: float | None = None  # measured at the end of the warm-up

    @property
    def warmup_steps(self) -> int:
        return math.ceil(self.cfg.warmup_fraction * self.ctx.total_steps)

    def rho(self) -> float:
        """The threshold at the current step (after the warm-up)."""
        assert self.rho_hat is not None, "rho is defined once the warm-up has measured rho_hat"
        every = max(1, round(self.cfg.update_fraction * self.ctx.total_steps))
        updates = (self.step - self.warmup_steps) // every
        return max(self.cfg.c * self.cfg.gamma ** -updates * self.rho_hat, self.cfg.rho_min)

    def hard_labels(self) -> bool:
        return self.rho() == self.cfg.rho_min

    def measure_rho_hat(self) -> float:
        """The model's mean cross-entropy over the labelled split (eval mode: running statistics)."""
        data, t = self.ctx.data, self.ctx.train_cfg
        chunk = max(1, t.batch_size * max(1, t.uratio)) if t is not None else 256
        idx = data.labelled_idx.to(self.ctx.device)
        from ssl_kd.teacher import plain_module  # as Algorithm.weight_spec: the teacher side imports the trainer

        logits = labelling_logits(plain_module(self.model), False, idx, data, chunk, self.ctx.autocast)
        return float(F.cross_entropy(logits, data.train_y[idx].to(logits.device)))

    def targets(self, logits_weak: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Hard argmax labels once rho has reached rho_min, else softmax(logits / T); detached."""
        logits_weak = logits_weak.detach().float()
        if self.hard_labels():
            return logits_weak.argmax(-1)
        return torch.softmax(logits_weak / self.cfg.temperature, dim=-1)

    def unsup_loss(self, logits_weak: torch.Tensor, logits_strong: torch.Tensor, feats_strong: torch.Tensor | None = None,
                   idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked (and weighted) cross-entropy of the strong view against the weak view's targets; the
        mask keeps examples whose weak view's own loss against those targets is at most rho."""
        targets = self.targets(logits_weak)
        mask = (soft_cross_entropy(logits_weak.detach(), targets) <= self.rho()).float()
        conf = torch.softmax(logits_weak.detach().float(), dim=-1).max(-1).values
        weight = self.weigh(mask, feats_strong, logits_strong, targets, idx, conf)
        return masked_mean(soft_cross_entropy(logits_strong, targets), weight), mask

    def weight_spec(self) -> WeightSpec:
        return dataclasses.replace(super().weight_spec(), targets=self.targets)

    def train_step(self, batch: Batch) -> StepOutput:
        warm = self.step < self.warmup_steps
        if not warm and self.rho_hat is None:  # before this step's forward, whose graph holds the BatchNorm buffers
            self.rho_hat = self.measure_rho_hat()
        (lx, _), (luw, _), (lus, fus) = forward_concat(self.model, batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"])
        sup = self.supervised_loss(lx, batch.y_l)
        if warm:
            return StepOutput(loss=sup, logs={"loss/sup": sup.detach()})
        unsup, mask = self.unsup_loss(luw, lus, fus, batch.idx_u)
        return StepOutput(
            loss=sup + self.cfg.lambda_u * unsup,
            logs={"loss/sup": sup.detach(), "loss/unsup": unsup.detach(), "train/rho": self.rho()},
            pseudo_labels=luw.detach().argmax(-1),
            mask=mask,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"rho_hat": self.rho_hat}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rho_hat = state.get("rho_hat")
