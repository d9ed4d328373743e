"""VAT, Virtual Adversarial Training (Miyato et al., TPAMI 2018): the prediction on an unlabelled
image must not change under the small perturbation r_adv (norm eps) that changes it most. r_adv is
found by one power iteration: the gradient, with respect to a random direction d of tiny norm xi,
of KL(p(x) || p(x + d)) points along the dominant eigenvector of that KL's curvature. Entropy
minimisation on the unlabelled predictions is added (VAT+EntMin, the paper's best form).

Defaults as USB's classic-CV configs: eps 6, xi 1e-6, 1 power iteration, lambda_u 0.3 ramped up
linearly over 40% of training, entropy weight 0.06. The power iteration runs on the plain network
with gradients taken with respect to d only (no parameter gradient, BatchNorm statistics left as
they were); the trained forward is one concatenated pass over the labelled images, the unlabelled
images and their perturbed copies. Images only (text would perturb embeddings, which the network
contract does not expose). There are no per-example weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.algorithm import Algorithm, Batch, StepOutput
from ssl_kd.components import forward_concat
from ssl_kd.distill import at_least_float32
from ssl_kd.errors import ConfigError
from ssl_kd.ramps import linear_rampup
from ssl_kd.registry import register_algorithm
from ssl_kd.teacher import plain_module, preserved_buffers


@dataclass
class VATConfig:
    eps: float = 6.0  # norm of the adversarial perturbation (per image)
    xi: float = 1e-6  # norm of the probe direction of the power iteration
    power_iterations: int = 1
    lambda_u: float = 0.3  # final weight of the VAT loss
    rampup_fraction: float = 0.4  # linear ramp-up of lambda_u over this fraction of train.steps
    lambda_ent: float = 0.06  # weight of entropy minimisation on the unlabelled predictions


def l2_normalise(d: torch.Tensor) -> torch.Tensor:
    """Each example's perturbation scaled to unit L2 norm."""
    return d / (d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1))) + 1e-16)


def kl_from_logits(q_logits: torch.Tensor, p_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(softmax(q) || softmax(p))."""
    q_log = F.log_softmax(at_least_float32(q_logits), dim=-1)
    return (q_log.exp() * (q_log - F.log_softmax(at_least_float32(p_logits), dim=-1))).sum(-1).mean()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the predictions' entropy."""
    log_p = F.log_softmax(at_least_float32(logits), dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


@register_algorithm("vat")
class VAT(Algorithm):
    Config = VATConfig
    labelled_views = ("weak",)
    unlabelled_views = ("weak",)
    modalities = ("image",)

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        if cfg.eps < 0 or cfg.xi <= 0 or cfg.power_iterations < 1:
            raise ConfigError(f"vat needs algo.eps >= 0, algo.xi > 0 and algo.power_iterations >= 1 "
                              f"(got {cfg.eps}, {cfg.xi}, {cfg.power_iterations}); USB uses 6, 1e-6 and 1")

    def adversarial_perturbation(self, net: nn.Module, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """eps * the direction found by power iteration from the start direction `d`."""
        with preserved_buffers(net):
            with torch.no_grad():
                q_logits, _ = net(x)
            for _ in range(self.cfg.power_iterations):
                d = (self.cfg.xi * l2_normalise(d)).requires_grad_(True)
                p_logits, _ = net(x + d)
                (d,) = torch.autograd.grad(kl_from_logits(q_logits, p_logits), [d])
        return self.cfg.eps * l2_normalise(d.detach())

    def train_step(self, batch: Batch) -> StepOutput:
        xu = batch.x_u["weak"]
        r_adv = self.adversarial_perturbation(plain_module(self.model), xu, torch.randn_like(xu))
        (lx, _), (lu, _), (lu_adv, _) = forward_concat(self.model, batch.x_l["weak"], xu, xu + r_adv)
        sup = self.supervised_loss(lx, batch.y_l)
        vat = kl_from_logits(lu.detach(), lu_adv)
        ent = entropy(lu)
        weight = self.cfg.lambda_u * linear_rampup(self.step, self.cfg.rampup_fraction * self.ctx.total_steps)
        return StepOutput(
            loss=sup + weight * vat + self.cfg.lambda_ent * ent,
            logs={"loss/sup": sup.detach(), "loss/unsup": vat.detach(), "loss/entropy": ent.detach(), "train/unsup_weight": weight},
            pseudo_labels=lu.detach().argmax(-1),
        )
