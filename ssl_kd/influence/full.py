"""Full-network influence over every (or a chosen subset of) parameter, for fidelity studies and
small models; never in the default training hot path.

Per-example gradients come from `torch.func` (`functional_call`, `vmap`, `grad`); the damped
inverse-Hessian-vector product from conjugate gradient or LiSSA over autograd curvature-vector
products, either the exact Hessian (`hessian`, as in Koh & Liang; indefinite away from a minimum)
or the Gauss-Newton matrix (`ggn`, positive semi-definite, equal to the Hessian for the head).

BatchNorm: the network runs in eval mode throughout (restored afterwards), so BatchNorm layers
use their running statistics and are a fixed per-example function. In train mode an example's
gradient would depend on the rest of its batch, and running statistics would be updated.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from ssl_kd.errors import ConfigError
from ssl_kd.influence.errors import InfluenceError
from ssl_kd.influence.head import CROSS_ENTROPY, HeadLoss
from ssl_kd.influence.solve import conjugate_gradient, default_damping


@dataclass(frozen=True)
class FullConfig:
    curvature: str = "ggn"  # ggn | hessian
    solver: str = "cg"  # cg | lissa
    damping: float | None = None  # None: damping_fraction * mean eigenvalue + weight_decay
    damping_fraction: float = 0.1
    weight_decay: float = 0.0
    batch_size: int = 256  # examples per forward pass
    cg_tol: float = 1e-6
    cg_max_iter: int = 300
    lissa_scale: float | None = None  # None: 1.1 x power-iteration estimate of the top eigenvalue + damping
    lissa_iterations: int = 2000
    lissa_tol: float = 1e-6  # stop when an update is this small relative to the iterate (full-data products)
    lissa_batch_size: int = 0  # 0: full-data products; else a random training minibatch per iteration
    trace_probes: int = 8  # Hutchinson probes for the mean eigenvalue
    seed: int = 0

    def __post_init__(self) -> None:
        if self.curvature not in ("ggn", "hessian"):
            raise ConfigError(f"curvature={self.curvature!r}: choose 'ggn' (Gauss-Newton) or 'hessian'")
        if self.solver not in ("cg", "lissa"):
            raise ConfigError(f"full-network solver={self.solver!r}: choose 'cg' or 'lissa'")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run with BatchNorm on running statistics and dropout off, then restore the mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def per_example_losses(logits: Tensor, targets: Tensor, loss: HeadLoss = CROSS_ENTROPY) -> Tensor:
    """k * CE(softmax(z / tau), q) per example; hard labels (N,) or soft targets (N, C)."""
    logp = torch.log_softmax(logits / loss.tau, dim=1)
    k = loss.tau**2 if loss.tau_squared else 1.0
    if targets.is_floating_point():
        return -k * (targets * logp).sum(1)
    return -k * logp.gather(1, targets.long()[:, None])[:, 0]


class FlatNetwork:
    """A model as a function of one flat vector of the selected parameters (others held fixed)."""

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None) -> None:
        params = dict(model.named_parameters())
        names = list(names) if names is not None else [n for n, p in params.items() if p.requires_grad]
        unknown = [n for n in names if n not in params]
        if unknown or not names:
            raise InfluenceError(
                f"parameter names {unknown or names} not found in the model; choose from {', '.join(params)}"
            )
        self.model = model
        self.names = names
        self.shapes = [params[n].shape for n in names]
        self.fixed = {n: p.detach() for n, p in params.items() if n not in names}
        self.buffers = dict(model.named_buffers())
        self.theta = torch.cat([params[n].detach().reshape(-1) for n in names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        out, start = dict(self.fixed), 0
        for name, shape in zip(self.names, self.shapes):
            n = math.prod(shape)
            out[name] = flat[start:start + n].view(shape)
            start += n
        return out

    def logits(self, flat: Tensor, x: Tensor) -> Tensor:
        out = functional_call(self.model, (self.unflatten(flat), self.buffers), (x,))
        return out[0] if isinstance(out, tuple) else out

    def losses(self, flat: Tensor, x: Tensor, targets: Tensor, loss: HeadLoss = CROSS_ENTROPY) -> Tensor:
        return per_example_losses(self.logits(flat, x), targets, loss)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def per_example_grads(
    net: FlatNetwork, x: Tensor, targets: Tensor, loss: HeadLoss = CROSS_ENTROPY, batch_size: int = 256
) -> Tensor:
    """dl/dtheta per example, (N, P), with vmap over grad (call inside `eval_mode`)."""

    def one(theta: Tensor, xi: Tensor, ti: Tensor) -> Tensor:
        return net.losses(theta, xi[None], ti[None], loss)[0]

    per_batch = vmap(grad(one), in_dims=(None, 0, 0))
    return torch.cat([per_batch(net.theta, x[s], targets[s]) for s in _batches(x.shape[0], batch_size)])


def mean_loss_grad(
    net: FlatNetwork, x: Tensor, targets: Tensor, loss: HeadLoss = CROSS_ENTROPY, batch_size: int = 256
) -> Tensor:
    """Gradient of the mean loss over (x, targets), (P,)."""
    total = torch.zeros_like(net.theta)
    for s in _batches(x.shape[0], batch_size):
        total += grad(lambda th: net.losses(th, x[s], targets[s], loss).sum())(net.theta)
    return total / x.shape[0]


class NetworkCurvature:
    """Products with the Hessian or Gauss-Newton matrix of the mean training loss."""

    def __init__(
        self, net: FlatNetwork, x: Tensor, targets: Tensor, loss: HeadLoss, kind: str, batch_size: int
    ) -> None:
        self.net, self.x, self.targets, self.loss, self.kind, self.batch_size = net, x, targets, loss, kind, batch_size

    def _batch_product(self, v: Tensor, xb: Tensor, tb: Tensor) -> Tensor:
        theta = self.net.theta
        if self.kind == "hessian":
            return jvp(grad(lambda th: self.net.losses(th, xb, tb, self.loss).sum()), (theta,), (v,))[1]
        z, jv = jvp(lambda th: self.net.logits(th, xb), (theta,), (v,))
        p = torch.softmax(z / self.loss.tau, dim=1)
        pj = p * jv
        hjv = self.loss.hess_scale * (pj - p * pj.sum(1, keepdim=True))
        return vjp(lambda th: self.net.logits(th, xb), theta)[1](hjv)[0]

    def matvec(self, v: Tensor, rows: Tensor | None = None) -> Tensor:
        """Curvature times v, averaged over all training examples or over `rows` only."""
        x, t = (self.x, self.targets) if rows is None else (self.x[rows], self.targets[rows])
        total = torch.zeros_like(v)
        for s in _batches(x.shape[0], self.batch_size):
            total += self._batch_product(v, x[s], t[s])
        return total / x.shape[0]

    def mean_eigenvalue(self, probes: int, generator: torch.Generator) -> float:
        """Hutchinson estimate of tr(H) / P with Rademacher probes."""
        p = self.net.theta.numel()
        total = 0.0
        for _ in range(probes):
            z = torch.randint(0, 2, (p,), generator=generator).to(self.net.theta) * 2 - 1
            total += float(z @ self.matvec(z))
        return total / (probes * p)

    def top_eigenvalue(self, iterations: int, generator: torch.Generator) -> float:
        """Power iteration: the largest |eigenvalue|, to scale LiSSA."""
        v = torch.randn(self.net.theta.numel(), generator=generator).to(self.net.theta)
        v /= v.norm()
        estimate = 0.0
        for _ in range(iterations):
            hv = self.matvec(v)
            estimate = float(hv.norm())
            if estimate == 0:
                break
            v = hv / estimate
        return estimate


def lissa(
    matvec: Callable[[Tensor], Tensor], b: Tensor, damping: float, scale: float, iterations: int, tol: float,
    stochastic: bool,
) -> Tensor:
    """Solve (H + damping I) x = b by the LiSSA recursion x <- x + (b - (H + damping) x) / scale.

    It converges only if every eigenvalue of (H + damping) / scale lies in (0, 2); otherwise the
    iterate grows geometrically. With H positive semi-definite, every convergent iterate satisfies
    |x| <= 2 |b| / damping, so passing 4 |b| / damping (or a non-finite value) is reported as
    divergence instead of returning NaN.
    """
    bound = 4 * float(b.norm()) / damping
    x = torch.zeros_like(b)
    for it in range(1, iterations + 1):
        step = (b - matvec(x) - damping * x) / scale
        x = x + step
        x_norm = float(x.norm())
        if not math.isfinite(x_norm) or x_norm > bound:
            raise InfluenceError(
                f"LiSSA diverged at iteration {it}: |x| = {x_norm:.3g} exceeds {bound:.3g}, the bound on any "
                f"convergent iterate. Either scale={scale:.3g} is below half the largest eigenvalue of "
                "H + damping (set lissa_scale=None to estimate it by power iteration, or raise it), or the "
                "Hessian has negative eigenvalues larger than the damping (raise damping, or use "
                "curvature='ggn'). Conjugate gradient (solver='cg') avoids choosing a scale."
            )
        if not stochastic and float(step.norm()) <= tol * x_norm:
            break
    return x


def full_influence(
    model: nn.Module,
    train_x: Tensor,
    train_targets: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    cfg: FullConfig = FullConfig(),
    loss: HeadLoss = CROSS_ENTROPY,
    names: Sequence[str] | None = None,
) -> Tensor:
    """I(z) = -g_val^T (H + lambda I)^-1 grad l(z) for every training example, (N_train,).

    `g_val` is the gradient of the mean cross-entropy on (val_x, val_y); H is the curvature of the
    mean `loss` over the training examples; `names` restricts the parameters (default: all trainable).
    """
    with eval_mode(model):
        net = FlatNetwork(model, names)
        g_val = mean_loss_grad(net, val_x, val_y, CROSS_ENTROPY, cfg.batch_size)
        curv = NetworkCurvature(net, train_x, train_targets, loss, cfg.curvature, cfg.batch_size)
        gen = torch.Generator().manual_seed(cfg.seed)
        damping = cfg.damping
        if damping is None:
            damping = default_damping(curv.mean_eigenvalue(cfg.trace_probes, gen), cfg.damping_fraction, cfg.weight_decay)
        if not damping > 0:
            raise InfluenceError(f"damping={damping:g} must be > 0; set damping_fraction, weight_decay or damping")
        if cfg.solver == "cg":
            s = conjugate_gradient(lambda v: curv.matvec(v) + damping * v, g_val, cfg.cg_tol, cfg.cg_max_iter).x
        else:
            s = _run_lissa(curv, g_val, damping, cfg, gen)
        scores = []
        for sl in _batches(train_x.shape[0], cfg.batch_size):
            directional = jvp(lambda th: net.losses(th, train_x[sl], train_targets[sl], loss), (net.theta,), (s,))[1]
            scores.append(-directional)
        return torch.cat(scores)


def _run_lissa(curv: NetworkCurvature, g: Tensor, damping: float, cfg: FullConfig, gen: torch.Generator) -> Tensor:
    scale = cfg.lissa_scale
    if scale is None:
        scale = 1.1 * (curv.top_eigenvalue(30, gen) + damping)
    n = curv.x.shape[0]
    if cfg.lissa_batch_size > 0:
        def matvec(v: Tensor) -> Tensor:
            return curv.matvec(v, torch.randint(0, n, (cfg.lissa_batch_size,), generator=gen))
    else:
        matvec = curv.matvec
    return lissa(matvec, g, damping, scale, cfg.lissa_iterations, cfg.lissa_tol, cfg.lissa_batch_size > 0)
