"""CoMatch (Li, Xiong & Hoi, ICCV 2021, "CoMatch: semi-supervised learning with contrastive graph
regularization"): class probabilities and low-dimensional embeddings of unlabelled images shape each
other.
- *Memory-smoothed pseudo-labels*: the weak view's (uniformly aligned) prediction is mixed with the
  predictions of its nearest neighbours in a queue of recent embeddings,
  alpha * p + (1 - alpha) * softmax(z @ queue_z^T / T) @ queue_p, then kept above a threshold as the
  soft target of a strong view.
- *Graph-contrastive loss*: the pseudo-label graph Q (q_i . q_j, self-loops 1, edges below
  contrast_cutoff removed, rows normalised) is the target of the embedding-similarity graph between
  two strong views.
The queue holds the weak views' embeddings with their predictions and the labelled images' embeddings
with their one-hot labels.

Defaults of USB's classic-CV configs: T 0.2, threshold 0.95, contrast_cutoff 0.8, alpha 0.9, a
64-wide projection (l2-normalised), queue of 5 global batches (labelled + unlabelled), lambda_u 1,
lambda_c 1, memory smoothing from the second "epoch" (1,024 of 2^20 steps) once the queue is full.
USB aligns with a queue of 32 batches; here the EMA alignment (`stats_ema`). Under torchrun the queue
gathers the global batch, so every process keeps the same queue; the contrastive graph is within each
process's batch (as in USB). Takes per-example weights on the class-level term.
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
PROJECTION = 64  # width of the projected embedding (the head is built before the config is read)


@dataclass
class CoMatchConfig:
    temperature: float = 0.2  # of the embedding similarities
    threshold: float = 0.95  # confidence of the class-level target
    contrast_cutoff: float = 0.8  # pseudo-label graph edges below this are removed
    alpha: float = 0.9  # share of the model's own prediction in the memory-smoothed target
    queue_batches: int = 5  # the queue holds this many global batches (labelled + unlabelled)
    lambda_u: float = 1.0
    lambda_c: float = 1.0  # graph-contrastive loss
    stats_ema: float = 0.999  # the alignment's EMA momentum
    warmup_fraction: float = 1024 / FULL_RUN  # memory smoothing starts after this


def pseudo_label_graph(probs: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Q = probs probs^T with self-loops 1, entries below `cutoff` removed, rows normalised."""
    q = probs @ probs.T
    q.fill_diagonal_(1.0)
    q = q * (q >= cutoff).float()
    return q / q.sum(1, keepdim=True)


def graph_contrastive_loss(z_a: torch.Tensor, z_b: torch.Tensor, q: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy from the target graph q to the similarity graph softmax(z_a z_b^T / T), by row."""
    return (-(q * F.log_softmax(z_a @ z_b.T / temperature, dim=1)).sum(1)).mean()


@register_algorithm("comatch")
class CoMatch(Algorithm):
    Config = CoMatchConfig
    labelled_views = ("weak",)
    unlabelled_views = ("weak", "strong", "strong_2")
    takes_weights = True

    @classmethod
    def extra_heads(cls, num_features: int, data: SSLData) -> dict[str, nn.Module]:
        return {"proj": projection_head(num_features, PROJECTION)}

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        t = ctx.train_cfg
        per_step = (t.batch_size * (1 + t.uratio)) if t is not None else 8
        size = cfg.queue_batches * per_step  # the global batch: each process's share times the processes, gathered
        self.queue_z = torch.zeros(size, PROJECTION, device=ctx.device)
        self.queue_p = torch.zeros(size, ctx.num_classes, device=ctx.device)
        self.ptr, self.filled = 0, 0
        aligner = make_aligner("uniform", cfg.stats_ema, ctx)
        assert aligner is not None  # "uniform" always makes one
        self.aligner: DistAlign = aligner

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(plain_module(self.model).proj(feats).float(), dim=1)

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor, p: torch.Tensor) -> None:
        """Write the (global) batch's embeddings and targets over the oldest queue entries."""
        z, p = gather_cat(z.detach()), gather_cat(p.detach())
        n = min(z.shape[0], self.queue_z.shape[0])
        rows = (self.ptr + torch.arange(n, device=z.device)) % self.queue_z.shape[0]
        self.queue_z[rows], self.queue_p[rows] = z[:n], p[:n]
        self.ptr = (self.ptr + n) % self.queue_z.shape[0]
        self.filled = min(self.filled + n, self.queue_z.shape[0])

    def smoothed(self, z_weak: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """alpha * probs + (1 - alpha) * the queue's predictions weighted by embedding similarity."""
        a = torch.softmax(z_weak @ self.queue_z.T / self.cfg.temperature, dim=1)
        return self.cfg.alpha * probs + (1 - self.cfg.alpha) * a @ self.queue_p

    def weight_spec(self) -> WeightSpec:
        return dataclasses.replace(super().weight_spec(), targets=soft_targets)

    def train_step(self, batch: Batch) -> StepOutput:
        (lx, fx), (luw, fuw), (lus, fus), (_, fus2) = forward_concat(
            self.model, batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"], batch.x_u["strong_2"])
        sup = self.supervised_loss(lx, batch.y_l)
        z_s, z_s2 = self.project(fus), self.project(fus2)
        with torch.no_grad():
            z_x, z_w = self.project(fx), self.project(fuw)
            probs = torch.softmax(luw.detach().float(), dim=-1)
            own = self.aligner(probs)
            warm = self.step < round(self.cfg.warmup_fraction * self.ctx.total_steps)
            target = own if warm or self.filled < self.queue_z.shape[0] else self.smoothed(z_w, own)
            self.enqueue(torch.cat([z_w, z_x]), torch.cat([own, F.one_hot(batch.y_l, self.ctx.num_classes).float()]))
        conf = target.max(-1).values
        mask = (conf >= self.cfg.threshold).float()
        weight = self.weigh(mask, fus, lus, target, batch.idx_u, conf)
        unsup = masked_mean(soft_cross_entropy(lus, target), weight)
        contrast = graph_contrastive_loss(z_s, z_s2, pseudo_label_graph(target, self.cfg.contrast_cutoff), self.cfg.temperature)
        return StepOutput(
            loss=sup + self.cfg.lambda_u * unsup + self.cfg.lambda_c * contrast,
            logs={"loss/sup": sup.detach(), "loss/unsup": unsup.detach(), "loss/contrast": contrast.detach()},
            pseudo_labels=target.argmax(-1),
            mask=mask,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"queue_z": self.queue_z.clone(), "queue_p": self.queue_p.clone(), "ptr": self.ptr, "filled": self.filled,
                "aligner": self.aligner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue_z = restore_tensor(state, "queue_z", self.queue_z, "comatch", " (the embedding queue)")
        self.queue_p = restore_tensor(state, "queue_p", self.queue_p, "comatch", " (the prediction queue)")
        self.ptr, self.filled = int(state.get("ptr", 0)), int(state.get("filled", 0))
        self.aligner.load_state_dict(state.get("aligner", {}))
