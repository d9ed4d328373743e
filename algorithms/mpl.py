"""Meta Pseudo Labels (Pham, Dai, Xie, Luong, Le, CVPR 2021): a teacher labels unlabelled images
for a student and learns from how much the student's step on those labels changed the student's
labelled loss.

Per step: the teacher (trained like UDA: labelled CE plus the ramped, masked consistency of its
strong view to its sharpened weak view, reusing algorithms/uda.py) labels each strong unlabelled
view with its argmax; the student learns only from those hard pseudo-labels (the trainer steps
it); then the teacher adds h * CE(teacher(strong view), pseudo-label) to its loss, h the MPL
feedback of ssl_kd.teacher.mpl_feedback (h > 0 when the pseudo-labels lowered the student's
labelled loss: the label is rewarded). The student's EMA is the evaluated model (`ema_top1`);
the teacher is evaluated as `algo_top1`. For the first `student_wait` of the steps only the
teacher learns (the port's student_wait_steps, where the student's learning rate is 0): the student
is not run and the trainer gets a loss with no path to it, so SGD skips its parameters and neither
weight decay nor momentum moves it (nor are its BatchNorm statistics updated). Unlike the port,
the student's momentum does not gather the wait's gradients and its schedule is not shifted.
The teacher's consistency mask is taken on the sharpened weak-view prediction, as in the port
(UDA's own code masks the raw one).

Defaults from the authors' CIFAR-10 setting as re-implemented in kekmodel/MPL-pytorch: UDA
temperature 0.7, threshold 0.95, UDA weight 8 ramped up linearly, teacher learning rate equal to
the student's. Left out: label smoothing of the teacher's labelled loss and the final fine-tuning
of the student on the labelled set. Checked (tests/test_kd_mpl.py): the feedback's sign, that the
teacher receives the feedback gradient and the student none from the teacher's losses.
The feedback's moving average (decay 0.99, `baseline_decay`) is subtracted from it as in the
official code, which starts that average at a random value; here it starts at 0.
Takes per-example weights (`weights.kind`): they multiply the student's cross-entropy on each
pseudo-label, and so the gradient the teacher's feedback is computed from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.algorithms.uda import UDA, UDAConfig
from ssl_kd.components import forward_concat
from ssl_kd.errors import ConfigError
from ssl_kd.ramps import linear_rampup
from ssl_kd.registry import register_algorithm
from ssl_kd.teacher import TeacherOptimiser, mpl_teacher_update, plain_module, pseudo_label_grads, student_lr
from ssl_kd.weighting.spec import WeightSpec


@dataclass
class MPLConfig:
    teacher_net: str = ""  # teacher network (default: train.net)
    teacher_lr: float = 0.0  # the teacher's SGD learning rate (0: train.lr)
    student_wait: float = 0.1  # fraction of train.steps during which only the teacher learns
    uda_temperature: float = 0.7  # sharpening temperature of the teacher's weak-view targets
    uda_threshold: float = 0.95  # weak-view confidence below which the consistency loss is masked
    uda_lambda: float = 8.0  # weight of the teacher's consistency loss
    uda_rampup: float = 0.1  # linear ramp-up of that weight over this fraction of train.steps
    baseline_decay: float = 0.99  # decay of the moving average of h subtracted from it (the official code's); 1: none


@register_algorithm("mpl")
class MPL(Algorithm):
    Config = MPLConfig
    name = "mpl"
    labelled_views = ("weak",)
    unlabelled_views = ("weak", "strong")
    takes_weights = True

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        if not 0 <= cfg.student_wait < 1:
            raise ConfigError(f"algo.student_wait={cfg.student_wait}: give a fraction of train.steps in [0, 1)")
        self.student = plain_module(model)
        self.teacher = ctx.make_net(cfg.teacher_net or ctx.train_cfg.net)
        if not 0 <= cfg.baseline_decay <= 1:
            raise ConfigError(f"algo.baseline_decay={cfg.baseline_decay}: give a decay in [0, 1] (1: no baseline)")
        self.teacher_opt = TeacherOptimiser(self.teacher, ctx.train_cfg, cfg.teacher_lr, cfg.baseline_decay)
        uda_cfg = UDAConfig(temperature=cfg.uda_temperature, threshold=cfg.uda_threshold, mask_sharpened=True)
        self.uda = UDA(self.teacher, uda_cfg, ctx)
        self.wait_steps = round(cfg.student_wait * ctx.total_steps)
        self._teacher_step: Callable[[], None] | None = None

    def train_step(self, batch: Batch) -> StepOutput:
        x_l, y_l, x_uw, x_us = batch.x_l["weak"], batch.y_l, batch.x_u["weak"], batch.x_u["strong"]
        self.teacher.train()
        (t_l, _), (t_uw, _), (t_us, _) = forward_concat(self.teacher, x_l, x_uw, x_us)
        self.uda.step = self.step
        t_sup, _ = self.uda.sup_loss(t_l, y_l)
        consistency, _, mask = self.uda.unsup_loss(t_uw, t_us)
        uda_weight = self.cfg.uda_lambda * linear_rampup(self.step + 1, self.cfg.uda_rampup * self.ctx.total_steps)
        t_loss = t_sup + uda_weight * consistency
        pseudo = t_us.detach().argmax(-1)
        student_learns = self.step >= self.wait_steps
        if student_learns and self.weights.active:
            s_logits, s_feats = self.model(x_us)
            ones = torch.ones_like(pseudo, dtype=torch.float32)
            weight = self.weigh(ones, s_feats, s_logits, pseudo, batch.idx_u, torch.softmax(t_us.detach().float(), -1).max(-1).values)
            s_loss = (weight * F.cross_entropy(s_logits.float(), pseudo, reduction="none")).mean()
        elif student_learns:
            s_loss = F.cross_entropy(self.model(x_us)[0].float(), pseudo)
        else:  # no gradient reaches the student, so the optimiser leaves it exactly as it is
            s_loss = torch.zeros((), device=x_us.device, requires_grad=True)
        logs: dict[str, Any] = {"loss/student": s_loss.detach(), "loss/teacher_sup": t_sup.detach(),
                                "loss/teacher_uda": consistency.detach(), "train/uda_mask_ratio": mask.mean()}
        if student_learns:
            grads_u, lr = pseudo_label_grads(s_loss, self.student), student_lr(self.student, self.ctx.train_cfg, self.step)
            self._teacher_step = lambda: logs.update(mpl_teacher_update(
                self.teacher_opt, t_loss, t_us, pseudo, self.student, x_l, y_l, grads_u, lr, self.ctx.autocast))
        else:
            self._teacher_step = lambda: self.teacher_opt.step(t_loss)
        return StepOutput(loss=s_loss, logs=logs, pseudo_labels=pseudo)

    def weight_spec(self) -> WeightSpec:
        """The teacher's hard pseudo-labels (train mode, as it labels)."""
        return dataclasses.replace(super().weight_spec(), labeller=self.labeller(self.teacher))

    def after_step(self) -> None:
        if self._teacher_step is not None:
            self._teacher_step()
            self._teacher_step = None

    def eval_model(self) -> nn.Module:
        return self.teacher

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "teacher_opt": self.teacher_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "teacher" not in state:
            raise ValueError(f"an mpl checkpoint holds its teacher; this one holds {sorted(state)}")
        self.teacher.load_state_dict(state["teacher"])
        self.teacher_opt.load_state_dict(state["teacher_opt"])
