"""ReMixMatch (Berthelot et al., ICLR 2020, "ReMixMatch: semi-supervised learning with distribution
alignment and augmentation anchoring"): MixMatch whose guessed label comes from the weak view only,
distribution-aligned to the labelled class marginal and sharpened (the *anchor*), and is the target
of several strong views (augmentation anchoring); the mixed batch holds the labelled images, the
strong views and the weak view. Two extra terms: cross-entropy of the first strong view, unmixed,
against the anchor (the pre-mixup loss), and a rotation loss (a 4-way head on the features predicts
by how many quarter turns the first strong view was rotated).

Defaults as USB's classic-CV configs: two strong views, T 0.5, alpha 0.75, lambda_u 1.5 (mixed
unlabelled), lambda_kl 0.5 (pre-mixup), lambda_rot 0.5, both unlabelled weights ramped linearly over
the first 1/64 of training, the alignment's EMA 0.999. The paper's CTAugment is replaced by the
framework's RandAugment (per image, with Cutout); USB likewise uses RandAugment. One forward runs the
mixed batch, the unmixed strong view and its rotations together (BatchNorm sees them all); the
anchor's forward leaves the BatchNorm statistics as they were. Images only. No per-example weights
(mixed examples have no single dataset index).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.align import DistAlign, make_aligner
from ssl_kd.components import draw_mixup, forward_concat, mixup, sharpen, soft_cross_entropy
from ssl_kd.data.types import SSLData
from ssl_kd.errors import ConfigError
from ssl_kd.ramps import linear_rampup
from ssl_kd.registry import register_algorithm
from ssl_kd.teacher import plain_module, preserved_buffers


@dataclass
class ReMixMatchConfig:
    temperature: float = 0.5  # sharpening of the anchor
    alpha: float = 0.75  # MixUp's Beta(alpha, alpha)
    lambda_u: float = 1.5  # mixed unlabelled cross-entropy
    lambda_kl: float = 0.5  # pre-mixup cross-entropy of the first strong view
    lambda_rot: float = 0.5  # rotation prediction (0 switches it off)
    rampup_fraction: float = 1 / 64  # linear ramp-up of lambda_u and lambda_kl
    stats_ema: float = 0.999  # distribution alignment's EMA momentum


def rotate_quarters(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Image i of x (N, C, H, W) turned by k[i] quarter turns (square images)."""
    out = x.clone()
    for turns in range(1, 4):
        rows = k == turns
        out[rows] = torch.rot90(x[rows], turns, dims=(2, 3))
    return out


@register_algorithm("remixmatch")
class ReMixMatch(Algorithm):
    Config = ReMixMatchConfig
    labelled_views = ("weak",)
    unlabelled_views = ("weak", "strong", "strong_2")
    modalities = ("image",)

    @classmethod
    def extra_heads(cls, num_features: int, data: SSLData) -> dict[str, nn.Module]:
        return {"rotation": nn.Linear(num_features, 4)}

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        if cfg.alpha <= 0 or cfg.temperature <= 0:
            raise ConfigError(f"remixmatch needs algo.alpha > 0 and algo.temperature > 0 (got {cfg.alpha}, {cfg.temperature}); "
                              "the paper uses 0.75 and 0.5")
        aligner = make_aligner("labelled", cfg.stats_ema, ctx)
        assert aligner is not None
        self.aligner: DistAlign = aligner

    def anchor(self, weak: torch.Tensor) -> torch.Tensor:
        """The weak view's prediction, aligned to the labelled marginal and sharpened (no gradient)."""
        with torch.no_grad(), preserved_buffers(self.model):
            logits, _ = self.model(weak)
        return sharpen(self.aligner(torch.softmax(logits.float(), dim=-1)), self.cfg.temperature)

    def draw_mixup(self, n: int, device: torch.device) -> tuple[float, torch.Tensor]:
        return draw_mixup(self.cfg.alpha, n, device)

    def train_step(self, batch: Batch) -> StepOutput:
        weak, strong = batch.x_u["weak"], [batch.x_u[v] for v in self.unlabelled_views[1:]]
        target = self.anchor(weak)
        x = torch.cat([batch.x_l["weak"], *strong, weak])
        y = torch.cat([F.one_hot(batch.y_l, self.ctx.num_classes).float(), *([target] * (len(strong) + 1))])
        lam, perm = self.draw_mixup(x.shape[0], x.device)
        mixed_x, mixed_y = mixup(x, y, lam, perm)
        turns = torch.randint(0, 4, (weak.shape[0],), device=weak.device)
        (logits, _), (l_s0, _), (_, f_rot) = forward_concat(self.model, mixed_x, strong[0], rotate_quarters(strong[0], turns))
        b = batch.y_l.shape[0]
        sup = soft_cross_entropy(logits[:b], mixed_y[:b]).mean()
        unsup = soft_cross_entropy(logits[b:], mixed_y[b:]).mean()
        pre_mix = soft_cross_entropy(l_s0, target).mean()
        rotation = F.cross_entropy(plain_module(self.model).rotation(f_rot).float(), turns)
        ramp = linear_rampup(self.step, self.cfg.rampup_fraction * self.ctx.total_steps)
        loss = sup + ramp * (self.cfg.lambda_u * unsup + self.cfg.lambda_kl * pre_mix) + self.cfg.lambda_rot * rotation
        return StepOutput(
            loss=loss,
            logs={"loss/sup": sup.detach(), "loss/unsup": unsup.detach(), "loss/pre_mixup": pre_mix.detach(),
                  "loss/rotation": rotation.detach(), "train/unsup_ramp": ramp, "train/mixup_lambda": lam},
            pseudo_labels=target.argmax(-1),
        )

    def state_dict(self) -> dict[str, Any]:
        return {"aligner": self.aligner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.aligner.load_state_dict(state.get("aligner", {}))
