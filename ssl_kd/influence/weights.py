"""Maps from influence scores to per-example loss weights (always detached from the graph).

Both maps give helpful examples (I < 0) the larger weight and are scale-free: the scores' size
changes with the model, the validation set and the damping, so a fixed temperature would not
transfer between runs.
- `sigmoid`: w = sigmoid(-I / T), T = temperature * 1.4826 * MAD of recent scores (the median
  absolute deviation as a standard deviation, robust to the heavy tails influence scores have);
  I = 0 gives 0.5.
- `exp_minmax`: w = exp(minmax_[-1,1](-I)) with min and max of recent scores, in [1/e, e]. The
  paper's public example code applies exp(minmax_[-1,1](.)) to scores of a library whose ranking
  treats large scores as helpful; we feed -I so that helpful examples weigh more in both maps.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ssl_kd.influence.errors import InfluenceError

WEIGHT_MAPS = ("sigmoid", "exp_minmax")


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


def finalise(weights: Tensor, renormalise: bool, min_weight: float, max_weight: float) -> Tensor:
    """Optionally rescale to mean 1 over the batch (keeps the loss's size), then clip."""
    if renormalise:
        weights = weights / weights.mean().clamp_min(1e-12)
    return weights.clamp(min_weight, max_weight).detach()


class ScoreHistory:
    """A ring buffer of the most recent scores: the reference for the scale-free maps."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer: Tensor | None = None
        self.count = 0
        self.pos = 0

    def add(self, scores: Tensor) -> None:
        scores = scores.detach().float().reshape(-1)[-self.capacity:]
        if self.buffer is None:
            self.buffer = torch.zeros(self.capacity, device=scores.device)
        slots = (self.pos + torch.arange(scores.numel(), device=scores.device)) % self.capacity
        self.buffer[slots] = scores
        self.pos = (self.pos + scores.numel()) % self.capacity
        self.count = min(self.count + scores.numel(), self.capacity)

    def values(self) -> Tensor:
        assert self.buffer is not None, "ScoreHistory.values() before any add()"
        return self.buffer[: self.count]

    def state_dict(self) -> dict[str, object]:
        return {"buffer": None if self.buffer is None else self.buffer.clone(), "count": self.count, "pos": self.pos}

    def load_state_dict(self, state: dict[str, object]) -> None:
        buffer = state["buffer"]
        if buffer is not None and buffer.numel() != self.capacity:  # type: ignore[union-attr]
            raise InfluenceError(
                f"the checkpoint's score history holds {buffer.numel()} scores but history={self.capacity}; "  # type: ignore[union-attr]
                "resume with the influence history setting the run was started with"
            )
        self.buffer = None if buffer is None else buffer.clone()  # type: ignore[union-attr]
        self.count, self.pos = int(state["count"]), int(state["pos"])  # type: ignore[arg-type]
