"""MixMatch (Berthelot et al., NeurIPS 2019): the label of an unlabelled image is guessed by averaging
the model's predictions on K weak views and sharpening the average (temperature T); labelled and
unlabelled images are then mixed with MixUp (lambda ~ Beta(alpha, alpha), kept >= 1/2 so each mixed
example stays closest to its first source), and the model learns cross-entropy on the mixed labelled
part and the squared error of its softmax on the mixed unlabelled part.

Defaults from the paper: K 2, T 0.5, alpha 0.75, lambda_u 100 ramped up linearly over the first
16,000 of 2^20 steps. The guessing forward runs without gradients and leaves the BatchNorm
statistics as they were; the mixed batch goes through the network in one forward (BatchNorm sees
the whole mixed batch: the paper's interleaving serves the same end). MixUp and the permutation draw
from torch's global generator, which the checkpoint restores, so resume is exact; under torchrun
each process mixes within its own part of the batch (as USB does). Images only: mixing token ids
means nothing. A mixed example has no single dataset index, so there are no per-example weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.algorithms.meanteacher import squared_error
from ssl_kd.components import draw_mixup, forward_concat, mixup, sharpen, soft_cross_entropy
from ssl_kd.errors import ConfigError
from ssl_kd.ramps import linear_rampup
from ssl_kd.registry import register_algorithm
from ssl_kd.teacher import preserved_buffers

FULL_RUN = 2 ** 20  # the steps of the standard protocol, which the paper's step counts refer to


@dataclass
class MixMatchConfig:
    temperature: float = 0.5  # sharpening of the guessed label
    alpha: float = 0.75  # MixUp's Beta(alpha, alpha)
    lambda_u: float = 100.0  # final weight of the unlabelled squared error
    rampup_fraction: float = 16000 / FULL_RUN  # linear ramp-up of lambda_u over this fraction of train.steps


@register_algorithm("mixmatch")
class MixMatch(Algorithm):
    Config = MixMatchConfig
    labelled_views = ("weak",)
    unlabelled_views = ("weak", "weak_2")
    modalities = ("image",)

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        if cfg.alpha <= 0 or cfg.temperature <= 0:
            raise ConfigError(f"mixmatch needs algo.alpha > 0 and algo.temperature > 0 (got {cfg.alpha}, {cfg.temperature}); "
                              "the paper uses 0.75 and 0.5")

    def guess_labels(self, *views: torch.Tensor) -> torch.Tensor:
        """The sharpened mean prediction over the views (no gradient, BatchNorm statistics untouched)."""
        with torch.no_grad(), preserved_buffers(self.model):
            probs = [torch.softmax(logits.float(), dim=-1) for logits, _ in forward_concat(self.model, *views)]
        return sharpen(torch.stack(probs).mean(0), self.cfg.temperature)

    def draw_mixup(self, n: int, device: torch.device) -> tuple[float, torch.Tensor]:
        return draw_mixup(self.cfg.alpha, n, device)

    def train_step(self, batch: Batch) -> StepOutput:
        views = [batch.x_u[v] for v in self.unlabelled_views]
        guess = self.guess_labels(*views)
        x = torch.cat([batch.x_l["weak"], *views])
        y = torch.cat([F.one_hot(batch.y_l, self.ctx.num_classes).float(), *([guess] * len(views))])
        lam, perm = self.draw_mixup(x.shape[0], x.device)
        mixed_x, mixed_y = mixup(x, y, lam, perm)
        logits, _ = self.model(mixed_x)
        b = batch.y_l.shape[0]
        sup = soft_cross_entropy(logits[:b], mixed_y[:b]).mean()
        unsup = squared_error(logits[b:], mixed_y[b:]).mean()
        weight = self.cfg.lambda_u * linear_rampup(self.step, self.cfg.rampup_fraction * self.ctx.total_steps)
        return StepOutput(
            loss=sup + weight * unsup,
            logs={"loss/sup": sup.detach(), "loss/unsup": unsup.detach(), "train/unsup_weight": weight, "train/mixup_lambda": lam},
            pseudo_labels=guess.argmax(-1)[: batch.x_u["weak"].shape[0]],
        )
