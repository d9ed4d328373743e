"""The weighting module's contract and its `none` kind; `build_weights` picks the kind."""
from __future__ import annotations

from typing import Any

from torch import Tensor

from ssl_kd.data.build import class_form_hint
from ssl_kd.errors import ConfigError
from ssl_kd.weighting.config import WeightsConfig
from ssl_kd.weighting.spec import WeightRequest


class NoWeights:
    """`weights.kind=none`: the algorithm's own mask comes back unchanged (bit-identical runs)."""

    active = False

    def apply(self, mask: Tensor, request: WeightRequest | None = None) -> Tensor:
        """The per-example multiplier of the weighted terms: the mask itself."""
        return mask

    def rewards(self, applied: Tensor) -> Tensor:
        """Each example's reward for a teacher that learns from the weights: the multiplier itself."""
        return applied

    def labelled_keep(self, idx: Tensor) -> Tensor | None:
        """Which labelled examples the student's supervised loss keeps (None: all of them)."""
        return None

    def step_outputs(self, out: Any) -> Any:
        """Add the last applied weights' logs to a step's output (nothing here)."""
        return out

    def eval_metrics(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"the run trained without example weights but the checkpoint holds weight state {sorted(state)}")


def build_weights(cfg: WeightsConfig, algorithm: Any) -> Any:
    """The weighting module `cfg` asks for, attached to `algorithm` (which must take weights)."""
    if not cfg.active:
        return NoWeights()
    name, data = algorithm.ctx.train_cfg.algo, algorithm.ctx.data
    if data.is_regression:  # every kind scores class-probability targets
        raise ConfigError(f"weights.kind={cfg.kind} weighs class-probability targets and {data.name} is a "
                          f"regression task; use weights.kind=none{class_form_hint(data.name)}")
    if not type(algorithm).takes_weights:
        raise ConfigError(f"algorithm {name!r} has no per-example terms to weight (weights.kind={cfg.kind}); "
                          "set weights.kind=none or pick an algorithm that takes weights (tools/train.py --list)")
    from ssl_kd.weighting.influence import InfluenceWeights

    return InfluenceWeights(cfg, algorithm)
