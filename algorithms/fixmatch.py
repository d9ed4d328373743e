"""FixMatch (Sohn et al., NeurIPS 2020): hard pseudo-labels from the weak view, kept above a
confidence threshold, train the prediction on the strong view.

Defaults from the paper: threshold 0.95, lambda_u 1, mu 7 (the trainer's `uratio`).
Subclasses change one component: FlexMatch overrides `make_thresholder`. `algo.dist_align`
(`ssl_kd.align`) switches on distribution alignment of the weak view's probabilities before the
thresholder sees them (off by default: FixMatch is then exactly itself).
Takes per-example weights (`weights.kind`): they multiply each pseudo-label's term after the
confidence mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.align import DistAlign, make_aligner
from ssl_kd.components import Thresholder, forward_concat, hard_pseudo_labels, masked_mean
from ssl_kd.registry import register_algorithm


@dataclass
class FixMatchConfig:
    threshold: float = 0.95  # confidence above which a pseudo-label is used
    lambda_u: float = 1.0  # weight of the unlabelled loss
    dist_align: str = "none"  # distribution alignment of the weak view: none, uniform (SoftMatch), labelled (ReMixMatch)
    stats_ema: float = 0.999  # EMA momentum of the alignment's running prediction mean p_model


@register_algorithm("fixmatch")
class FixMatch(Algorithm):
    Config = FixMatchConfig
    labelled_views = ("weak",)
    unlabelled_views = ("weak", "strong")
    takes_weights = True

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        self.aligner: DistAlign | None = make_aligner(self.cfg.dist_align, self.cfg.stats_ema, self.ctx)
        self.thresholder = self.make_thresholder()

    def make_thresholder(self) -> Thresholder:
        return Thresholder(self.cfg.threshold, self.ctx.num_classes)

    def unsup_loss(self, logits_weak, logits_strong, idx, feats_strong=None):  # type: ignore[no-untyped-def]
        """Masked (and weighted) cross-entropy of the strong view against the weak view's pseudo-labels."""
        probs, pseudo, mask = hard_pseudo_labels(logits_weak, self.thresholder, idx, self.aligner)
        weight = self.weigh(mask, feats_strong, logits_strong, pseudo, idx, probs.max(-1).values)
        loss = masked_mean(F.cross_entropy(logits_strong.float(), pseudo, reduction="none"), weight)
        return loss, pseudo, mask

    def train_step(self, batch: Batch) -> StepOutput:
        (lx, _), (luw, _), (lus, fus) = forward_concat(self.model, batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"])
        sup = F.cross_entropy(lx.float(), batch.y_l)
        unsup, pseudo, mask = self.unsup_loss(luw, lus, batch.idx_u, fus)
        loss = sup + self.cfg.lambda_u * unsup
        return StepOutput(
            loss=loss,
            logs={"loss/sup": sup.detach(), "loss/unsup": unsup.detach()},
            pseudo_labels=pseudo,
            mask=mask,
        )

    def state_dict(self) -> dict:
        state = {"thresholder": self.thresholder.state_dict()}
        if self.aligner is not None:
            state["aligner"] = self.aligner.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.thresholder.load_state_dict(state.get("thresholder", {}))
        if self.aligner is not None:
            self.aligner.load_state_dict(state.get("aligner", {}))
