"""UDA, Unsupervised Data Augmentation (Xie et al., NeurIPS 2020): the prediction on a strongly
augmented unlabelled image is pulled towards the sharpened prediction on its weak view by
KL(sharpen(p_weak, T) || p_strong), counted only where the weak prediction is confident.

Defaults from the paper's image experiments: softmax temperature T 0.4, confidence threshold 0.8,
weight 1. Training-signal annealing (TSA, section 3.3) is optional (`tsa`: none, linear, exp,
log): a labelled example whose correct-class probability already exceeds
eta_t = alpha_t (1 - 1/K) + 1/K is left out of the supervised loss, so a model with few labels
does not overfit them before the unlabelled signal arrives. The weak-view targets are detached.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.components import forward_concat, masked_mean, sharpen
from ssl_kd.errors import ConfigError
from ssl_kd.ramps import ANNEAL_SCHEDULES, anneal
from ssl_kd.registry import register_algorithm
from ssl_kd.weighting.spec import WeightSpec


@dataclass
class UDAConfig:
    temperature: float = 0.4  # sharpening temperature of the weak-view targets
    threshold: float = 0.8  # confidence of the weak view below which an example is masked out
    lambda_u: float = 1.0  # weight of the unlabelled loss
    tsa: str = "none"  # training-signal annealing: none, linear, exp or log
    # mask on the confidence of the sharpened target (the MPL port's rule) instead of the raw
    # prediction's (the UDA paper's code)
    mask_sharpened: bool = False


@register_algorithm("uda")
class UDA(Algorithm):
    Config = UDAConfig
    labelled_views = ("weak",)
    unlabelled_views = ("weak", "strong")
    takes_weights = True

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        if cfg.tsa not in ("none", *ANNEAL_SCHEDULES):
            raise ConfigError(f"algo.tsa={cfg.tsa!r}: use none, {', '.join(ANNEAL_SCHEDULES)}")
        if cfg.temperature <= 0:
            raise ConfigError(f"algo.temperature must be positive, got {cfg.temperature}")

    def sup_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Cross-entropy, without the examples TSA has released (mean over the kept ones)."""
        ce = F.cross_entropy(logits.float(), labels, reduction="none")
        if self.cfg.tsa == "none":
            return ce.mean(), 1.0
        k = self.ctx.num_classes
        eta = anneal(self.cfg.tsa, self.step / self.ctx.total_steps) * (1 - 1 / k) + 1 / k
        correct_prob = torch.softmax(logits.detach().float(), dim=-1).gather(1, labels[:, None]).squeeze(1)
        keep = (correct_prob <= eta).float()
        return (ce * keep).sum() / keep.sum().clamp(min=1), eta

    def targets(self, logits: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """The sharpened, detached prediction the strong view is pulled towards."""
        return sharpen(torch.softmax(logits.detach().float(), dim=-1), self.cfg.temperature)

    def unsup_loss(self, logits_weak: torch.Tensor, logits_strong: torch.Tensor, feats_strong: torch.Tensor | None = None,
                   idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked (and weighted) KL from the sharpened, detached weak-view prediction to the strong-view one."""
        probs = torch.softmax(logits_weak.detach().float(), dim=-1)
        targets = self.targets(logits_weak)
        conf, pseudo = (targets if self.cfg.mask_sharpened else probs).max(-1)
        mask = (conf >= self.cfg.threshold).float()
        kl = (targets * (targets.clamp_min(1e-12).log() - F.log_softmax(logits_strong.float(), dim=-1))).sum(-1)
        weight = self.weigh(mask, feats_strong, logits_strong, targets, idx, conf)
        return masked_mean(kl, weight), pseudo, mask

    def weight_spec(self) -> WeightSpec:
        """Soft targets: the sharpened prediction (KL to it has cross-entropy's gradient)."""
        return dataclasses.replace(super().weight_spec(), targets=self.targets)

    def train_step(self, batch: Batch) -> StepOutput:
        (lx, _), (luw, _), (lus, fus) = forward_concat(self.model, batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"])
        sup, eta = self.sup_loss(lx, batch.y_l)
        unsup, pseudo, mask = self.unsup_loss(luw, lus, fus, batch.idx_u)
        logs = {"loss/sup": sup.detach(), "loss/unsup": unsup.detach()}
        if self.cfg.tsa != "none":
            logs["train/tsa_threshold"] = eta
        return StepOutput(loss=sup + self.cfg.lambda_u * unsup, logs=logs, pseudo_labels=pseudo, mask=mask)
