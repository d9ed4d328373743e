"""AdaMatch (Berthelot et al., ICLR 2022, "AdaMatch: a unified approach to semi-supervised learning
and domain adaptation"), in its semi-supervised form as USB benchmarks it: FixMatch whose weak-view
probabilities are distribution-aligned to the model's own labelled predictions (both marginals EMAs)
and whose threshold is relative: tau times the mean confidence on the labelled batch, so it follows
the model's calibration instead of a fixed 0.95.

The pseudo-label is the argmax of the aligned probabilities. Not included (as in USB): the paper's
random logit interpolation and its cosine ramp of the unlabelled weight, which serve the
domain-adaptation setting. Defaults: tau 0.95, lambda_u 1, EMA 0.999 (USB's classic-CV configs).
Takes per-example weights after the mask.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.align import PredictionAlign
from ssl_kd.components import RelativeThresholder, forward_concat, masked_mean
from ssl_kd.registry import register_algorithm
from ssl_kd.weighting.spec import WeightSpec


@dataclass
class AdaMatchConfig:
    threshold: float = 0.95  # relative: this fraction of the mean labelled confidence
    lambda_u: float = 1.0  # weight of the unlabelled loss
    stats_ema: float = 0.999  # EMA momentum of the alignment's two marginals


@register_algorithm("adamatch")
class AdaMatch(Algorithm):
    Config = AdaMatchConfig
    labelled_views = ("weak",)
    unlabelled_views = ("weak", "strong")
    takes_weights = True

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        self.aligner = PredictionAlign(ctx.num_classes, cfg.stats_ema, ctx.device)
        self.thresholder = RelativeThresholder(cfg.threshold, ctx.num_classes)

    def pseudo_labels(self, probs: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.aligner.align(probs).argmax(-1)

    def unsup_loss(self, logits_l: torch.Tensor, logits_weak: torch.Tensor, logits_strong: torch.Tensor,
                   idx: torch.Tensor | None = None, feats_strong: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked (and weighted) cross-entropy of the strong view against the aligned weak view's argmax."""
        probs_l = torch.softmax(logits_l.detach().float(), dim=-1)
        self.aligner.update_target(probs_l)
        aligned = self.aligner(torch.softmax(logits_weak.detach().float(), dim=-1))
        self.thresholder.observe_labelled(probs_l)
        mask, pseudo = self.thresholder.mask(aligned), aligned.argmax(-1)
        weight = self.weigh(mask, feats_strong, logits_strong, pseudo, idx, aligned.max(-1).values)
        return masked_mean(F.cross_entropy(logits_strong.float(), pseudo, reduction="none"), weight), pseudo, mask

    def weight_spec(self) -> WeightSpec:
        """Hard targets: the argmax of the aligned probabilities, as the loss uses."""
        return dataclasses.replace(super().weight_spec(),
                                   targets=lambda logits, idx: self.pseudo_labels(torch.softmax(logits.float(), dim=-1)))

    def train_step(self, batch: Batch) -> StepOutput:
        (lx, _), (luw, _), (lus, fus) = forward_concat(self.model, batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"])
        sup = self.supervised_loss(lx, batch.y_l)
        unsup, pseudo, mask = self.unsup_loss(lx, luw, lus, batch.idx_u, fus)
        return StepOutput(
            loss=sup + self.cfg.lambda_u * unsup,
            logs={"loss/sup": sup.detach(), "loss/unsup": unsup.detach(), "train/relative_threshold": self.thresholder.cutoff},
            pseudo_labels=pseudo,
            mask=mask,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"aligner": self.aligner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.aligner.load_state_dict(state.get("aligner", {}))
