"""Supervised baseline: cross-entropy on the weakly augmented labelled batch only."""
from __future__ import annotations

import torch.nn.functional as F

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.registry import register_algorithm


@register_algorithm("supervised")
class Supervised(Algorithm):
    labelled_views = ("weak",)

    def train_step(self, batch: Batch) -> StepOutput:
        logits, _ = self.model(batch.x_l["weak"])
        loss = F.cross_entropy(logits.float(), batch.y_l)
        return StepOutput(loss=loss, logs={"loss/sup": loss.detach()})
