"""The label-noise probe: flip a fraction of labels, then ask how well low influence weight finds
the flipped examples (ROC-AUC; 0.5 is chance). The most direct check that the weights do what
KD-AIF says they do."""
from __future__ import annotations

import torch
from torch import Tensor

from ssl_kd.data.build import flip_labels as flip_labels_of
from ssl_kd.errors import ConfigError
from ssl_kd.influence.errors import InfluenceError


def flip_labels(labels: Tensor, fraction: float, num_classes: int, mode: str = "symmetric", seed: int = 0
                ) -> tuple[Tensor, Tensor]:
    """Flip `fraction` of `labels` (seeded) with the dataset builder's rule (`data.label_noise`):
    `symmetric` to a uniformly drawn other class, `pairwise` to the next class.
    Returns (new labels, boolean mask of flipped positions)."""
    if mode not in ("symmetric", "pairwise"):
        raise ConfigError(f"noise mode {mode!r} is unknown; choose symmetric or pairwise")
    if not 0 <= fraction <= 1:
        raise ConfigError(f"label noise fraction {fraction} must be in [0, 1]")
    everything = torch.arange(labels.numel())
    noisy, chosen = flip_labels_of(labels.cpu(), everything, fraction, mode, num_classes, torch.Generator().manual_seed(seed))
    flipped = torch.zeros(labels.numel(), dtype=torch.bool)
    flipped[chosen] = True
    return noisy.to(labels.device), flipped.to(labels.device)


def flip_detection_auc(weights: Tensor, flipped: Tensor) -> float:
    """ROC-AUC of "low weight" as a detector of flipped labels."""
    from sklearn.metrics import roc_auc_score

    flipped = flipped.bool().cpu()
    if flipped.all() or not flipped.any():
        raise InfluenceError("the ROC-AUC needs both flipped and clean examples; use a noise fraction in (0, 1)")
    return float(roc_auc_score(flipped.numpy(), (-weights.detach().float()).cpu().numpy()))
