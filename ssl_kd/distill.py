"""Distillation losses per example, and influence scoring of KD's combined loss.

Per-example losses (not means) so that KD-AIF can weight each example; `kd` uses them with
weight 1, which makes it KD-AIF with every weight forced to 1.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_kd.influence import InfluenceConfig, InfluenceWeighter
from ssl_kd.influence.head import CROSS_ENTROPY, logit_grads


def at_least_float32(x: Tensor) -> Tensor:
    """`x` in float32, or float64 if it already is: the losses below run in float32 in training
    (bf16 logits are promoted) and in float64 when the influence weighter differentiates them
    (a confident example's gradient loses its direction in float32)."""
    return x if x.dtype == torch.float64 else x.float()


def tempered_kl(student_logits: Tensor, teacher_probs: Tensor, tau: float) -> Tensor:
    """tau^2 * KL(q || softmax(s / tau)) per example (Hinton et al. 2015), q the teacher's tempered
    distribution. KL rather than cross-entropy so that a student matching its teacher scores 0;
    the gradient is the same."""
    log_p = F.log_softmax(student_logits.float() / tau, dim=-1)
    q = teacher_probs.float()
    return tau**2 * (q * (q.clamp_min(1e-12).log() - log_p)).sum(-1)


def kd_losses(student_logits: Tensor, teacher_probs: Tensor, labels: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """(tau^2 KL(p_T^tau || p_S^tau), CE(y)) per example: KD mode's loss is alpha * first + (1 - alpha) * second."""
    return tempered_kl(student_logits, teacher_probs, tau), F.cross_entropy(student_logits.float(), labels, reduction="none")


class DKDParts(NamedTuple):
    """Decoupled KD's per-example terms (Zhao et al. 2022), each already carrying tau^2."""

    tckd: Tensor  # target-class KD: KL between the binary (target, rest) distributions
    nckd: Tensor  # non-target-class KD: KL among the non-target classes, renormalised


def dkd_parts(student_logits: Tensor, teacher_probs: Tensor, labels: Tensor, tau: float) -> DKDParts:
    """TCKD and NCKD per example from the student's logits and the teacher's distribution at tau.

    The teacher's binary and non-target distributions come from its tempered probabilities
    (summing the non-target mass rather than taking 1 - p_target keeps a confident teacher's
    distributions exact); the student's from log-sum-exps of its tempered logits."""
    z = at_least_float32(student_logits) / tau
    target = F.one_hot(labels, z.shape[1]).bool()
    log_p = F.log_softmax(z, dim=-1)
    log_rest = torch.logsumexp(z.masked_fill(target, float("-inf")), dim=-1) - torch.logsumexp(z, dim=-1)
    log_b_s = torch.stack([log_p[target], log_rest], dim=-1)
    q = teacher_probs.to(z.dtype)
    q_rest = q.masked_fill(target, 0.0)
    b_t = torch.stack([q[target], q_rest.sum(-1)], dim=-1)
    tckd = (torch.xlogy(b_t, b_t) - b_t * log_b_s).sum(-1)
    q_nt = q_rest / q_rest.sum(-1, keepdim=True).clamp_min(1e-30)
    log_r = F.log_softmax(z.masked_fill(target, -1e4), dim=-1)  # the target's share underflows to 0
    nckd = (torch.xlogy(q_nt, q_nt) - q_nt * log_r).sum(-1)
    return DKDParts(tau**2 * tckd, tau**2 * nckd)


def pack_targets(teacher_probs: Tensor, labels: Tensor) -> Tensor:
    """KD mode's two targets in one (N, C + 1) tensor: the teacher's tempered distribution, then the
    label. One tensor, because the weighter passes `targets` through (and slices it) unchanged."""
    return torch.cat([teacher_probs.float(), labels.float()[:, None]], dim=1)


class PackedTargetWeighter(InfluenceWeighter):
    """A weighter whose targets come from `pack_targets` (teacher distribution, then the label)."""

    def target_keys(self, targets: Tensor) -> Tensor:
        """label * C + the teacher's top class: accumulation restarts when the teacher's top class
        for the example changes (its label is fixed). The argmax of the packed row would be the
        label's column for every label >= 1, so the restart would never fire."""
        probs, labels = targets[:, :-1], targets[:, -1].long()
        return labels * probs.shape[1] + probs.argmax(-1)


class DistillWeighter(PackedTargetWeighter):
    """Influence weights for KD mode's combined loss l = alpha tau^2 KL(q || p^tau) + (1 - alpha) CE(y).

    Influence is linear in the example's gradient, so the score is the alpha-mix of the scores of
    its two terms, each from the head's closed form; `targets` come from `pack_targets`. The
    curvature of a refresh is the distillation term's (InfluenceConfig.tau); the damping absorbs
    the difference to the exact mix.
    """

    def __init__(self, cfg: InfluenceConfig, alpha: float) -> None:
        super().__init__(cfg)
        self.alpha = alpha

    def logit_gradients(self, logits: Tensor, targets: Tensor) -> Tensor:
        probs, labels = targets[:, :-1], targets[:, -1].long()
        return self.alpha * logit_grads(logits, probs, self.cfg.loss) + (1 - self.alpha) * logit_grads(logits, labels, CROSS_ENTROPY)


class LossWeighter(PackedTargetWeighter):
    """Influence weights for any KD-mode loss that is a sum of per-example terms `loss_fn(logits,
    targets)` (targets from `pack_targets`): the per-example logit gradients are the autograd
    gradient of the sum w.r.t. the logits, since example i's term depends on row i only. Used for
    DKD, whose gradient has no short closed form; the curvature of a refresh is the tempered KL's
    (InfluenceConfig.tau), as for DistillWeighter."""

    def __init__(self, cfg: InfluenceConfig, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__(cfg)
        self.loss_fn = loss_fn

    def logit_gradients(self, logits: Tensor, targets: Tensor) -> Tensor:
        with torch.enable_grad():
            z = logits.detach().double().requires_grad_(True)  # float64: exact for confident examples too
            (grad,) = torch.autograd.grad(self.loss_fn(z, targets.double()).sum(), z)
        return grad.to(logits.dtype)


def weight_logs(w: Tensor, prefix: str) -> dict[str, Tensor]:
    """Mean, spread, range and the share below 0.5 of a batch of weights (for TensorBoard)."""
    w = w.detach().float()
    return {f"{prefix}/mean": w.mean(), f"{prefix}/std": w.std(correction=0), f"{prefix}/min": w.min(),
            f"{prefix}/max": w.max(), f"{prefix}/share_below_half": (w < 0.5).float().mean()}


def teacher_weight_logs(w: Tensor, teacher_pred: Tensor, labels: Tensor, prefix: str = "weight") -> dict[str, Tensor]:
    """KD mode: mean weight of the examples the teacher gets wrong vs right (its targets are
    harmful where it is wrong) and per class of the label (`<prefix>/class_<c>`, classes in the batch)."""
    w = w.detach().float()
    wrong = teacher_pred != labels
    logs: dict[str, Tensor] = {}
    if wrong.any():
        logs[f"{prefix}/teacher_wrong_mean"] = w[wrong].mean()
    if not wrong.all():
        logs[f"{prefix}/teacher_right_mean"] = w[~wrong].mean()
    classes, inverse = labels.unique(return_inverse=True)
    sums = torch.zeros(classes.numel(), device=w.device).index_add_(0, inverse, w)
    counts = torch.zeros(classes.numel(), device=w.device).index_add_(0, inverse, torch.ones_like(w))
    logs.update({f"{prefix}/class_{int(c)}": m for c, m in zip(classes, sums / counts)})
    return logs
