"""Supervised baseline: the labelled loss on the weakly augmented labelled batch only: cross-entropy,
or for a regression task (STS-B) MSE of the one output on the float gold scores."""
from __future__ import annotations

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.registry import register_algorithm


@register_algorithm("supervised")
class Supervised(Algorithm):
    labelled_views = ("weak",)
    tasks = ("classification", "regression")

    def train_step(self, batch: Batch) -> StepOutput:
        logits, _ = self.model(batch.x_l["weak"])
        loss = self.supervised_loss(logits, batch.y_l)
        return StepOutput(loss=loss, logs={"loss/sup": loss.detach()})
