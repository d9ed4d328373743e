"""Closed forms for influence restricted to the classifier head (last linear layer).

The head's parameters theta = [W | b] are laid out as a (C, D1) matrix, D1 = D + 1 with a bias
(row c: class c's weights, then its bias), flattened row-major when a vector is needed.
For the loss `l = k * CE(softmax(z / tau), q)` of logits z = W f + b against a target
distribution q (one-hot label, hard pseudo-label or teacher's soft target), k = tau^2 or 1:

    dl/dz      = s (p - q),                 p = softmax(z / tau), s = k / tau
    d2l/dz2    = (s / tau) (diag(p) - p p^T)     (independent of q)
    dl/dtheta  = dl/dz (x) [f; 1]
    H          = mean_i d2l/dz2_i (x) [f_i; 1][f_i; 1]^T

The head is linear in theta, so H is the exact Hessian of the mean loss (and positive
semi-definite); everything reuses the features and logits a training step already computed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ssl_kd.errors import ConfigError
from ssl_kd.influence.errors import InfluenceError


@dataclass(frozen=True)
class HeadLoss:
    """Cross-entropy against a target distribution at temperature `tau`, optionally times tau^2
    (the factor distillation uses so that soft-target gradients keep their size as tau grows)."""

    tau: float = 1.0
    tau_squared: bool = True

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ConfigError(f"influence tau={self.tau}: the temperature must be > 0 (1 for plain cross-entropy)")

    @property
    def grad_scale(self) -> float:
        return self.tau if self.tau_squared else 1.0 / self.tau

    @property
    def hess_scale(self) -> float:
        return self.grad_scale / self.tau


CROSS_ENTROPY = HeadLoss()


def with_bias(features: Tensor, bias: bool) -> Tensor:
    """[f; 1] when the head has a bias, else f."""
    if not bias:
        return features
    return torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)


def target_distribution(targets: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Hard labels (N,) as one-hot rows, soft targets (N, C) unchanged."""
    if targets.dim() == 1 and not targets.is_floating_point():
        # scatter, not F.one_hot, which reads the largest label back to the host to check it
        return torch.zeros(targets.shape[0], num_classes, dtype=dtype, device=targets.device).scatter_(
            1, targets.long()[:, None], 1.0)
    if targets.dim() == 2 and targets.shape[1] == num_classes and targets.is_floating_point():
        return targets.to(dtype)
    raise InfluenceError(
        f"targets of shape {tuple(targets.shape)} and dtype {targets.dtype}: give integer labels (N,) "
        f"or a float distribution (N, {num_classes}) (e.g. softmax(teacher_logits / tau))"
    )


def logit_grads(logits: Tensor, targets: Tensor, loss: HeadLoss = CROSS_ENTROPY) -> Tensor:
    """dl/dz per example, (N, C)."""
    p = torch.softmax(logits / loss.tau, dim=1)
    return loss.grad_scale * prob_minus_target(p, target_distribution(targets, logits.shape[1], p.dtype))


def prob_minus_target(p: Tensor, q: Tensor) -> Tensor:
    """p - q, exact where p is near 1: there p_k - q_k cancels (in float32 p_k rounds to 1 above a
    logit margin of ~17, so a one-hot target's component becomes 0 and the direction is wrong).
    The largest component is taken as (1 - q_k) - (1 - p_k), 1 - p_k summed over the other (small)
    classes and 1 - q_k exact by Sterbenz's lemma wherever it matters (q_k >= 1/2)."""
    k = p.argmax(1, keepdim=True)
    rest_p = p.scatter(1, k, 0.0).sum(1, keepdim=True)
    return (p - q).scatter(1, k, (1 - q.gather(1, k)) - rest_p)


def per_example_grads(
    features: Tensor, logits: Tensor, targets: Tensor, loss: HeadLoss = CROSS_ENTROPY, bias: bool = True
) -> Tensor:
    """dl/dtheta per example, (N, C, D1): the outer product (p - q) (x) [f; 1]."""
    r = logit_grads(logits, targets, loss)
    return r[:, :, None] * with_bias(features.to(r.dtype), bias)[:, None, :]


def mean_grad(
    features: Tensor, logits: Tensor, targets: Tensor, loss: HeadLoss = CROSS_ENTROPY, bias: bool = True
) -> Tensor:
    """Gradient of the mean loss, (C, D1): one matmul instead of N outer products."""
    r = logit_grads(logits, targets, loss)
    return r.T @ with_bias(features.to(r.dtype), bias) / features.shape[0]


class HeadCurvature:
    """The head Hessian of the mean training loss, kept as its ingredients (probabilities and
    features) so products, the dense matrix and Kronecker factors all come from one place."""

    def __init__(
        self, features: Tensor, logits: Tensor, loss: HeadLoss = CROSS_ENTROPY, bias: bool = True,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if features.shape[0] == 0:
            raise InfluenceError("no training features given: the head Hessian needs at least one example")
        self.f = with_bias(features.detach().to(dtype), bias)
        self.p = torch.softmax(logits.detach().to(dtype) / loss.tau, dim=1)
        self.scale = loss.hess_scale

    @property
    def num_examples(self) -> int:
        return self.f.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.p.shape[1], self.f.shape[1]

    @property
    def num_params(self) -> int:
        return self.shape[0] * self.shape[1]

    def hvp(self, v: Tensor) -> Tensor:
        """H v for v of shape (C, D1), in O(N C D1) without forming H."""
        z = self.f @ v.T  # (N, C): v [f; 1] per example
        pz = self.p * z
        y = self.scale * (pz - self.p * pz.sum(1, keepdim=True))
        return y.T @ self.f / self.num_examples

    def trace(self) -> float:
        """tr(H) = s mean_i (1 - |p_i|^2) |[f_i; 1]|^2, for the mean-eigenvalue damping."""
        per_example = (1 - (self.p**2).sum(1)) * (self.f**2).sum(1)
        return float(self.scale * per_example.mean())

    def dense(self, chunk: int = 1024) -> Tensor:
        """The (P, P) matrix, P = C D1, row-major layout; O(N P^2) work, for small heads only."""
        c, d = self.shape
        h = torch.zeros(c * d, c * d, dtype=self.f.dtype, device=self.f.device)
        diag_blocks = torch.zeros(c, d, d, dtype=self.f.dtype, device=self.f.device)
        for start in range(0, self.num_examples, chunk):  # in chunks: the einsum forms an (N, C, D1) product
            p, f = self.p[start:start + chunk], self.f[start:start + chunk]
            diag_blocks += torch.einsum("nc,nj,nk->cjk", p, f, f)
            u = (p[:, :, None] * f[:, None, :]).reshape(-1, c * d)
            h -= u.T @ u
        for k in range(c):
            h[k * d:(k + 1) * d, k * d:(k + 1) * d] += diag_blocks[k]
        return h * (self.scale / self.num_examples)

    def kfac_factors(self) -> tuple[Tensor, Tensor]:
        """K-FAC: H ~ A (x) G with A = mean d2l/dz2 (C, C) and G = mean [f;1][f;1]^T (D1, D1)."""
        a = self.scale * (torch.diag(self.p.mean(0)) - self.p.T @ self.p / self.num_examples)
        g = self.f.T @ self.f / self.num_examples
        return a, g

    def eigenbasis_diagonal(self, qa: Tensor, qg: Tensor) -> Tensor:
        """EK-FAC: the exact diagonal of H in the Kronecker eigenbasis qa (x) qg, (C, D1).

        For A_i = s (diag(p_i) - p_i p_i^T), diag(qa^T A_i qa) = s (p_i qa^2 - (p_i qa)^2), so no
        sampling of labels is needed (George et al. 2018 estimate it from gradients instead).
        """
        d = self.scale * (self.p @ qa**2 - (self.p @ qa) ** 2)
        e = (self.f @ qg) ** 2
        return d.T @ e / self.num_examples
