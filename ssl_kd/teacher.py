"""The teacher side of teacher-student algorithms (`kd`, `kdaif`, `mpl`): loading a teacher from a
checkpoint, its own optimiser, and the Meta Pseudo Labels feedback signal.

Teacher update mechanisms (`TEACHER_UPDATES`), chosen per run:
- `frozen`: never changes after it is loaded (or warmed up on the labelled set); no gradients.
- `ema`: an exponential moving average of the student, updated in place after each student step;
  no gradients.
- `weighted_ce`: fine-tuned by its own optimiser on labelled cross-entropy plus the weighted
  pseudo-label loss (the weights the student's loss uses).
- `mpl`: trained by its own optimiser on UDA's losses plus the MPL feedback (`mpl_feedback`)
  minus its moving average (the baseline of the official code, kept by `TeacherOptimiser`).
- `feedback`: trained by its own optimiser on labelled cross-entropy plus a per-example version
  of MPL's feedback: each pseudo-label's cross-entropy on the teacher's weak view, times its
  weight minus a running baseline, so the teacher makes pseudo-labels that weighed more than
  usual more likely and the others less. With every weight 1 (`kd`) the term vanishes.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.data.build import parse_dataset_name
from ssl_kd.errors import CheckpointError
from ssl_kd.registry import DATASETS, discover_all
from ssl_kd.trainer import distributed
from ssl_kd.trainer.checkpoint import load_checkpoint, load_module_state, resolve_checkpoint
from ssl_kd.trainer.compile import CompiledWithFallback
from ssl_kd.trainer.optim import build_optimizer, schedule_factor

TEACHER_UPDATES = ("frozen", "ema", "weighted_ce", "mpl", "feedback")


def plain_module(model: nn.Module) -> nn.Module:
    """The module under torch.compile's wrapper (its parameters and modes are the same), and the
    network under DistributedDataParallel's (whose forward would run DDP's gradient hooks)."""
    if isinstance(model, CompiledWithFallback) and isinstance(model.eager, nn.parallel.DistributedDataParallel):
        return model.eager.module
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    return getattr(model, "_orig_mod", model)


def describe_family(family: str) -> str:
    """What a teacher must share with its student: the classes and the input statistics."""
    discover_all()
    if family not in DATASETS:
        return "an unknown dataset"
    fam = DATASETS.get(family)
    classes = f"{fam.num_classes} classes" if fam.num_classes else "the classes of its folder"  # imagefolder
    return f"{classes}, inputs normalised with mean {fam.policy.mean} and std {fam.policy.std}"


def load_teacher(path: str, dataset: str, net: str, make_net: Callable[[str], nn.Module]) -> tuple[nn.Module, str, str]:
    """(network, its name, a log line) for the teacher in checkpoint `path` (run folder or .pt).

    The teacher must come from a run on the same dataset family (same classes and images); its
    EMA weights are used when the run kept an EMA (they are what its summary reports). `net`, when
    given, must name the checkpoint's network.
    """
    ckpt = resolve_checkpoint(path)
    state = load_checkpoint(ckpt)
    saved = state["config"]["train"]
    family, student_family = parse_dataset_name(saved["dataset"])[0], parse_dataset_name(dataset)[0]
    if family != student_family:
        raise CheckpointError(f"teacher checkpoint {ckpt} was trained on {saved['dataset']!r} ({describe_family(family)}), "
                              f"but this run is on {dataset!r} ({describe_family(student_family)}); give a teacher trained on "
                              f"{student_family} (e.g. --algo supervised --dataset {student_family})")
    if net and net != saved["net"]:
        raise CheckpointError(f"--teacher-net {net!r} does not match teacher checkpoint {ckpt}, which holds a "
                              f"{saved['net']!r}; drop --teacher-net (the checkpoint's network is used) or give {saved['net']!r}")
    name = saved["net"]
    teacher = make_net(name)
    weights, which = (state["ema"], "EMA") if state.get("ema") is not None else (state["model"], "raw")
    load_module_state(teacher, weights, "teacher network", ckpt)
    return teacher, name, f"loaded from {ckpt} ({name}, {which} weights, step {state['step']} of a {saved['algo']} run)"


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """Switch gradients on or off for every parameter; switching off also drops stale gradients."""
    for p in module.parameters():
        if p.requires_grad != trainable:
            p.requires_grad_(trainable)
        if not trainable:
            p.grad = None


class TeacherOptimiser:
    """The teacher's own optimiser and schedule, chosen as the student's are (SGD + cosine, or
    AdamW + linear for Hugging Face nets: ssl_kd.trainer.optim), with the student's settings unless
    `lr` is given, and the moving baseline of MPL's feedback (`mpl_reward`). All live in the
    algorithm's state_dict (through this object's), so resume is exact."""

    def __init__(self, teacher: nn.Module, train_cfg: Any, lr: float = 0.0, mpl_baseline_decay: float = 0.99) -> None:
        if not 0 <= mpl_baseline_decay <= 1:
            raise ValueError(f"MPL baseline decay {mpl_baseline_decay}: give a value in [0, 1] (1: no baseline)")
        t = dataclasses.replace(train_cfg, lr=lr or train_cfg.lr)
        self.optimizer, self.scheduler = build_optimizer(teacher, t)
        self.mpl_baseline_decay = mpl_baseline_decay
        self.mpl_baseline = torch.zeros(())  # moving average of MPL's feedback h

    def mpl_reward(self, h: torch.Tensor) -> torch.Tensor:
        """h minus its moving average, the average updated with h first, as the official MPL code
        does (decay 0.99; it starts the average at a random value, here 0). h is the same on
        every rank (`mpl_feedback` all-reduces it), so the baseline is too. Decay 1: h itself."""
        self.mpl_baseline = self.mpl_baseline.to(h.device)
        self.mpl_baseline = self.mpl_baseline_decay * self.mpl_baseline + (1 - self.mpl_baseline_decay) * h.detach()
        return h.detach() - self.mpl_baseline

    def step(self, loss: torch.Tensor) -> None:
        """One update; under torchrun from the gradient averaged across ranks, so the teacher stays
        the same on every rank. A non-finite loss is caught by the trainer's divergence guard at
        its next check (the teacher's weights are checked with the student's), not here: a check
        per step would make the host wait for the device."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_grads_(p for group in self.optimizer.param_groups for p in group["params"])
        self.optimizer.step()
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "mpl_baseline": self.mpl_baseline.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.mpl_baseline = state.get("mpl_baseline", torch.zeros(())).clone()  # older checkpoints: none yet


def student_lr(student: nn.Module, train_cfg: Any, step: int) -> float:
    """The learning rate the trainer's optimiser used for the student at `step`, under the student's
    own schedule (SGD's cosine or multistep, AdamW's linear warm-up and decay for Hugging Face nets).

    MPL's feedback is the first-order change of the labelled loss under an SGD step of this size;
    under AdamW the real step is preconditioned per parameter, so there the feedback is the SGD
    approximation at the same learning rate (its sign and ordering, not its exact scale)."""
    return train_cfg.lr * schedule_factor(student, train_cfg)(step)


@contextmanager
def preserved_buffers(module: nn.Module) -> Iterator[None]:
    """Run a train-mode forward without leaving its BatchNorm statistics behind."""
    saved = [b.clone() for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(module.buffers(), saved):
                buffer.copy_(value)


def trainable_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def pseudo_label_grads(loss: torch.Tensor, student: nn.Module) -> list[torch.Tensor]:
    """Gradient of the student's pseudo-label loss alone (the graph is kept for the trainer's backward)."""
    params = trainable_params(student)
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]


def mpl_feedback(student: nn.Module, x_l: torch.Tensor, y_l: torch.Tensor, grads_u: list[torch.Tensor], lr: float,
                 autocast: Callable[[], Any]) -> torch.Tensor:
    """Meta Pseudo Labels' feedback h = lr * <grad L_l(theta_S'), grad L_u(theta_S)>.

    theta_S' is the student after its step on the pseudo-label loss L_u; by first-order Taylor,
    L_l(theta_S) - L_l(theta_S') ~ h, so h > 0 means the pseudo-labels lowered the student's
    labelled loss, and the teacher's loss h * CE(teacher, pseudo-label) then rewards (raises the
    probability of) the pseudo-label. This is the sign of Pham et al.'s derivation, the "old minus
    new" form; a published port ships the opposite sign. Measuring it with gradients, not as the
    difference of two losses, isolates the pseudo-label part of a student step that also holds
    other losses (kdaif's labelled cross-entropy). The labelled loss is taken in train mode (batch
    statistics, as during training) without touching the BatchNorm buffers.
    """
    student = plain_module(student)
    with preserved_buffers(student):  # restored after the backward, which still needs them
        with autocast():
            logits, _ = student(x_l)
        loss = F.cross_entropy(logits.float(), y_l)
        grads_l = torch.autograd.grad(loss, trainable_params(student), allow_unused=True)
    pairs = [(gl, gu) for gl, gu in zip(grads_l, grads_u) if gl is not None]
    # torchrun: the dot product of the global batch's gradients, not the mean of each rank's own
    distributed.all_reduce_mean_([t for pair in pairs for t in pair], distributed.world())
    dot = sum((gl * gu).sum() for gl, gu in pairs)
    return lr * torch.as_tensor(dot).detach()


def mpl_teacher_update(teacher_opt: TeacherOptimiser, base_loss: torch.Tensor, t_logits: torch.Tensor,
                       pseudo: torch.Tensor, student: nn.Module, x_l: torch.Tensor, y_l: torch.Tensor,
                       grads_u: list[torch.Tensor], lr: float, autocast: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """The teacher's MPL step, once the student has stepped: base_loss + (h - b) * CE(t_logits, pseudo),
    b the moving average of h (`TeacherOptimiser.mpl_reward`), `t_logits` being the teacher
    prediction that produced the pseudo-labels the student was taught. Returns the figures to log."""
    h = mpl_feedback(student, x_l, y_l, grads_u, lr, autocast)
    feedback = teacher_opt.mpl_reward(h) * F.cross_entropy(t_logits.float(), pseudo)
    teacher_opt.step(base_loss + feedback)
    return {"train/mpl_feedback": h, "train/mpl_baseline": teacher_opt.mpl_baseline, "loss/teacher_mpl": feedback.detach()}
