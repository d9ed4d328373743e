"""DeFixMatch (Schmutz et al., ICLR 2023, "Don't fear the unlabelled: safe semi-supervised learning
via debiasing"): FixMatch whose pseudo-label loss is debiased by subtracting the same loss computed
on labelled images, whose labels the loss then ignores. In expectation the subtracted term removes
the bias that confirmation of wrong pseudo-labels adds, so the unlabelled term cannot pull the model
away from what the labels say; the labelled images also get a strong view and the supervised loss
averages their weak and strong views.

loss = (CE(x_l weak, y) + CE(x_l strong, y)) / 2
       + lambda_u * (FixMatch term on unlabelled images - the same term on labelled images)

The labelled term masks with the same thresholder but never updates it (no stateful thresholder
observes labelled images). Defaults: FixMatch's threshold 0.95; lambda_u 0.5 (USB's classic-CV
configs). Per-example weights multiply the unlabelled term only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ssl_kd.algorithm import Batch, StepOutput
from ssl_kd.algorithms.fixmatch import FixMatch, FixMatchConfig
from ssl_kd.components import forward_concat, hard_pseudo_labels, masked_mean
from ssl_kd.registry import register_algorithm


@dataclass
class DeFixMatchConfig(FixMatchConfig):
    lambda_u: float = 0.5  # weight of the debiased unlabelled loss


@register_algorithm("defixmatch")
class DeFixMatch(FixMatch):
    Config = DeFixMatchConfig
    labelled_views = ("weak", "strong")

    def train_step(self, batch: Batch) -> StepOutput:
        (lx, _), (lxs, _), (luw, _), (lus, fus) = forward_concat(
            self.model, batch.x_l["weak"], batch.x_l["strong"], batch.x_u["weak"], batch.x_u["strong"])
        sup = (self.supervised_loss(lx, batch.y_l) + self.supervised_loss(lxs, batch.y_l)) / 2
        unsup, pseudo, mask = self.unsup_loss(luw, lus, batch.idx_u, fus)
        _, pseudo_l, mask_l = hard_pseudo_labels(lx, self.thresholder)  # no idx: the thresholder does not observe it
        anti = masked_mean(F.cross_entropy(lxs.float(), pseudo_l, reduction="none"), mask_l)
        return StepOutput(
            loss=sup + self.cfg.lambda_u * (unsup - anti),
            logs={"loss/sup": sup.detach(), "loss/unsup": unsup.detach(), "loss/anti_unsup": anti.detach(),
                  "train/labelled_mask_ratio": mask_l.mean()},
            pseudo_labels=pseudo,
            mask=mask,
        )
