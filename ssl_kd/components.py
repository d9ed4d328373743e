"""Shared pieces algorithms are built from: one concatenated forward, losses, pseudo-labelling, masking.

Algorithms reuse these instead of copying them; FlexMatch swaps only the `Thresholder`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def forward_concat(model: nn.Module, *xs: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One forward pass over the concatenation of `xs` (BatchNorm sees one batch, as in FixMatch),
    split back into (logits, features) per input."""
    logits, feats = model(torch.cat(xs))
    sizes = [x.shape[0] for x in xs]
    return list(zip(logits.split(sizes), feats.split(sizes)))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy against class labels (N,) or target distributions (N, C)
    (Dash, AdaMatch and DeFixMatch switch between the two)."""
    if targets.dim() == 1:
        return F.cross_entropy(logits.float(), targets, reduction="none")
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1)


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature sharpening p^(1/T), renormalised (UDA, MixMatch)."""
    p = probs ** (1.0 / temperature)
    return p / p.sum(-1, keepdim=True)


def projection_head(num_features: int, width: int) -> nn.Sequential:
    """The two-layer MLP that maps features to a contrastive embedding (SimMatch, CoMatch, IOMatch)."""
    return nn.Sequential(nn.Linear(num_features, num_features), nn.ReLU(), nn.Linear(num_features, width))


def draw_mixup(alpha: float, n: int, device: torch.device) -> tuple[float, torch.Tensor]:
    """MixUp's coefficient lambda ~ Beta(alpha, alpha) folded to >= 1/2 (each mixed example stays
    closest to its first source: MixMatch, ReMixMatch) and a random pairing of n examples, both from
    torch's global generator (which checkpoints restore)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return max(lam, 1 - lam), torch.randperm(n, device=device)


def mixup(x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lam * (x, y) + (1 - lam) * (x, y)[perm]."""
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


class Thresholder:
    """Fixed-threshold confidence masking (FixMatch). Stateful subclasses override `mask` and `update`."""

    def __init__(self, threshold: float, num_classes: int) -> None:
        self.threshold = threshold
        self.num_classes = num_classes

    def mask(self, probs: torch.Tensor) -> torch.Tensor:
        """1.0 where the pseudo-label is trusted, else 0.0 (float, no gradient)."""
        return (probs.max(-1).values >= self.threshold).float()

    def update(self, probs: torch.Tensor, idx: torch.Tensor) -> None:
        """Observe one batch of unlabelled predictions (indices into the training set)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def restore_tensor(state: dict[str, Any], key: str, like: torch.Tensor, owner: str, what: str = "") -> torch.Tensor:
    """A copy of checkpoint tensor `state[key]` on `like`'s device and dtype, refused in one line when
    missing or shaped for another run (another dataset, another number of classes)."""
    saved = state.get(key)
    if saved is None or saved.shape != like.shape:
        found = "none" if saved is None else tuple(saved.shape)
        raise ValueError(f"{owner} state must hold {key} of shape {tuple(like.shape)}{what}, found {found}; "
                         "resume with the run's own dataset")
    return saved.to(device=like.device, dtype=like.dtype).clone()


def hard_pseudo_labels(logits: torch.Tensor, thresholder: Thresholder, idx: torch.Tensor | None = None,
                       aligner: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detached probabilities, argmax pseudo-labels and the confidence mask for `logits`.

    `aligner` (distribution alignment, `ssl_kd.align`) reshapes the probabilities the thresholder
    observes and masks by; the pseudo-labels stay the argmax of the model's own probabilities
    (SoftMatch uses its uniform alignment in the weighting function only)."""
    probs = torch.softmax(logits.detach().float(), dim=-1)
    seen = probs if aligner is None else aligner(probs)
    if idx is not None:
        thresholder.update(seen, idx)
    return probs, probs.argmax(-1), thresholder.mask(seen)


def masked_mean(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over all examples of loss * mask (FixMatch normalises by the batch, not the mask count)."""
    return (loss * mask).mean()


class RelativeThresholder(Thresholder):
    """AdaMatch's relative confidence threshold: `threshold` times the mean confidence of the
    current labelled batch (the global batch under torchrun), set by `observe_labelled` each step."""

    def __init__(self, threshold: float, num_classes: int) -> None:
        super().__init__(threshold, num_classes)
        self.cutoff = torch.tensor(threshold)

    def observe_labelled(self, probs_labelled: torch.Tensor) -> None:
        from ssl_kd.trainer.distributed import gather_cat  # components sit below the trainer's helpers

        self.cutoff = self.threshold * gather_cat(probs_labelled.detach().float()).max(-1).values.mean()

    def mask(self, probs: torch.Tensor) -> torch.Tensor:
        return (probs.max(-1).values >= self.cutoff).float()
