"""The network contract every registered network follows.

`forward(x)` returns `(logits, features)`: features are the penultimate activations that feed
the classifier head `self.head` (an `nn.Linear` with bias). The influence module needs both.
"""
from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """Base class: subclasses build `self.backbone` (x -> features) and call `_make_head`."""

    head: nn.Linear
    num_features: int

    def _make_head(self, num_features: int, num_classes: int) -> None:
        self.num_features = num_features
        self.head = nn.Linear(num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.head(feats), feats
