"""Knowledge distillation (Hinton, Vinyals & Dean 2015) from a teacher network, in the mode the
dataset calls for:

- KD mode (a fully labelled dataset such as `digits`, `cifar100`): the teacher is a checkpoint of
  this framework (`--teacher-ckpt`); the student minimises
  mean_i [alpha tau^2 KL(p_T^tau || p_S^tau) + (1 - alpha) CE(y_i)] on the labelled batch, both
  networks seeing the same weak view.
- SSL mode (a dataset with an unlabelled split such as `digits_30`): the teacher labels the weak
  view of each unlabelled image; the student minimises CE on the labelled batch plus
  lambda_u * mean_u(mask_u * l_u), l_u the cross-entropy of its strong view to the teacher's hard
  pseudo-label (`target=hard`) or tau^2 KL to its tempered distribution (`target=soft`), mask_u
  an optional confidence threshold on the teacher.

Where the teacher comes from: `--teacher-ckpt` if given (then `--teacher-net` may only confirm
its network); otherwise (SSL mode) it is trained with the student: for the first
`teacher_warmup` of the steps the student learns from labelled data only while the teacher is
warmed up on the labelled set (`frozen`, `weighted_ce`), on UDA's loss (`mpl`), or follows the
student (`ema`); a randomly initialised teacher is never used. The run log says which it was.
How the teacher changes afterwards is `teacher_update` (see ssl_kd/teacher.py).

Every per-example loss passes through the weighting module (`weights.*`, ssl_kd.weighting): the
unlabelled terms in SSL mode, the labelled terms in KD mode. KD-AIF (kdaif.py) is `kd` with
`weights.kind=influence`; with `weights.kind=none` the two are the same algorithm (tested).
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.algorithms.uda import UDA, UDAConfig
from ssl_kd.components import forward_concat
from ssl_kd.distill import DistillWeighter, kd_losses, pack_targets, teacher_weight_logs, tempered_kl
from ssl_kd.errors import ConfigError
from ssl_kd.ramps import linear_rampup
from ssl_kd.registry import register_algorithm
from ssl_kd.text.tokenise import check_same_tokenizer
from ssl_kd.teacher import (TEACHER_UPDATES, TeacherOptimiser, load_teacher, mpl_teacher_update, plain_module,
                            pseudo_label_grads, set_trainable, student_lr)
from ssl_kd.trainer.distributed import global_mean
from ssl_kd.trainer.ema import update_ema
from ssl_kd.weighting.spec import WeightSpec, hard_targets

MODES = ("auto", "ssl", "kd")
SELF_TRAINED = ("weighted_ce", "mpl", "feedback")  # teacher updates that train the teacher with its own optimiser
SSL_ONLY = ("mpl", "feedback")  # teacher updates that learn from pseudo-labels on unlabelled data
TARGETS = ("hard", "soft")


@dataclass
class KDConfig:
    mode: str = "auto"  # auto (ssl when the dataset has an unlabelled split, else kd) | ssl | kd
    teacher_ckpt: str = ""  # run folder or .pt of a trained ssl_kd run; required in KD mode
    teacher_net: str = ""  # teacher network; default: the checkpoint's, else train.net
    teacher_update: str = "auto"  # frozen | ema | weighted_ce | mpl | feedback; auto: frozen with a checkpoint, else ema
    teacher_warmup: float = 0.1  # SSL mode without a checkpoint: fraction of train.steps before pseudo-labels are used
    teacher_lr: float = 0.0  # the teacher's SGD learning rate (0: train.lr)
    teacher_ema: float = 0.99  # ema: decay of the teacher's average of the student
    tau: float = 1.0  # distillation temperature
    alpha: float = 0.9  # KD mode: weight of the distillation term against cross-entropy on the label
    target: str = "hard"  # SSL mode: hard (teacher's argmax) or soft (its distribution at tau)
    threshold: float = 0.0  # SSL mode: teacher confidence below which a pseudo-label is masked; 0 keeps all
    lambda_u: float = 1.0  # SSL mode: weight of the unlabelled loss
    uda_temperature: float = 0.7  # mpl: the teacher's UDA sharpening temperature (MPL code: 0.7)
    uda_threshold: float = 0.95  # mpl: the teacher's UDA confidence mask (MPL code: 0.95)
    uda_lambda: float = 8.0  # mpl: weight of the teacher's UDA loss (MPL code: 8)
    uda_rampup: float = 0.1  # mpl: linear ramp-up of the UDA weight over this fraction of train.steps
    feedback_decay: float = 0.99  # feedback: decay of the running baseline of the weights


def resolve_mode(mode: str, has_unlabelled: bool, dataset: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"algo.mode={mode!r}: use one of {', '.join(MODES)}")
    if mode == "ssl" and not has_unlabelled:
        raise ConfigError(f"algo.mode=ssl needs unlabelled data, but {dataset!r} is fully labelled; use a preset "
                          f"with a label count (e.g. {dataset}_100) or algo.mode=kd")
    return ("ssl" if has_unlabelled else "kd") if mode == "auto" else mode


@register_algorithm("kd")
class KD(Algorithm):
    Config = KDConfig
    name = "kd"
    labelled_views = ("weak",)
    unlabelled_views = ("weak", "strong")
    takes_weights = True
    crossfit_ready = True

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        self.student = plain_module(model)
        self.mode = resolve_mode(cfg.mode, ctx.data.has_unlabelled, ctx.data.name)
        self.update = cfg.teacher_update if cfg.teacher_update != "auto" else ("frozen" if cfg.teacher_ckpt else "ema")
        self.check_config()
        self.teacher, source = self.build_teacher()
        # a positive warm-up is at least one step, so that short runs never freeze a random teacher
        self.warmup_steps = 0 if cfg.teacher_ckpt or cfg.teacher_warmup == 0 else max(1, round(cfg.teacher_warmup * ctx.total_steps))
        if self.update == "frozen" and not cfg.teacher_ckpt and self.warmup_steps == 0:
            raise ConfigError("teacher_update=frozen without --teacher-ckpt would freeze a random network; "
                              "give --teacher-ckpt or set algo.teacher_warmup > 0 to warm the teacher up first")
        trains_ever = self.update in SELF_TRAINED or (self.update == "frozen" and self.warmup_steps > 0)
        self.teacher_opt = TeacherOptimiser(self.teacher, ctx.train_cfg, cfg.teacher_lr) if trains_ever else None
        self.uda = UDA(self.teacher, UDAConfig(cfg.uda_temperature, cfg.uda_threshold, 1.0), ctx) if self.update == "mpl" else None
        set_trainable(self.teacher, self.teacher_trains(0))
        self._teacher_step: Callable[[], None] | None = None  # the teacher's update, run after the student's step
        self.feedback_baseline = torch.ones((), device=ctx.device)  # feedback: running mean of the pseudo-label rewards
        self.feedback_started = False  # the baseline starts at the first batch's mean reward
        warm = f"{self.warmup_steps} warm-up steps ({self.warmup_phase()}), then " if self.warmup_steps else ""
        print(f"{self.name}: {self.mode.upper()} mode; teacher {source}; teacher update: {warm}{self.update}",
              file=sys.stderr)

    # ----- set-up ---------------------------------------------------------------------------------
    def check_config(self) -> None:
        cfg = self.cfg
        if self.update not in TEACHER_UPDATES:
            raise ConfigError(f"algo.teacher_update={self.update!r}: use auto or one of {', '.join(TEACHER_UPDATES)}")
        if cfg.target not in TARGETS:
            raise ConfigError(f"algo.target={cfg.target!r}: use hard or soft")
        if cfg.tau <= 0 or not 0 <= cfg.alpha <= 1 or not 0 <= cfg.teacher_warmup < 1:
            raise ConfigError("algo.tau must be > 0, algo.alpha in [0, 1] and algo.teacher_warmup in [0, 1)")
        if self.mode == "kd" and not cfg.teacher_ckpt:
            raise ConfigError(f"KD mode (on {self.ctx.data.name!r}) distils a trained teacher: pass --teacher-ckpt "
                              f"runs/<teacher run> (train one with --algo supervised --dataset {self.ctx.data.name}), "
                              "or use a preset with a label count for SSL mode")
        if self.update == "ema" and cfg.teacher_ckpt:
            raise ConfigError("teacher_update=ema makes the teacher an average of the student, which would overwrite the "
                              "--teacher-ckpt teacher with a random student's weights; use frozen or weighted_ce")
        if self.mode == "kd" and self.update in SSL_ONLY:
            raise ConfigError(f"teacher_update={self.update} learns from the student's use of pseudo-labelled unlabelled "
                              "data, so it needs SSL mode; in KD mode use frozen, ema or weighted_ce")

    def build_teacher(self) -> tuple[nn.Module, str]:
        cfg, train_net = self.cfg, self.ctx.train_cfg.net
        if cfg.teacher_ckpt:
            teacher, name, source = load_teacher(cfg.teacher_ckpt, self.ctx.data.name, cfg.teacher_net, self.ctx.make_net)
        else:
            name = cfg.teacher_net or train_net
            teacher = copy.deepcopy(self.student) if self.update == "ema" else self.ctx.make_net(name)
            source = f"{name}, trained with the student"
        check_same_tokenizer(name, train_net)
        if self.update == "ema" and name != train_net:
            raise ConfigError(f"teacher_update=ema averages the student's weights, so the teacher must be a {train_net!r} "
                              f"like the student, not {name!r}; drop --teacher-net or choose another teacher_update")
        return teacher, source

    def warmup_phase(self) -> str:
        return {"ema": "the teacher follows the student", "mpl": "the teacher learns UDA's loss"}.get(
            self.update, "the teacher learns the labelled set")

    def teacher_trains(self, step: int) -> bool:
        """Whether the teacher is optimised at `step` (only then do its parameters get gradients)."""
        return self.update in SELF_TRAINED or (self.update == "frozen" and step < self.warmup_steps)

    # ----- weights (ssl_kd.weighting): none here, influence in KD-AIF ------------------------------
    def labelled_loss(self, logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """SSL mode's supervised term: mean cross-entropy over the labelled batch (a cross-fitted
        influence reference leaves one fold of the labelled set out of it)."""
        keep = self.weights.labelled_keep(idx)
        if keep is None:
            return F.cross_entropy(logits.float(), labels)
        return (keep * F.cross_entropy(logits.float(), labels, reduction="none")).sum() / keep.sum().clamp(min=1)

    def weight_spec(self) -> WeightSpec:
        """SSL mode: the teacher's pseudo-labels (hard, or its distribution at tau) on unlabelled
        data; KD mode: the teacher's distribution at tau and the label of each labelled example,
        under the alpha-mix of distillation and cross-entropy."""
        labeller = self.labeller(self.teacher, batch_stats=not (self.cfg.teacher_ckpt and self.update == "frozen"))
        if self.mode == "kd":
            return WeightSpec(student=self.student, pool="labelled", labeller=labeller, targets=self.packed_targets,
                              tau=self.cfg.tau, make_weighter=self.kd_mode_weighter)
        soft = self.cfg.target == "soft"
        targets = (lambda logits, idx: torch.softmax(logits / self.cfg.tau, -1)) if soft else hard_targets
        return WeightSpec(student=self.student, pool="unlabelled", labeller=labeller, targets=targets,
                          tau=self.cfg.tau if soft else 1.0)

    def packed_targets(self, teacher_logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """KD mode's targets of the examples `idx`: the teacher's distribution at tau and the label."""
        return pack_targets(torch.softmax(teacher_logits / self.cfg.tau, -1), self.ctx.data.train_y[idx])

    def kd_mode_weighter(self, cfg: Any) -> DistillWeighter:
        """KD mode's loss is the alpha-mix of tempered KL and cross-entropy (DKD swaps in its own)."""
        return DistillWeighter(cfg, self.cfg.alpha)

    # ----- the step -------------------------------------------------------------------------------
    @property
    def needs_unlabelled(self) -> bool:
        return self.mode == "ssl"

    def train_step(self, batch: Batch) -> StepOutput:
        set_trainable(self.teacher, self.teacher_trains(self.step))
        self._teacher_step = None
        if self.mode == "kd":
            out = self.kd_step(batch)
        elif self.step < self.warmup_steps:
            out = self.warmup_step(batch)
        else:
            out = self.ssl_step(batch)
        return out

    def teacher_logits(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's logits per input, from one forward, with gradients only when it trains at
        this step. A frozen checkpoint predicts in eval mode (its trained BatchNorm statistics);
        a teacher that changes with the student uses batch statistics, as FixMatch's and Mean
        Teacher's pseudo-labels are made: the EMA's averaged weights do not fit the student's
        running statistics while the student still moves fast (measured: 14% vs 52% test top-1)."""
        self.teacher.train(not (self.cfg.teacher_ckpt and self.update == "frozen"))
        with torch.set_grad_enabled(self.teacher_trains(self.step)):
            return [logits for logits, _ in forward_concat(self.teacher, *xs)]

    def warmup_step(self, batch: Batch) -> StepOutput:
        """SSL mode before pseudo-labels are used: the student learns the labelled batch, the teacher warms up."""
        x_l, y_l = batch.x_l["weak"], batch.y_l
        logits, _ = self.model(x_l)
        sup = F.cross_entropy(logits.float(), y_l)
        logs: dict[str, Any] = {"loss/sup": sup.detach(), "train/teacher_warmup": 1.0}
        if self.update == "mpl":
            t_l, t_uw, t_us = self.teacher_logits(x_l, batch.x_u["weak"], batch.x_u["strong"])
            t_loss = self.teacher_uda_loss(t_l, t_uw, t_us, y_l, logs)
        elif self.update != "ema":
            (t_l,) = self.teacher_logits(x_l)
            t_loss = F.cross_entropy(t_l.float(), y_l)
            logs["train/teacher_batch_acc"] = 100.0 * (t_l.detach().argmax(-1) == y_l).float().mean()
        if self.teacher_opt is not None:
            logs["loss/teacher"] = t_loss.detach()
            self._teacher_step = lambda: self.teacher_opt.step(t_loss)
        return StepOutput(loss=sup, logs=logs)

    def ssl_step(self, batch: Batch) -> StepOutput:
        cfg = self.cfg
        x_l, y_l, x_uw, x_us = batch.x_l["weak"], batch.y_l, batch.x_u["weak"], batch.x_u["strong"]
        trains = self.teacher_trains(self.step)
        t_l, t_uw, t_us = self.teacher_logits(x_l, x_uw, x_us) if trains else (None, *self.teacher_logits(x_uw), None)
        probs = torch.softmax(t_uw.detach().float(), dim=-1)
        conf, pseudo = probs.max(-1)
        mask = (conf >= cfg.threshold).float()
        (s_l, _), (s_us, f_us) = forward_concat(self.model, x_l, x_us)
        sup = self.labelled_loss(s_l, y_l, batch.idx_l)
        if cfg.target == "hard":
            per_example, targets = F.cross_entropy(s_us.float(), pseudo, reduction="none"), pseudo
        else:
            targets = torch.softmax(t_uw.detach().float() / cfg.tau, dim=-1)
            per_example = tempered_kl(s_us, targets, cfg.tau)
        w = self.weigh(mask, f_us, s_us, targets, batch.idx_u, conf)  # the mask itself without weights
        unsup = (w * per_example).mean()
        loss = sup + cfg.lambda_u * unsup
        logs: dict[str, Any] = {"loss/sup": sup.detach(), "loss/unsup": unsup.detach(),
                                "loss/unsup_unweighted": (mask * per_example).mean().detach(),
                                "train/teacher_confidence": conf.mean()}
        if self.update == "weighted_ce":
            t_pseudo = (w * F.cross_entropy(t_us.float(), pseudo, reduction="none")).mean()
            t_loss = self.labelled_loss(t_l, y_l, batch.idx_l) + cfg.lambda_u * t_pseudo
            logs.update({"loss/teacher": t_loss.detach(), "loss/teacher_pseudo": t_pseudo.detach()})
            self._teacher_step = lambda: self.teacher_opt.step(t_loss)
        elif self.update == "feedback":
            t_loss = self.teacher_feedback_loss(t_l, t_uw, y_l, batch.idx_l, pseudo, self.weights.rewards(w), logs)
            self._teacher_step = lambda: self.teacher_opt.step(t_loss)
        elif self.update == "mpl":
            t_loss = self.teacher_uda_loss(t_l, t_uw, t_us, y_l, logs)
            grads_u = pseudo_label_grads(cfg.lambda_u * unsup, self.student)
            lr = student_lr(self.student, self.ctx.train_cfg, self.step)
            self._teacher_step = lambda: logs.update(mpl_teacher_update(  # rewards the weak-view prediction that made the labels
                self.teacher_opt, t_loss, t_uw, pseudo, self.student, x_l, y_l, grads_u, lr, self.ctx.autocast))
        return StepOutput(loss=loss, logs=logs, pseudo_labels=pseudo, mask=mask if cfg.threshold > 0 else None)

    def kd_step(self, batch: Batch) -> StepOutput:
        cfg = self.cfg
        x, y = batch.x_l["weak"], batch.y_l
        (t_logits,) = self.teacher_logits(x)
        teacher_probs = torch.softmax(t_logits.detach().float() / cfg.tau, dim=-1)
        s_logits, feats = self.model(x)
        per_example, parts = self.kd_mode_loss(s_logits, teacher_probs, y)
        ones = torch.ones(s_logits.shape[0], device=s_logits.device)
        w = self.weigh(ones, feats, s_logits, pack_targets(teacher_probs, y), batch.idx_l, teacher_probs.max(-1).values)
        loss = (w * per_example).mean()
        logs: dict[str, Any] = {f"loss/{k}": (w * v).mean().detach() for k, v in parts.items()}
        logs["train/teacher_batch_acc"] = 100.0 * (t_logits.detach().argmax(-1) == y).float().mean()
        if self.update == "weighted_ce":
            t_loss = (w * F.cross_entropy(t_logits.float(), y, reduction="none")).mean()
            logs["loss/teacher"] = t_loss.detach()
            self._teacher_step = lambda: self.teacher_opt.step(t_loss)
        if self.weights.active:
            logs.update(teacher_weight_logs(w, t_logits.detach().argmax(-1), y))
        return StepOutput(loss=loss, logs=logs)

    def kd_mode_loss(self, s_logits: torch.Tensor, teacher_probs: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """KD mode's per-example loss and its named parts (logged as weighted batch means); DKD
        (dkd.py) overrides this with its decoupled loss."""
        distill, ce = kd_losses(s_logits, teacher_probs, labels, self.cfg.tau)
        return self.cfg.alpha * distill + (1 - self.cfg.alpha) * ce, {"distill": distill, "sup": ce}

    # ----- the teacher's losses and updates -------------------------------------------------------
    def teacher_uda_loss(self, t_l: torch.Tensor, t_uw: torch.Tensor, t_us: torch.Tensor, y_l: torch.Tensor,
                         logs: dict[str, Any]) -> torch.Tensor:
        """MPL's teacher objective besides the feedback: UDA's labelled CE plus its ramped consistency loss."""
        self.uda.step = self.step
        sup, _ = self.uda.sup_loss(t_l, y_l)
        consistency, _, _ = self.uda.unsup_loss(t_uw, t_us)
        weight = self.cfg.uda_lambda * linear_rampup(self.step + 1, self.cfg.uda_rampup * self.ctx.total_steps)
        logs.update({"loss/teacher_sup": sup.detach(), "loss/teacher_uda": consistency.detach()})
        return sup + weight * consistency

    def teacher_feedback_loss(self, t_l: torch.Tensor, t_uw: torch.Tensor, y_l: torch.Tensor, idx_l: torch.Tensor,
                              pseudo: torch.Tensor, w: torch.Tensor, logs: dict[str, Any]) -> torch.Tensor:
        """Labelled CE + lambda_u mean_i (w_i - b) CE(teacher(weak_i), pseudo_i), b a running mean of w:
        REINFORCE with each pseudo-label's reward w (its weight before renormalisation, 0 where the
        mask drops it; `weights.rewards`) and b as the baseline."""
        # the global batch's mean reward (torchrun), so the baseline stays the same on every rank
        mean = global_mean(w.detach())
        if not self.feedback_started:
            self.feedback_baseline, self.feedback_started = mean.clone(), True
        reward = w.detach() - self.feedback_baseline
        self.feedback_baseline = self.cfg.feedback_decay * self.feedback_baseline + (1 - self.cfg.feedback_decay) * mean
        t_pseudo = (reward * F.cross_entropy(t_uw.float(), pseudo, reduction="none")).mean()
        logs.update({"loss/teacher_feedback": t_pseudo.detach(), "train/feedback_baseline": self.feedback_baseline})
        return self.labelled_loss(t_l, y_l, idx_l) + self.cfg.lambda_u * t_pseudo

    def after_step(self) -> None:
        if self._teacher_step is not None:
            self._teacher_step()
            self._teacher_step = None
        if self.update == "ema":  # Mean Teacher's ramp: no share of the random initialisation survives the first steps
            update_ema(self.teacher, self.student, min(1.0 - 1.0 / (self.step + 1), self.cfg.teacher_ema))

    def eval_model(self) -> nn.Module:
        return self.teacher

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "feedback_baseline": self.feedback_baseline.clone(),
                "feedback_started": self.feedback_started,
                "teacher_opt": self.teacher_opt.state_dict() if self.teacher_opt is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "teacher" not in state:
            raise ValueError(f"a {self.name} checkpoint holds its teacher; this one holds {sorted(state)}")
        self.teacher.load_state_dict(state["teacher"])
        self.feedback_baseline = state["feedback_baseline"].to(self.feedback_baseline.device)
        self.feedback_started = bool(state.get("feedback_started", True))
        if self.teacher_opt is not None:
            self.teacher_opt.load_state_dict(state["teacher_opt"])
