"""FreeMatch (Wang et al., ICLR 2023): FixMatch with self-adaptive thresholding (SAT) and a
self-adaptive fairness term (SAF), i.e. FixMatch with its fixed threshold swapped for
`FreeThresholder` plus one extra loss term.

SAT, all EMAs with momentum lambda (`algo.stats_ema`, 0.999 as the paper) of the weak view's
probabilities q_b over the (global) unlabelled batch of size mu*B, updated before the batch is
masked (the authors' order):
- self-adaptive global threshold: tau_t = lambda tau_{t-1} + (1 - lambda) (1/(mu B)) sum_b max(q_b),
  tau_0 = 1/C;
- self-adaptive local threshold: p~_t(c) = lambda p~_{t-1}(c) + (1 - lambda) (1/(mu B)) sum_b q_b(c),
  p~_0(c) = 1/C, and tau_t(c) = MaxNorm(p~_t)(c) * tau_t (MaxNorm(x) = x / max(x));
- L_u = (1/(mu B)) sum_b 1(max(q_b) > tau_t(argmax q_b)) H(argmax q_b, Q_b), FixMatch's masked
  cross-entropy against the strong view's prediction Q_b (>= in the authors' code and here).

SAF: the label histogram h_t(c) = lambda h_{t-1}(c) + (1 - lambda) Hist(argmax q_b)(c), h_0 = 1/C;
over the strong-view predictions Q_b of the examples that pass the mask, their mean p_bar and
normalised histogram h_bar;
  L_f = -H( SumNorm(p~_t / h_t), SumNorm(p_bar / h_bar) ),   H(p, q) = -sum_c p(c) log q(c),
and the total L = L_s + lambda_u L_u + lambda_f L_f. Minimising -H (the negative cross-entropy, as
written in the paper and coded by the authors) pushes the mean strong-view prediction away from
over-predicted classes. A batch in which nothing passes the mask adds 0 (the authors' code), and a
class absent from a histogram gets 0 instead of x / 0 (their nan_to_num).

lambda_f (`algo.lambda_f`, the paper's w_f) defaults to 0.001: the value in USB's released FreeMatch
configs (by the same authors) for every classic-CV setting (CIFAR-10 40/250/4000, CIFAR-100
400/2500/10000, STL-10, SVHN), hence for the CIFAR presets benchmarked here and for digits. The
paper sets w_f per setting in its implementation details (not re-read for this file); another value
is `--set algo.lambda_f=...`. lambda_u 1 (w_u in the paper).

Under torchrun the EMAs follow the gathered global batch, and L_f's batch statistics (p_bar, h_bar)
are those of the global batch: each rank back-propagates the part of the global term that flows
through its own examples (scaled by N, which DistributedDataParallel's gradient average undoes), so
N processes train what one process trains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ssl_kd.algorithm import Batch, StepOutput
from ssl_kd.algorithms.fixmatch import FixMatch
from ssl_kd.align import check_momentum
from ssl_kd.components import Thresholder, restore_tensor
from ssl_kd.registry import register_algorithm
from ssl_kd.trainer.distributed import all_reduce_mean_, gather_cat, world


class FreeThresholder(Thresholder):
    """Self-adaptive global threshold times class-wise local thresholds (eq. 4-6), and the label
    histogram h_t of the fairness term (eq. 8). `threshold` holds tau_0 = 1/C."""

    def __init__(self, num_classes: int, momentum: float, device: torch.device | str = "cpu") -> None:
        check_momentum(momentum)
        super().__init__(1.0 / num_classes, num_classes)
        self.momentum = momentum
        self.global_threshold = torch.tensor(1.0 / num_classes, device=device)
        self.p_model = torch.full((num_classes,), 1.0 / num_classes, device=device)
        self.label_hist = torch.full((num_classes,), 1.0 / num_classes, device=device)

    def update(self, probs: torch.Tensor, idx: torch.Tensor) -> None:
        probs = gather_cat(probs.float())
        conf, cls = probs.max(-1)
        m = self.momentum
        hist = torch.zeros_like(self.label_hist).scatter_add_(0, cls, torch.ones_like(conf)) / conf.numel()
        self.global_threshold = m * self.global_threshold + (1 - m) * conf.mean()
        self.p_model = m * self.p_model + (1 - m) * probs.mean(0)
        self.label_hist = m * self.label_hist + (1 - m) * hist

    def class_thresholds(self) -> torch.Tensor:
        return self.global_threshold * self.p_model / self.p_model.max()

    def mask(self, probs: torch.Tensor) -> torch.Tensor:
        conf, cls = probs.max(-1)
        return (conf >= self.class_thresholds()[cls]).float()

    def state_dict(self) -> dict[str, Any]:
        return {"global_threshold": self.global_threshold.clone(), "p_model": self.p_model.clone(),
                "label_hist": self.label_hist.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("global_threshold", "p_model", "label_hist"):
            setattr(self, key, restore_tensor(state, key, getattr(self, key), "freematch"))


def sum_norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum().clamp(min=torch.finfo(x.dtype).tiny)


def ratio_or_zero(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, with 0 where den is 0 (a class absent from a histogram)."""
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def fairness_loss(logits_strong: torch.Tensor, mask: torch.Tensor, p_model: torch.Tensor, label_hist: torch.Tensor) -> torch.Tensor:
    """L_f = -H(SumNorm(p_model / label_hist), SumNorm(p_bar / h_bar)) over the examples with mask > 0
    (eq. 9), from the global batch under torchrun; 0 when no example passes. No host sync."""
    probs = torch.softmax(logits_strong.float(), dim=-1)
    kept = (mask > 0).float()
    # per class: how many kept examples predict it, and the kept probabilities summed; p_bar / h_bar
    # is sums / counts (the kept count cancels)
    counts = torch.zeros_like(p_model).scatter_add_(0, probs.argmax(-1), kept)
    sums = (probs * kept[:, None]).sum(0)
    info = world()
    if info.enabled:
        stats = torch.cat([counts, sums.detach()])
        all_reduce_mean_([stats], info)
        counts, global_sums = (stats * info.world_size).split(counts.numel())
        sums = sums + (global_sums - sums.detach())  # the global value; the gradient through this rank's examples
    target = sum_norm(ratio_or_zero(p_model, label_hist))
    mean = sum_norm(ratio_or_zero(sums, counts))
    loss = (target * torch.log(mean + 1e-12)).sum()
    loss = torch.where(counts.sum() > 0, loss, torch.zeros_like(loss))
    if info.enabled:  # DDP averages the ranks' gradients: scale them so the average is the global gradient
        loss = loss + (info.world_size - 1) * (loss - loss.detach())
    return loss


@dataclass
class FreeMatchConfig:
    lambda_u: float = 1.0  # weight of the unlabelled loss
    lambda_f: float = 0.001  # weight of the fairness term (paper: 0.01 in its hardest settings, else 0.001)
    stats_ema: float = 0.999  # EMA momentum of the thresholds' statistics (and of dist_align's p_model)
    dist_align: str = "none"  # distribution alignment of the weak view: none, uniform, labelled (off in the paper)


@register_algorithm("freematch")
class FreeMatch(FixMatch):
    Config = FreeMatchConfig
    fairness: torch.Tensor  # the last batch's L_f, set by unsup_loss for train_step

    def make_thresholder(self) -> FreeThresholder:
        return FreeThresholder(self.ctx.num_classes, self.cfg.stats_ema, self.ctx.device)

    def unsup_loss(self, logits_weak, logits_strong, idx, feats_strong=None):  # type: ignore[no-untyped-def]
        """FixMatch's masked (and weighted) cross-entropy; the fairness term of the same batch is
        kept for train_step (over the mask's examples, unweighted, as in the paper)."""
        loss, pseudo, mask = super().unsup_loss(logits_weak, logits_strong, idx, feats_strong)
        self.fairness = fairness_loss(logits_strong, mask, self.thresholder.p_model, self.thresholder.label_hist)
        return loss, pseudo, mask

    def train_step(self, batch: Batch) -> StepOutput:
        out = super().train_step(batch)
        out.loss = out.loss + self.cfg.lambda_f * self.fairness
        out.logs["loss/fairness"] = self.fairness.detach()
        thresholds = self.thresholder.class_thresholds()
        out.logs["train/global_threshold"] = self.thresholder.global_threshold
        out.logs["train/mean_class_threshold"] = thresholds.mean()
        out.histograms["train/class_threshold"] = thresholds
        return out
