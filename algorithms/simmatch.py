"""SimMatch (Zheng et al., CVPR 2022, "SimMatch: semi-supervised learning with similarity
matching"): besides FixMatch's class-level pseudo-labels, the projected embedding of each unlabelled
image is compared with a memory bank holding one embedding per *labelled* image. The similarities
(softmax at temperature T) and the class prediction correct each other:
- *unfolding*: the similarity distribution over the bank is reweighted by the class prediction of
  each bank entry's label, the target of the strong view's similarities (the instance loss);
- *aggregation*: the similarities summed per label are mixed into the class prediction
  (alpha * p + (1 - alpha) * aggregated), the (soft, thresholded) target of the strong view.

Form and defaults of USB's classic-CV configs: T 0.1, p_cutoff 0.95, alpha 0.9, a
projection (l2-normalised, 128 wide), lambda_u 1, lambda_in 1, the bank updated from the labelled batch as
normalise(0.7 * entry + 0.3 * embedding), the class prediction aligned to uniform (USB: a queue of
32 batches; here the EMA alignment, `stats_ema`), and the instance loss and aggregation off for the
first "epoch" (1,024 of 2^20 steps). Under torchrun the bank update gathers the global batch, so every
process keeps the same bank. Takes per-example weights on the class-level term.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.align import DistAlign, make_aligner
from ssl_kd.components import forward_concat, masked_mean, projection_head, restore_tensor, soft_cross_entropy
from ssl_kd.data.types import SSLData
from ssl_kd.registry import register_algorithm
from ssl_kd.teacher import plain_module
from ssl_kd.trainer.distributed import gather_cat
from ssl_kd.weighting.spec import WeightSpec, soft_targets

FULL_RUN = 2 ** 20  # the steps of the standard protocol, which the reference's epoch refers to
PROJECTION = 128  # width of the projected embedding (the head is built before the config is read)


@dataclass
class SimMatchConfig:
    temperature: float = 0.1  # of the similarity softmax
    threshold: float = 0.95  # confidence of the class-level target
    alpha: float = 0.9  # share of the class prediction in the aggregated target
    lambda_u: float = 1.0  # class-level consistency
    lambda_in: float = 1.0  # instance-level (similarity) consistency
    bank_momentum: float = 0.7  # a bank entry keeps this share of its old embedding at each update
    stats_ema: float = 0.999  # the alignment's EMA momentum
    warmup_fraction: float = 1024 / FULL_RUN  # the instance loss and aggregation start after this


def unfold_and_aggregate(sim_logits: torch.Tensor, probs: torch.Tensor, bank_labels: torch.Tensor, temperature: float,
                         alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(instance target over the bank entries, class target): the similarity softmax reweighted by
    each entry's class probability and renormalised, and alpha * probs + (1 - alpha) * the
    similarities summed per label."""
    sim = torch.softmax(sim_logits / temperature, dim=1)
    unfolded = sim * probs.gather(1, bank_labels.expand(sim.shape[0], -1))
    unfolded = unfolded / unfolded.sum(1, keepdim=True)
    aggregated = torch.zeros_like(probs).scatter_add(1, bank_labels.expand(sim.shape[0], -1), sim)
    return unfolded, alpha * probs + (1 - alpha) * aggregated


@register_algorithm("simmatch")
class SimMatch(Algorithm):
    Config = SimMatchConfig
    labelled_views = ("weak",)
    unlabelled_views = ("weak", "strong")
    takes_weights = True

    @classmethod
    def extra_heads(cls, num_features: int, data: SSLData) -> dict[str, nn.Module]:
        return {"proj": projection_head(num_features, PROJECTION)}

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        data = ctx.data
        labelled = data.labelled_idx.to(ctx.device)
        self.position = torch.full((data.train_y.numel(),), -1, dtype=torch.long, device=ctx.device)
        self.position[labelled] = torch.arange(labelled.numel(), device=ctx.device)  # dataset index -> bank entry
        self.bank = F.normalize(torch.randn(labelled.numel(), PROJECTION, device=ctx.device), dim=1)
        self.bank_labels = data.train_y[labelled].to(ctx.device)
        aligner = make_aligner("uniform", cfg.stats_ema, ctx)
        assert aligner is not None  # "uniform" always makes one
        self.aligner: DistAlign = aligner

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(plain_module(self.model).proj(feats).float(), dim=1)

    @torch.no_grad()
    def update_bank(self, embeddings: torch.Tensor, idx: torch.Tensor) -> None:
        """Move the labelled batch's bank entries towards its embeddings (the global batch under torchrun)."""
        embeddings, pos = gather_cat(embeddings.detach()), self.position[gather_cat(idx)]
        m = self.cfg.bank_momentum
        self.bank[pos] = F.normalize(m * self.bank[pos] + (1 - m) * embeddings, dim=1)

    def weight_spec(self) -> WeightSpec:
        return dataclasses.replace(super().weight_spec(), targets=soft_targets)

    def train_step(self, batch: Batch) -> StepOutput:
        (lx, fx), (luw, fuw), (lus, fus) = forward_concat(self.model, batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"])
        zx, zuw, zus = self.project(fx), self.project(fuw), self.project(fus)
        bank = self.bank.clone()  # this step's bank: the update below must not touch what backward reads
        sup = self.supervised_loss(lx, batch.y_l)
        warm = self.step < round(self.cfg.warmup_fraction * self.ctx.total_steps)
        with torch.no_grad():
            probs = torch.softmax(luw.detach().float(), dim=-1)
            probs = self.aligner(probs)
            instance_target, class_target = unfold_and_aggregate(zuw.detach() @ bank.T, probs, self.bank_labels,
                                                                 self.cfg.temperature, self.cfg.alpha)
            if warm:
                class_target = probs
        student = F.log_softmax(zus @ bank.T / self.cfg.temperature, dim=1)
        instance = (-(instance_target * student).sum(1)).mean() * (0.0 if warm else 1.0)
        conf = class_target.max(-1).values
        mask = (conf >= self.cfg.threshold).float()
        weight = self.weigh(mask, fus, lus, class_target, batch.idx_u, conf)
        unsup = masked_mean(soft_cross_entropy(lus, class_target), weight)
        self.update_bank(zx, batch.idx_l)
        return StepOutput(
            loss=sup + self.cfg.lambda_u * unsup + self.cfg.lambda_in * instance,
            logs={"loss/sup": sup.detach(), "loss/unsup": unsup.detach(), "loss/instance": instance.detach()},
            pseudo_labels=class_target.argmax(-1),
            mask=mask,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.clone(), "aligner": self.aligner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank = restore_tensor(state, "bank", self.bank, "simmatch", " (one embedding per labelled example)")
        self.aligner.load_state_dict(state.get("aligner", {}))
