"""Pseudo-Label (Lee, ICML 2013 workshop), in the form TorchSSL and USB benchmark: the model's own
hard predictions on weakly augmented unlabelled images, kept above a confidence threshold, are
cross-entropy targets for the same predictions; the unlabelled weight ramps up linearly.

Lee ramps the weight from 0 to its final value deterministically (alpha(t)) because early
pseudo-labels are mostly wrong; TorchSSL/USB use a linear ramp over the first 40% of training,
final weight 1 and threshold 0.95, the defaults here. The target side is detached: the gradient
flows only through the prediction being trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.components import Thresholder, forward_concat, hard_pseudo_labels, masked_mean
from ssl_kd.ramps import linear_rampup
from ssl_kd.registry import register_algorithm


@dataclass
class PseudoLabelConfig:
    threshold: float = 0.95  # confidence above which a pseudo-label is used
    lambda_u: float = 1.0  # final weight of the unlabelled loss
    rampup_fraction: float = 0.4  # linear ramp-up of the weight over this fraction of train.steps


@register_algorithm("pseudolabel")
class PseudoLabel(Algorithm):
    Config = PseudoLabelConfig
    labelled_views = ("weak",)
    unlabelled_views = ("weak",)
    takes_weights = True

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        self.thresholder = Thresholder(cfg.threshold, ctx.num_classes)

    def unsup_loss(self, logits: torch.Tensor, feats: torch.Tensor | None = None,
                   idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked (and weighted) cross-entropy of `logits` against their own detached, confident argmax."""
        probs, pseudo, mask = hard_pseudo_labels(logits, self.thresholder)
        weight = self.weigh(mask, feats, logits, pseudo, idx, probs.max(-1).values)
        return masked_mean(F.cross_entropy(logits.float(), pseudo, reduction="none"), weight), pseudo, mask

    def train_step(self, batch: Batch) -> StepOutput:
        (lx, _), (lu, fu) = forward_concat(self.model, batch.x_l["weak"], batch.x_u["weak"])
        sup = F.cross_entropy(lx.float(), batch.y_l)
        unsup, pseudo, mask = self.unsup_loss(lu, fu, batch.idx_u)
        weight = self.cfg.lambda_u * linear_rampup(self.step, self.cfg.rampup_fraction * self.ctx.total_steps)
        return StepOutput(
            loss=sup + weight * unsup,
            logs={"loss/sup": sup.detach(), "loss/unsup": unsup.detach(), "train/unsup_weight": weight},
            pseudo_labels=pseudo,
            mask=mask,
        )
