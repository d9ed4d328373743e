"""Distribution alignment: rescale predicted class probabilities so that their running average
matches a target marginal, p -> Normalize(p * p_target / p_model).

- ReMixMatch's distribution alignment (Berthelot et al., ICLR 2020): p_target is the labelled class
  marginal (`algo.dist_align=labelled`). ReMixMatch averages the last 128 batches for p_model; here
  it is an EMA, as USB's DistAlignEMAHook.
- SoftMatch's uniform alignment (Chen et al., ICLR 2023), UA(p) = Normalize(p * u(C) / p_hat):
  p_target is uniform (`algo.dist_align=uniform`), which raises the confidence of weakly predicted
  classes.

p_model is an EMA (momentum `algo.stats_ema`) of the batch mean of the predictions it is fed,
started at the first batch's mean (as USB's DistAlignEMAHook); under torchrun the batch is the
gathered global batch, so every rank aligns with the same p_model. Both marginals get 1e-6 added
(USB's guard against a class the model never predicts). Any algorithm can hold one; FixMatch and its
subclasses apply it through their `aligner` hook to the probabilities their thresholder sees.
"""
from __future__ import annotations

from typing import Any

import torch

from ssl_kd.components import restore_tensor
from ssl_kd.errors import ConfigError
from ssl_kd.trainer.distributed import gather_cat

ALIGN_KINDS = ("none", "uniform", "labelled")
EPS = 1e-6


def check_momentum(value: float) -> None:
    """EMA momenta of the algorithms' running statistics (alignment, FreeMatch, SoftMatch)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"algo.stats_ema={value} must be in [0, 1); 0.999 is the papers' value")


class DistAlign:
    """Stateful alignment of (N, C) probability rows to `target` (C,)."""

    def __init__(self, target: torch.Tensor, momentum: float) -> None:
        check_momentum(momentum)
        self.target = target.float()
        self.momentum = momentum
        self.p_model = torch.full_like(self.target, 1.0 / self.target.numel())
        self.seen = False  # before the first batch p_model is unset (USB: None)

    def update(self, probs: torch.Tensor) -> None:
        """Fold one batch's mean prediction (of the global batch under torchrun) into p_model."""
        mean = gather_cat(probs.detach().float()).mean(0)
        self.p_model = mean if not self.seen else self.momentum * self.p_model + (1 - self.momentum) * mean
        self.seen = True

    def align(self, probs: torch.Tensor) -> torch.Tensor:
        """Normalize(p * p_target / p_model) with the current p_model (no update)."""
        aligned = probs * (self.target + EPS) / (self.p_model + EPS)
        return aligned / aligned.sum(-1, keepdim=True)

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        """Update with this batch, then align it (the order of ReMixMatch and SoftMatch)."""
        self.update(probs)
        return self.align(probs)

    def state_dict(self) -> dict[str, Any]:
        return {"p_model": self.p_model.clone(), "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p_model = restore_tensor(state, "p_model", self.p_model, "distribution-alignment")
        self.seen = bool(state.get("seen", True))


def labelled_marginal(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class frequencies of the labelled split (labels of -1, if any, are not counted)."""
    labels = labels[labels >= 0]
    counts = torch.zeros(num_classes, device=labels.device).scatter_add_(0, labels, torch.ones(labels.shape, device=labels.device))
    return counts / counts.sum().clamp(min=1)


def make_aligner(kind: str, momentum: float, ctx: Any) -> DistAlign | None:
    """The aligner `algo.dist_align` names for a run (`ctx`: its algorithm Context): none, uniform
    (SoftMatch) or labelled (ReMixMatch: the labelled split's class marginal)."""
    if kind not in ALIGN_KINDS:
        raise ConfigError(f"algo.dist_align={kind!r} is not one of {', '.join(ALIGN_KINDS)}; "
                          "use uniform (SoftMatch) or labelled (ReMixMatch's DA)")
    if kind == "none":
        return None
    if kind == "uniform":
        return DistAlign(torch.full((ctx.num_classes,), 1.0 / ctx.num_classes, device=ctx.device), momentum)
    labels = ctx.data.train_y[ctx.data.labelled_idx].to(ctx.device)
    return DistAlign(labelled_marginal(labels, ctx.num_classes), momentum)


class PredictionAlign(DistAlign):
    """AdaMatch's alignment (Berthelot et al., ICLR 2022): the target marginal is not fixed but an
    EMA, started uniform, of the model's mean prediction on the labelled batch (USB's
    DistAlignEMAHook with p_target_type='model'); p_model follows the unlabelled batch as above."""

    def __init__(self, num_classes: int, momentum: float, device: torch.device | str = "cpu") -> None:
        super().__init__(torch.full((num_classes,), 1.0 / num_classes, device=device), momentum)

    def update_target(self, probs_labelled: torch.Tensor) -> None:
        mean = gather_cat(probs_labelled.detach().float()).mean(0)
        self.target = self.momentum * self.target + (1 - self.momentum) * mean

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "target": self.target.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.target = restore_tensor(state, "target", self.target, "distribution-alignment")
