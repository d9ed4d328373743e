"""Maps from influence scores to per-example loss weights (always detached from the graph).

Both maps give helpful examples (I < 0) the larger weight and are scale-free: the scores' size
changes with the model, the validation set and the damping, so a fixed temperature would not
transfer between runs.
- `sigmoid`: w = sigmoid(-I / T), T = temperature * 1.4826 * MAD of reference scores (the median
  absolute deviation as a standard deviation, robust to the heavy tails influence scores have);
  I = 0 gives 0.5.
- `exp_minmax`: w = exp(minmax_[-1,1](-I)) with min and max of reference scores, in [1/e, e].
- `quantile` and `labelled_threshold` say no: weight 0 or 1 (`quantile_admission`, `threshold_admission`).

The reference scores belong to one solve (the weighter takes them from the first batch scored after
each refresh, or the whole pool for the static table), so a temperature means the same thing for
a whole period; scores of different solves are not on one scale. The
  paper's public example code applies exp(minmax_[-1,1](.)) to scores of a library whose ranking
  treats large scores as helpful; we feed -I so that helpful examples weigh more in both maps.
"""
from __future__ import annotations

import torch
from torch import Tensor


WEIGHT_MAPS = ("sigmoid", "exp_minmax", "quantile", "labelled_threshold")


MAD_TO_STD = 1.4826  # MAD times this estimates the standard deviation of normal data


def robust_spread(reference: Tensor) -> Tensor:
    """Robust standard deviation (1.4826 MAD); mean |s| if that is 0, then 1 (all scores equal)."""
    mad = MAD_TO_STD * (reference - reference.median()).abs().median()
    mean_abs = reference.abs().mean()
    return torch.where(mad > 0, mad, torch.where(mean_abs > 0, mean_abs, torch.ones_like(mad)))


def sigmoid_weights(scores: Tensor, reference: Tensor, temperature: float) -> Tensor:
    return torch.sigmoid(-scores / (temperature * robust_spread(reference)))


def exp_minmax_weights(scores: Tensor, reference: Tensor) -> Tensor:
    lo, hi = (-reference).min(), (-reference).max()
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    unit = torch.where(hi > lo, (-scores - lo) / span, torch.full_like(scores, 0.5))
    return torch.exp((2 * unit - 1).clamp(-1, 1))


def map_scores(scores: Tensor, reference: Tensor, weight_map: str, temperature: float) -> Tensor:
    """Weights for `scores`, with the scale (or range) taken from `reference` scores."""
    scores, reference = scores.detach().float(), reference.detach().float()
    if weight_map == "sigmoid":
        return sigmoid_weights(scores, reference, temperature)
    return exp_minmax_weights(scores, reference)


def quantile_admission(z: Tensor, keys: Tensor | None, drop: float, num_classes: int) -> Tensor:
    """1 for each example below the (1 - drop) quantile of the batch's scores z (low scores help),
    0 for the least helpful share `drop`; with `keys`, the quantile is taken within each key
    (target class). Computed without a host read-back (nanquantile over a (classes, batch) table)."""
    z = z.detach().float()
    if keys is None:
        return (z <= torch.quantile(z, 1.0 - drop)).float()
    table = torch.full((num_classes, z.numel()), float("nan"), device=z.device)
    table[keys, torch.arange(z.numel(), device=z.device)] = z
    limits = torch.nanquantile(table, 1.0 - drop, dim=1)
    return (z <= limits[keys]).float()


def threshold_admission(z: Tensor, reference_own: Tensor, drop: float) -> Tensor:
    """1 for each example scoring at most the (1 - drop) quantile of the reference examples' own
    scores (as helpful as most labelled examples are to their own set), else 0."""
    return (z.detach().float() <= torch.quantile(reference_own.float(), 1.0 - drop)).float()


def finalise(weights: Tensor, renormalise: bool, min_weight: float, max_weight: float) -> Tensor:
    """Optionally rescale to mean 1 over the batch (keeps the loss's size), then clip."""
    if renormalise:
        weights = weights / weights.mean().clamp_min(1e-12)
    return weights.clamp(min_weight, max_weight).detach()
