"""Open-set pieces shared by OpenMatch and IOMatch: one-vs-all (OVA, "multi-binary") heads, one
binary inlier/outlier classifier per class, whose (N, 2C) logits are read as (N, 2, C): [:, 0] the
outlier side, [:, 1] the inlier side of each class (the layout of the authors' code)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8  # the reference losses' guard inside log


def ova_probs(logits_open: torch.Tensor) -> torch.Tensor:
    """(N, 2C) OVA logits -> (N, 2, C) probabilities: [:, 0] outlier, [:, 1] inlier, per class."""
    return torch.softmax(logits_open.float().view(logits_open.shape[0], 2, -1), dim=1)


def ova_loss(logits_open: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 1: -log p(inlier) of the labelled class, plus the hardest negative class's -log p(outlier)."""
    p = ova_probs(logits_open)
    positive = F.one_hot(labels, p.shape[2]).float()
    pos = (-torch.log(p[:, 1] + EPS) * positive).sum(1).mean()
    neg = (-torch.log(p[:, 0] + EPS) * (1 - positive)).max(1).values.mean()
    return pos + neg


def ova_entropy(logits_open: torch.Tensor) -> torch.Tensor:
    """Eq. 2: the mean binary entropy of every OVA head."""
    p = ova_probs(logits_open)
    return (-(p * torch.log(p + EPS)).sum(1)).mean()


def socr(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Eq. 3: squared difference of the OVA probabilities of two views, summed over heads and sides."""
    return (ova_probs(logits_a) - ova_probs(logits_b)).pow(2).sum((1, 2)).mean()


def outlier_score(logits: torch.Tensor, logits_open: torch.Tensor) -> torch.Tensor:
    """p(outlier) from the OVA head of the closed-set prediction's class."""
    pred = logits.argmax(-1)
    return ova_probs(logits_open)[torch.arange(pred.shape[0], device=pred.device), 0, pred]
