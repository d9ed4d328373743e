"""FlexMatch (Zhang et al., NeurIPS 2021): FixMatch with Curriculum Pseudo Labeling, i.e. FixMatch
with one component swapped: the fixed confidence threshold becomes a class-wise flexible one.

For class c, the learning effect sigma(c) counts the unlabelled examples whose latest prediction
is c with confidence above the FIXED threshold tau (paper eq. 5, and the authors' TorchSSL code,
which records `max_probs >= p_cutoff`). The flexible thresholds only decide the mask; they never
feed the counter. Counting with the flexible threshold instead would be self-reinforcing: at the
start every threshold is near 0, so every prediction would count and the learning effect would
stop measuring what the model has learnt with confidence. Normalised, beta(c) = sigma(c) / max_c
sigma, or with warm-up (default) sigma(c) / max(max_c sigma, N - sum_c sigma) where the second
term is the number of unlabelled examples never predicted confidently; the threshold is
tau * M(beta(c)) with the convex mapping M(x) = x / (2 - x).

The latest confident prediction of each unlabelled example (-1 for none yet) is the state that
checkpoints save and restore. Each batch is recorded before it is masked (the authors' code masks
with the state before the batch, one step of lag; the difference is one batch in N).
Defaults as FixMatch: tau 0.95, lambda_u 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ssl_kd.algorithm import Batch, StepOutput
from ssl_kd.algorithms.fixmatch import FixMatch, FixMatchConfig
from ssl_kd.components import Thresholder, restore_tensor
from ssl_kd.registry import register_algorithm
from ssl_kd.trainer.distributed import gather_cat


def convex_mapping(beta: torch.Tensor) -> torch.Tensor:
    """M(x) = x / (2 - x): thresholds stay low while a class is poorly learnt, rise fast near 1."""
    return beta / (2.0 - beta)


class FlexThresholder(Thresholder):
    """Class-wise flexible thresholds from the per-example record of confident predictions."""

    def __init__(self, threshold: float, num_classes: int, num_unlabelled: int, dataset_size: int,
                 warmup: bool, device: torch.device | str = "cpu") -> None:
        super().__init__(threshold, num_classes)
        self.num_unlabelled = num_unlabelled
        self.warmup = warmup
        self.predictions = torch.full((dataset_size,), -1, dtype=torch.long, device=device)

    def update(self, probs: torch.Tensor, idx: torch.Tensor) -> None:
        """Record the argmax of every example whose confidence reaches the fixed threshold tau
        (of the whole global batch under torchrun, so every rank keeps the same record)."""
        probs, idx = gather_cat(probs), gather_cat(idx)
        conf, cls = probs.max(-1)
        self.predictions[idx] = torch.where(conf >= self.threshold, cls, self.predictions[idx])

    def learning_effect(self) -> torch.Tensor:
        """beta(c) in [0, 1] for every class."""
        # a fixed-size scatter, not bincount, whose output size depends on the data (a device sync)
        bins = self.predictions + 1  # bin 0: -1
        sigma = torch.zeros(self.num_classes + 1, dtype=torch.long, device=bins.device)
        sigma = sigma.scatter_add_(0, bins, torch.ones_like(bins))[1:].float()
        denominator = sigma.max()
        if self.warmup:
            denominator = torch.maximum(denominator, self.num_unlabelled - sigma.sum())
        return sigma / denominator.clamp(min=1)  # a zero denominator means sigma is all zero

    def class_thresholds(self) -> torch.Tensor:
        return self.threshold * convex_mapping(self.learning_effect())

    def mask(self, probs: torch.Tensor) -> torch.Tensor:
        conf, cls = probs.max(-1)
        return (conf >= self.class_thresholds()[cls]).float()

    def state_dict(self) -> dict[str, Any]:
        return {"predictions": self.predictions.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.predictions.copy_(restore_tensor(state, "predictions", self.predictions, "flexmatch", " (one per training example)"))


@dataclass
class FlexMatchConfig(FixMatchConfig):
    threshold_warmup: bool = True  # normalise by the unused count too while most data is unused


@register_algorithm("flexmatch")
class FlexMatch(FixMatch):
    Config = FlexMatchConfig

    def make_thresholder(self) -> FlexThresholder:
        data = self.ctx.data
        return FlexThresholder(self.cfg.threshold, self.ctx.num_classes, data.unlabelled_idx.numel(),
                               data.train_y.numel(), self.cfg.threshold_warmup, self.ctx.device)

    def train_step(self, batch: Batch) -> StepOutput:
        out = super().train_step(batch)
        thresholds = self.thresholder.class_thresholds()
        out.logs["train/mean_class_threshold"] = thresholds.mean()
        out.histograms["train/class_threshold"] = thresholds
        return out
