"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017): the student learns from labelled
cross-entropy plus a consistency cost, the mean squared difference between its softmax on one
weak view of an unlabelled image and the softmax of its EMA teacher on another weak view.

The teacher is an exponential moving average of the student's weights, kept here (not the
trainer's evaluation EMA) so it follows the paper's schedule whatever `train.ema` is: decay 0.99
while the consistency weight ramps up and 0.999 after, capped at 1 - 1/(step+1) at the start as
in the authors' PyTorch code. It never receives gradients: its forward runs under no_grad and
its parameters have requires_grad False. Only the student side of the cost is differentiable,
which is what USB twice got wrong (it compared a detached tensor with itself, so the consistency
loss trained nothing and its Mean Teacher equalled its supervised baseline).

Defaults from the paper's code: consistency weight 100 (MSE averaged over classes), sigmoid
ramp-up exp(-5(1-t)^2) over the first 40k of 150k steps (27% of training). The teacher runs in
train mode (batch statistics), as in the authors' code; its BatchNorm buffers follow the student's.

On a regression task (STS-B) the supervised term is MSE on the gold scores and the consistency
cost the squared difference of the student's and the teacher's one output (no softmax); weights
are refused there. lambda_u's default was set for softmax errors averaged over classes, which are
far smaller than a 0..5 score's: choose it on validation for a regression run.

Takes per-example weights (`weights.kind`): each unlabelled example's squared error (averaged over
classes) is multiplied by its weight; influence scores that term's gradient by autograd
(`LossWeighter`), with the teacher's softmax as the target.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.components import forward_concat
from ssl_kd.distill import LossWeighter, at_least_float32
from ssl_kd.ramps import sigmoid_rampup
from ssl_kd.registry import register_algorithm
from ssl_kd.trainer.ema import update_ema
from ssl_kd.weighting.spec import WeightSpec, soft_targets


def squared_error(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per example: the mean over classes of (softmax(logits) - targets)^2."""
    return (torch.softmax(at_least_float32(logits), dim=-1) - targets).pow(2).mean(-1)


@dataclass
class MeanTeacherConfig:
    lambda_u: float = 100.0  # final consistency weight (paper: max_consistency_cost 100)
    rampup_fraction: float = 0.27  # sigmoid ramp-up over this fraction of train.steps (paper: 40k of 150k)
    ema_rampup: float = 0.99  # teacher EMA decay during the ramp-up
    ema: float = 0.999  # teacher EMA decay after the ramp-up


@register_algorithm("meanteacher")
class MeanTeacher(Algorithm):
    Config = MeanTeacherConfig
    labelled_views = ("weak",)
    unlabelled_views = ("weak", "weak_2")
    takes_weights = True
    tasks = ("classification", "regression")

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        self.student = getattr(model, "_orig_mod", model)  # the plain module under torch.compile
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @property
    def rampup_steps(self) -> float:
        return self.cfg.rampup_fraction * self.ctx.total_steps

    def consistency_weight(self) -> float:
        return self.cfg.lambda_u * sigmoid_rampup(self.step, self.rampup_steps)

    def teacher_decay(self) -> float:
        decay = self.cfg.ema_rampup if self.step < self.rampup_steps else self.cfg.ema
        return min(1.0 - 1.0 / (self.step + 1), decay)

    def consistency_loss(self, student_logits: torch.Tensor, teacher_input: torch.Tensor,
                         feats: torch.Tensor | None = None, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over examples and classes of (softmax(student) - softmax(teacher))^2, each
        example's term weighted when weights are on."""
        self.teacher.train()
        with torch.no_grad():
            teacher_logits, _ = self.teacher(teacher_input)
        if self.ctx.data.is_regression:  # the outputs are scores: their squared difference (no weights: refused)
            return F.mse_loss(student_logits.float(), teacher_logits.float())
        teacher_probs = torch.softmax(teacher_logits.float(), dim=-1)
        if not self.weights.active:
            return F.mse_loss(torch.softmax(student_logits.float(), dim=-1), teacher_probs)
        ones = torch.ones(student_logits.shape[0], device=student_logits.device)
        weight = self.weigh(ones, feats, student_logits, teacher_probs, idx, teacher_probs.max(-1).values)  # type: ignore[arg-type]
        per_entry = F.mse_loss(torch.softmax(student_logits.float(), dim=-1), teacher_probs, reduction="none")
        return (per_entry * weight[:, None]).mean()  # with unit weights, bit-identical to the mean above

    def weight_spec(self) -> WeightSpec:
        """The teacher's softmax (train mode, as it labels) is the target of a squared-error term."""
        return WeightSpec(student=self.student, pool="unlabelled", labeller=self.labeller(self.teacher),
                          targets=soft_targets,
                          make_weighter=lambda cfg: LossWeighter(cfg, squared_error))

    def train_step(self, batch: Batch) -> StepOutput:
        (lx, _), (lu, fu) = forward_concat(self.model, batch.x_l["weak"], batch.x_u["weak"])
        sup = self.supervised_loss(lx, batch.y_l)
        unsup = self.consistency_loss(lu, batch.x_u["weak_2"], fu, batch.idx_u)
        weight = self.consistency_weight()
        return StepOutput(
            loss=sup + weight * unsup,
            logs={"loss/sup": sup.detach(), "loss/unsup": unsup.detach(), "train/consistency_weight": weight},
        )

    def after_step(self) -> None:
        update_ema(self.teacher, self.student, self.teacher_decay())

    def eval_model(self) -> nn.Module:
        return self.teacher

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "teacher" not in state:
            raise ValueError(f"a meanteacher checkpoint holds its teacher's weights; this one holds {sorted(state)}")
        self.teacher.load_state_dict(state["teacher"])
