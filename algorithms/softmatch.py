"""SoftMatch (Chen et al., ICLR 2023): FixMatch whose hard confidence mask becomes a soft weight,
a truncated Gaussian of the confidence, computed on uniformly aligned probabilities; i.e. FixMatch
with the `Thresholder` swapped for `GaussianWeighter` and `algo.dist_align=uniform`.

Weight of an unlabelled example whose (aligned) weak-view confidence is m = max(p):
  lambda(p) = exp(-(m - mu_t)^2 / (2 sigma_t^2))  if m < mu_t,  else 1  (lambda_max = 1),
with mu_t, sigma_t^2 EMAs (momentum m = `algo.stats_ema`, 0.999 as the paper) of the batch mean
and unbiased batch variance of the confidences (of the global batch under torchrun), updated before
the batch is weighted: mu_t = m mu_{t-1} + (1 - m) mean_b(max p_b), sigma_t^2 = m sigma_{t-1}^2 +
(1 - m) var_b(max p_b), started at mu_0 = 1/C and sigma_0^2 = 1 (the authors' code).
L_u = (1/(mu B)) sum_b lambda(UA(p_b)) H(argmax p_b, Q_b), Q_b the strong view's prediction: FixMatch's masked mean with the weight as
the mask, so the masked-mean code (and any per-example weight after it) is FixMatch's.

Uniform alignment UA(p) = Normalize(p * u(C) / p_hat), p_hat the EMA of the mean prediction
(`ssl_kd.align.DistAlign`), feeds the weighting function only: the pseudo-label stays the argmax of
the model's own probabilities, as in the authors' code (USB's softmatch.py generates the pseudo-labels
from the raw logits, "uniform alignment in softmatch do not use aligned probs").

`algo.n_sigma` (default 2, the authors' released configs): the Gaussian's standard deviation is
sigma_t / n_sigma, i.e. exp(-(m - mu_t)^2 / (2 sigma_t^2 / n_sigma^2)); n_sigma = 1 is the bare
formula above. USB's per-class variant (`per_class`, off in every released config) is not built.
Defaults: lambda_u 1, stats_ema 0.999, dist_align uniform, n_sigma 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ssl_kd.algorithm import Batch, StepOutput
from ssl_kd.algorithms.fixmatch import FixMatch
from ssl_kd.align import check_momentum
from ssl_kd.components import Thresholder, restore_tensor
from ssl_kd.errors import ConfigError
from ssl_kd.registry import register_algorithm
from ssl_kd.trainer.distributed import gather_cat


class GaussianWeighter(Thresholder):
    """A soft mask: 1 at or above the tracked mean confidence, a Gaussian fall-off below it."""

    def __init__(self, num_classes: int, momentum: float, n_sigma: float, device: torch.device | str = "cpu") -> None:
        check_momentum(momentum)
        if not n_sigma > 0:
            raise ConfigError(f"algo.n_sigma={n_sigma} must be > 0; 2 is the authors' value (1: the paper's bare Gaussian)")
        super().__init__(1.0 / num_classes, num_classes)
        self.momentum = momentum
        self.n_sigma = n_sigma
        self.mean = torch.tensor(1.0 / num_classes, device=device)
        self.var = torch.tensor(1.0, device=device)

    def update(self, probs: torch.Tensor, idx: torch.Tensor) -> None:
        conf = gather_cat(probs.float()).max(-1).values
        # one example has no unbiased variance: the EMA then keeps its variance (a static shape, no sync)
        var = conf.var() if conf.numel() > 1 else self.var
        m = self.momentum
        self.mean = m * self.mean + (1 - m) * conf.mean()
        self.var = m * self.var + (1 - m) * var

    def mask(self, probs: torch.Tensor) -> torch.Tensor:
        below = (probs.max(-1).values - self.mean).clamp(max=0.0)
        return torch.exp(-below.square() / (2 * self.var / self.n_sigma**2))

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.clone(), "var": self.var.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = restore_tensor(state, "mean", self.mean, "softmatch")
        self.var = restore_tensor(state, "var", self.var, "softmatch")


@dataclass
class SoftMatchConfig:
    lambda_u: float = 1.0  # weight of the unlabelled loss
    stats_ema: float = 0.999  # EMA momentum of the Gaussian's mean and variance and of the alignment's p_model
    n_sigma: float = 2.0  # the Gaussian's standard deviation is sigma_t / n_sigma (authors' code: 2)
    dist_align: str = "uniform"  # alignment of the confidence the weight sees: uniform (the paper), none, labelled


@register_algorithm("softmatch")
class SoftMatch(FixMatch):
    Config = SoftMatchConfig

    def make_thresholder(self) -> GaussianWeighter:
        return GaussianWeighter(self.ctx.num_classes, self.cfg.stats_ema, self.cfg.n_sigma, self.ctx.device)

    def train_step(self, batch: Batch) -> StepOutput:
        out = super().train_step(batch)
        out.logs["train/weight_mean_conf"] = self.thresholder.mean
        out.logs["train/weight_std_conf"] = self.thresholder.var.sqrt()
        return out
