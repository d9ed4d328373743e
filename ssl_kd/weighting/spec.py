"""What an algorithm hands the weighting module: once (`WeightSpec`) and per batch (`WeightRequest`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

POOLS = ("unlabelled", "labelled")


@dataclass
class WeightSpec:
    """How an algorithm's weighted terms are made, so the module can score them.

    - `student`: the plain network whose head is scored (and whose loss is weighted);
    - `pool`: which split the weighted examples come from: `unlabelled` (pseudo-labels, SSL) or
      `labelled` (distillation targets on labelled data, KD mode);
    - `labeller(idx)`: the logits that make the targets of the examples `idx` from their clean
      images (the teacher, or the model itself for self-labelling algorithms), used for the static
      table and the diagnostics;
    - `targets(logits, idx)`: the targets the loss trains on, from those logits: hard labels (N,),
      distributions (N, C), or what `make_weighter`'s weighter reads;
    - `tau`, `tau_squared`: the temperature of a cross-entropy loss on those targets;
    - `make_weighter(cfg)`: an InfluenceWeighter for a loss other than cross-entropy on the targets
      (KD mode's alpha-mix, DKD, Mean Teacher's squared error), None for cross-entropy.
    """

    student: nn.Module
    pool: str
    labeller: Callable[[Tensor], Tensor]
    targets: Callable[[Tensor, Tensor], Tensor]
    tau: float = 1.0
    tau_squared: bool = True
    make_weighter: Callable[[Any], Any] | None = None


@dataclass
class WeightRequest:
    """One batch of weighted terms: the loss's forward (`features`, `logits`; scored only with
    `score_view=strong`), the `targets` it trains on, the dataset indices `idx`, and the teacher's
    (or the model's) confidence in each target, for the diagnostics."""

    features: Tensor
    logits: Tensor
    targets: Tensor
    idx: Tensor
    confidence: Tensor | None = None


def hard_targets(logits: Tensor, idx: Tensor) -> Tensor:
    """The argmax pseudo-label (FixMatch-style hard targets)."""
    return logits.argmax(-1)


def soft_targets(logits: Tensor, idx: Tensor) -> Tensor:
    """The predicted distribution itself (SimMatch, CoMatch, IOMatch: soft targets)."""
    return torch.softmax(logits.float(), dim=-1)


@torch.no_grad()
def labelling_logits(net: nn.Module, batch_stats: bool, idx: Tensor, data: Any, chunk: int, autocast: Any) -> Tensor:
    """`net`'s logits on the clean images at `idx` in the BatchNorm mode it labels in (batch
    statistics when `batch_stats`, as FixMatch's and a moving teacher's pseudo-labels are made),
    leaving its running statistics and its train/eval mode as they were."""
    from ssl_kd.augment.views import make_view

    was_training = net.training
    buffers = [b.clone() for b in net.buffers()]
    net.train(batch_stats)
    with autocast():
        logits = torch.cat([net(make_view("none", data.train_x[part], data.policy))[0].float() for part in idx.split(chunk)])
    for b, saved in zip(net.buffers(), buffers):
        b.copy_(saved)
    net.train(was_training)
    return logits
