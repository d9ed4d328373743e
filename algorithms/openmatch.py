"""OpenMatch (Saito, Kim & Saenko, NeurIPS 2021, "OpenMatch: open-set consistency regularization for
semi-supervised learning with outliers"): for unlabelled pools that hold classes the labels lack.
One-vs-all (OVA) classifiers, one binary inlier/outlier head per class on the network's features,
learn from the labelled images (hard-negative form, eq. 1); on unlabelled images their outputs are
kept confident (entropy minimisation, eq. 2) and consistent across two weak views (soft open-set
consistency, SOCR, eq. 3). After a warm-up, every "epoch" the EMA model scores the whole pool: an
image whose OVA head for its predicted class says "outlier" (probability >= 0.5) is excluded, and
FixMatch trains on the rest.

Differences from the reference code, on purpose: FixMatch here masks the excluded images out of the
one unlabelled batch (the reference draws a second, larger batch from the selected images only), so
the FixMatch term sees mu * (inlier share) images a step; an "epoch" is `select_fraction` of
training (the reference: 1,024 iterations of 2^18). Defaults follow the IOMatch authors' OpenMatch
configs (CIFAR, 2^18 steps): lambda_em 0.1, lambda_socr 0.5, FixMatch threshold 0 and weight 1,
FixMatch from epoch 5 of 256. Takes per-example weights on the FixMatch term. Logged: the selected
share, and with every evaluation the AUC of the outlier score at finding unseen-class images (a
diagnostic that reads the truth; it never trains).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.augment.views import make_view
from ssl_kd.components import Thresholder, forward_concat, hard_pseudo_labels, masked_mean, restore_tensor
from ssl_kd.data.types import SSLData
from ssl_kd.influence.diagnostics import roc_auc
from ssl_kd.openset import ova_entropy, ova_loss, outlier_score, socr
from ssl_kd.registry import register_algorithm
from ssl_kd.teacher import plain_module

REFERENCE_STEPS = 2 ** 18  # the reference configs' run length, which their epoch counts refer to


@dataclass
class OpenMatchConfig:
    lambda_em: float = 0.1  # OVA entropy minimisation on unlabelled images
    lambda_socr: float = 0.5  # soft open-set consistency between two weak views
    lambda_u: float = 1.0  # FixMatch on the selected inliers
    threshold: float = 0.0  # FixMatch's confidence threshold
    select_fraction: float = 1024 / REFERENCE_STEPS  # one "epoch": the pool is re-scored this often
    start_fix_fraction: float = 5 * 1024 / REFERENCE_STEPS  # FixMatch (and exclusion) start here


@register_algorithm("openmatch")
class OpenMatch(Algorithm):
    Config = OpenMatchConfig
    labelled_views = ("weak", "weak_2")
    unlabelled_views = ("weak", "weak_2", "strong")
    takes_weights = True

    @classmethod
    def extra_heads(cls, num_features: int, data: SSLData) -> dict[str, nn.Module]:
        return {"ova": nn.Linear(num_features, 2 * data.num_classes, bias=False)}

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        self.thresholder = Thresholder(cfg.threshold, ctx.num_classes)
        size = ctx.data.train_y.numel()
        self.selected = torch.ones(size, dtype=torch.bool, device=ctx.device)  # FixMatch may use the example
        self.scores = torch.full((size,), -1.0, device=ctx.device)  # the last outlier scores, for diagnostics; -1: none yet

    def steps_of(self, fraction: float) -> int:
        return max(1, round(fraction * self.ctx.total_steps))

    def fixmatch_on(self) -> bool:
        return self.step >= self.steps_of(self.cfg.start_fix_fraction)

    @torch.no_grad()
    def select(self) -> None:
        """Score the whole pool with the EMA model (or the model) in eval mode; keep the inliers."""
        net = plain_module(self.ctx.ema_model if self.ctx.ema_model is not None else self.model)
        was_training = net.training
        net.eval()
        data, idx = self.ctx.data, self.ctx.data.unlabelled_idx.to(self.ctx.device)
        chunk = 4 * self.ctx.train_cfg.batch_size * max(1, self.ctx.train_cfg.uratio) if self.ctx.train_cfg else 256
        for part in idx.split(chunk):
            logits, feats = net(make_view("none", data.train_x[part], data.policy))
            self.scores[part] = outlier_score(logits, net.ova(feats))
        net.train(was_training)
        self.selected[idx] = self.scores[idx] < 0.5

    def train_step(self, batch: Batch) -> StepOutput:
        start, every = self.steps_of(self.cfg.start_fix_fraction), self.steps_of(self.cfg.select_fraction)
        if self.step >= start and (self.step - start) % every == 0:
            self.select()
        ova_head = plain_module(self.model).ova
        (lx, fx), (lx2, fx2), (luw, fuw), (luw2, fuw2), (lus, fus) = forward_concat(
            self.model, batch.x_l["weak"], batch.x_l["weak_2"], batch.x_u["weak"], batch.x_u["weak_2"], batch.x_u["strong"])
        y2 = batch.y_l.repeat(2)
        sup = self.supervised_loss(torch.cat([lx, lx2]), y2)
        ova = ova_loss(ova_head(torch.cat([fx, fx2])), y2)
        open_u, open_u2 = ova_head(fuw), ova_head(fuw2)
        em = (ova_entropy(open_u) + ova_entropy(open_u2)) / 2
        consistency = socr(open_u, open_u2)
        probs, pseudo, mask = hard_pseudo_labels(luw, self.thresholder)
        assert batch.idx_u is not None, "OpenMatch trains on unlabelled examples"
        mask = mask * self.selected[batch.idx_u].float() * float(self.fixmatch_on())
        weight = self.weigh(mask, fus, lus, pseudo, batch.idx_u, probs.max(-1).values)
        fix = masked_mean(F.cross_entropy(lus.float(), pseudo, reduction="none"), weight)
        loss = sup + ova + self.cfg.lambda_em * em + self.cfg.lambda_socr * consistency + self.cfg.lambda_u * fix
        pool = self.ctx.data.unlabelled_idx.to(self.selected.device)
        return StepOutput(
            loss=loss,
            logs={"loss/sup": sup.detach(), "loss/ova": ova.detach(), "loss/ova_entropy": em.detach(),
                  "loss/socr": consistency.detach(), "loss/unsup": fix.detach(),
                  "train/selected_ratio": self.selected[pool].float().mean()},
            pseudo_labels=pseudo,
            mask=mask,
        )

    def eval_metrics(self) -> dict[str, float]:
        """The outlier score's AUC at finding unseen-class images of the pool (when the data has them)."""
        data = self.ctx.data
        if data.ood_idx is None or (self.scores[data.unlabelled_idx.to(self.scores.device)] < 0).all():
            return {}
        pool = data.unlabelled_idx.to(self.scores.device)
        unseen = torch.isin(pool, data.ood_idx.to(pool.device))
        return {"openmatch_ood_auc": roc_auc(self.scores[pool], unseen)}

    def state_dict(self) -> dict[str, Any]:
        return {"selected": self.selected.clone(), "scores": self.scores.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selected = restore_tensor(state, "selected", self.selected, "openmatch", " (one per training example)").bool()
        self.scores = restore_tensor(state, "scores", self.scores, "openmatch", " (one per training example)")
