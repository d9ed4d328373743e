"""IOMatch (Li et al., ICCV 2023, "IOMatch: simplifying open-set semi-supervised learning with joint
inliers and outliers utilization"): with very few labels an outlier detector is unreliable and
throwing away what it flags loses inliers, so IOMatch uses every unlabelled image. A projection head
feeds multi-binary (one-vs-all) classifiers, trained on the labelled images, and a (K+1)-way open-set
classifier. From the weak view, the closed-set prediction p (distribution-aligned to uniform) and the
multi-binary outputs make
- the closed-set target p, used (soft) on the strong view where p is confident (>= p_cutoff) and the
  image looks like an inlier (sum_k p_k * p(outlier | k) < 0.5);
- the open-set target q = (p_k * p(inlier | k) for each k, sum_k p_k * p(outlier | k)), used on the
  strong view's open-set logits where max q >= q_cutoff, after the first "epoch".

Defaults from the authors' code: p_cutoff 0.95, q_cutoff 0.5, projection 128 wide, every loss weight
1, alignment on, no rotation loss; the open-set loss starts after the first of 256 epochs (of 2^18
steps). Their alignment averages the last 128 batches; here it is the EMA alignment every other
algorithm uses (`ssl_kd.align`, momentum `stats_ema`). Takes per-example weights on the closed-set
term. Logged with every evaluation under class mismatch: the AUC of its outlier score (the latest
one of each pool image seen in training) at finding unseen-class images, a diagnostic.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.align import make_aligner
from ssl_kd.components import forward_concat, masked_mean, projection_head, restore_tensor, soft_cross_entropy
from ssl_kd.data.types import SSLData
from ssl_kd.influence.diagnostics import roc_auc
from ssl_kd.openset import ova_loss, ova_probs
from ssl_kd.registry import register_algorithm
from ssl_kd.teacher import plain_module
from ssl_kd.weighting.spec import WeightSpec, soft_targets

REFERENCE_STEPS = 2 ** 18  # the authors' run length, which their epoch counts refer to
PROJECTION = 128


@dataclass
class IOMatchConfig:
    p_cutoff: float = 0.95  # confidence of the closed-set target
    q_cutoff: float = 0.5  # confidence of the open-set target
    lambda_u: float = 1.0  # closed-set consistency
    lambda_mb: float = 1.0  # multi-binary classifiers on labelled images
    lambda_op: float = 1.0  # open-set consistency
    dist_align: bool = True  # align p to the uniform marginal
    stats_ema: float = 0.999  # the alignment's EMA momentum
    open_start_fraction: float = 1024 / REFERENCE_STEPS  # the open-set loss is off for this first part


def open_set_targets(p: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From closed-set probabilities p (N, K) and multi-binary probabilities r (N, 2, K): the outlier
    score sum_k p_k r_out,k and the open-set target q = (p_k r_in,k for each k, outlier score)."""
    out_score = (p * r[:, 0]).sum(1)
    return out_score, torch.cat([p * r[:, 1], out_score[:, None]], dim=1)


def xavier(layer: nn.Linear) -> nn.Linear:
    nn.init.xavier_normal_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


@register_algorithm("iomatch")
class IOMatch(Algorithm):
    Config = IOMatchConfig
    labelled_views = ("weak",)
    unlabelled_views = ("weak", "strong")
    takes_weights = True

    @classmethod
    def extra_heads(cls, num_features: int, data: SSLData) -> dict[str, nn.Module]:
        k = data.num_classes
        return {"proj": projection_head(num_features, PROJECTION),
                "multi_binary": xavier(nn.Linear(PROJECTION, 2 * k, bias=False)),
                "open_set": xavier(nn.Linear(PROJECTION, k + 1))}

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        self.aligner = make_aligner("uniform" if cfg.dist_align else "none", cfg.stats_ema, ctx)
        self.scores = torch.full((ctx.data.train_y.numel(),), -1.0, device=ctx.device)  # diagnostics only; -1: not scored yet (checkpoints refuse NaN)

    def closed_targets(self, logits_weak: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits_weak.detach().float(), dim=-1)
        return probs if self.aligner is None else self.aligner(probs)

    def weight_spec(self) -> WeightSpec:
        """Soft targets: the closed-set prediction (alignment left out of the static table)."""
        return dataclasses.replace(super().weight_spec(), targets=soft_targets)

    def train_step(self, batch: Batch) -> StepOutput:
        heads = plain_module(self.model)
        (lx, fx), (luw, fuw), (lus, fus) = forward_concat(self.model, batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"])
        zx, zuw, zus = heads.proj(fx), heads.proj(fuw), heads.proj(fus)
        sup = self.supervised_loss(lx, batch.y_l)
        mb = ova_loss(heads.multi_binary(zx), batch.y_l)
        with torch.no_grad():
            p = self.closed_targets(luw)
            out_score, q = open_set_targets(p, ova_probs(heads.multi_binary(zuw)))
        mask = (out_score < 0.5).float() * (p.max(-1).values >= self.cfg.p_cutoff).float()
        q_mask = (q.max(-1).values >= self.cfg.q_cutoff).float()
        weight = self.weigh(mask, fus, lus, p, batch.idx_u, p.max(-1).values)
        closed = masked_mean(soft_cross_entropy(lus, p), weight)
        opened = masked_mean(soft_cross_entropy(heads.open_set(zus), q), q_mask)
        if self.step < round(self.cfg.open_start_fraction * self.ctx.total_steps):
            opened = opened * 0.0
        if batch.idx_u is not None:
            self.scores[batch.idx_u] = out_score
        return StepOutput(
            loss=sup + self.cfg.lambda_mb * mb + self.cfg.lambda_u * closed + self.cfg.lambda_op * opened,
            logs={"loss/sup": sup.detach(), "loss/multi_binary": mb.detach(), "loss/unsup": closed.detach(),
                  "loss/open_set": opened.detach(), "train/inlier_ratio": (out_score < 0.5).float().mean(),
                  "train/q_mask_ratio": q_mask.mean()},
            pseudo_labels=p.argmax(-1),
            mask=mask,
        )

    def eval_metrics(self) -> dict[str, float]:
        """The outlier score's AUC at finding the unseen-class images among the pool images seen so far."""
        data = self.ctx.data
        if data.ood_idx is None:
            return {}
        pool = data.unlabelled_idx.to(self.scores.device)
        pool = pool[self.scores[pool] >= 0]
        return {"iomatch_ood_auc": roc_auc(self.scores[pool], torch.isin(pool, data.ood_idx.to(pool.device)))}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"scores": self.scores.clone()}
        if self.aligner is not None:
            state["aligner"] = self.aligner.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = restore_tensor(state, "scores", self.scores, "iomatch", " (one per training example)")
        if self.aligner is not None:
            self.aligner.load_state_dict(state.get("aligner", {}))
