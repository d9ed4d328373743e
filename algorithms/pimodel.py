"""Pi-Model (Laine & Aila, ICLR 2017, "Temporal ensembling for semi-supervised learning"): two
independent weak views of each unlabelled image must give the same softmax; the consistency cost is
the squared difference of the two softmax vectors, averaged over classes.

Form and defaults as TorchSSL and USB benchmark it: the second view's prediction is the detached
target (only the first view is trained, as in Mean Teacher with the student as its own teacher),
weight lambda_u 10 ramped up linearly over the first 40% of training. Laine & Aila ramp with
exp(-5(1-t)^2) over 80 of 300 epochs and pass gradients through both branches; the detached form
is the one every modern comparison (and our Mean Teacher) uses.

Takes per-example weights (`weights.kind`): each unlabelled example's squared error is multiplied by
its weight; influence scores that term's gradient by autograd, with the target softmax as target.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.algorithms.meanteacher import squared_error
from ssl_kd.components import forward_concat
from ssl_kd.distill import LossWeighter
from ssl_kd.ramps import linear_rampup
from ssl_kd.registry import register_algorithm
from ssl_kd.weighting.spec import WeightSpec, soft_targets


@dataclass
class PiModelConfig:
    lambda_u: float = 10.0  # final consistency weight (USB's classic-CV setting)
    rampup_fraction: float = 0.4  # linear ramp-up of the weight over this fraction of train.steps


@register_algorithm("pimodel")
class PiModel(Algorithm):
    Config = PiModelConfig
    labelled_views = ("weak",)
    unlabelled_views = ("weak", "weak_2")
    takes_weights = True

    def consistency(self, logits: torch.Tensor, target_logits: torch.Tensor, feats: torch.Tensor | None = None,
                    idx: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the batch of the (weighted) squared softmax difference to the detached second view."""
        target = torch.softmax(target_logits.detach().float(), dim=-1)
        ones = torch.ones(logits.shape[0], device=logits.device)
        weight = self.weigh(ones, feats, logits, target, idx, target.max(-1).values)
        return (squared_error(logits, target) * weight).mean()

    def weight_spec(self) -> WeightSpec:
        """The model's own softmax (batch statistics, as it makes the target) is the target of a squared-error term."""
        return dataclasses.replace(super().weight_spec(), targets=soft_targets,
                                   make_weighter=lambda cfg: LossWeighter(cfg, squared_error))

    def train_step(self, batch: Batch) -> StepOutput:
        (lx, _), (lu, fu), (lu2, _) = forward_concat(self.model, batch.x_l["weak"], batch.x_u["weak"], batch.x_u["weak_2"])
        sup = self.supervised_loss(lx, batch.y_l)
        unsup = self.consistency(lu, lu2, fu, batch.idx_u)
        ramp = linear_rampup(self.step, self.cfg.rampup_fraction * self.ctx.total_steps)
        return StepOutput(
            loss=sup + self.cfg.lambda_u * ramp * unsup,
            logs={"loss/sup": sup.detach(), "loss/unsup": unsup.detach(), "train/unsup_weight": self.cfg.lambda_u * ramp},
            pseudo_labels=lu2.detach().argmax(-1),
        )
