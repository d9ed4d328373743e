"""Influence over the last block and the head, from randomly projected gradients (TRAK / LoGra style).

Same sign convention as the package: I(z) = -g_ref^T R^T (G_k + lambda I)^-1 R grad l(z), I < 0 helps.

- theta: the parameters of the network's last block(s) plus its head (`select_parameters`);
  gradients and Jacobians by torch.func over `FlatNetwork` (full.py), BatchNorm in eval mode
  (running statistics) for the reference, the curvature examples and the scored examples alike.
- R (k x P): a fixed random projection regenerated from a seed (never stored), one block per
  parameter tensor with E[R^T R] = I, so projected inner products are unbiased; k is split equally
  among tensors (water-filling): those smaller than their share stay unprojected, the others get
  a dense Gaussian, large weight tensors a Kronecker-factored one R_out (x) R_in acting as
  R_out W R_in^T on the (out, in*kh*kw) matrix (LoGra), so memory is O(k_out out + k_in in), not
  O(k P). With k >= P, R = I and the estimator is exact.
- curvature: the Gauss-Newton matrix (for softmax cross-entropy also the Fisher) of the mean
  training loss in the projected space, G_k = mean_i (J_i R^T)^T A_i (J_i R^T), with J_i the
  per-example logit Jacobian (vmap over jacrev, C backward passes through the tail only) and A_i
  the loss Hessian in the logits; it does not depend on the targets. `curvature="fisher"` uses
  TRAK's empirical Fisher of the targets' gradients instead. lambda = damping_fraction x mean
  eigenvalue (tr G_k / P, unbiased for tr G / P) + weight decay, as in head.py and full.py.
- one dense float64 Cholesky solve per refresh, lifted back once: u = R^T s (P,).
- scores: I(z) = -r(z)^T (J(x) u), r = dl/dlogits: ONE forward-mode JVP of the batch along u,
  about the cost of one forward pass (measured) and no per-example gradient, any target (hard, soft, or a subclass's
  `logit_gradients` for another loss, as DistillWeighter does for the head).

Why projection and not EK-FAC over the same layers (kronfluence): EK-FAC needs per-layer hooks
for activations and output gradients (conv patches, BN layers handled separately), two factor
eigendecompositions per layer per refresh, and its block-diagonal curvature ignores the coupling
between the block and the head; projection reuses full.py's torch.func machinery unchanged,
keeps all cross-layer curvature inside the k-space, is exactly the restricted influence when
k >= P (tested against full.py) and costs O(N C k^2 + k^3) per refresh whatever the layer shapes;
its price is the per-example Jacobian (C backward passes per curvature example through the tail).
Measured (BENCHMARKS.md, influence section 5): much closer to full-network influence than the
head, but not a better detector of wrong pseudo-labels on digits_30.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import jacrev, jvp, vmap

from ssl_kd.errors import ConfigError
from ssl_kd.influence.errors import InfluenceError
from ssl_kd.influence.full import FlatNetwork, eval_mode, mean_loss_grad
from ssl_kd.influence.head import CROSS_ENTROPY, HeadLoss, logit_grads
from ssl_kd.influence.solve import default_damping

CURVATURES = ("ggn", "fisher")


@dataclass(frozen=True)
class ProjectedConfig:
    dim: int = 2048  # k, the projected dimension (>= the number of chosen parameters: exact)
    prefixes: tuple[str, ...] | None = None  # parameter-name prefixes ("backbone.12.", "head."); None: last blocks + head
    blocks: int = 1  # with prefixes=None: how many weight-carrying modules of model.backbone, from the end
    curvature: str = "ggn"  # ggn (Gauss-Newton = Fisher) | fisher (empirical Fisher of the targets, TRAK)
    damping: float | None = None  # None: damping_fraction * mean eigenvalue + weight_decay
    damping_fraction: float = 0.1
    weight_decay: float = 0.0
    tau: float = 1.0  # temperature of the scored loss (as InfluenceConfig.tau)
    tau_squared: bool = True
    seed: int = 0  # of the projection; part of the state, so resumed runs score identically
    dense_max_entries: int = 1 << 22  # larger projection blocks of weight tensors are Kronecker-factored
    jacobian_floats: int = 1 << 24  # examples per vmap chunk: this many floats of (chunk, C, P) Jacobians
    batch_size: int = 256  # examples per forward pass for the reference gradient and for scoring

    def __post_init__(self) -> None:
        if self.dim < 1 or self.blocks < 1 or self.batch_size < 1:
            raise ConfigError(f"projected influence dim={self.dim}, blocks={self.blocks}, batch_size={self.batch_size}: "
                              "each must be >= 1")
        if self.curvature not in CURVATURES:
            raise ConfigError(f"projected influence curvature={self.curvature!r}: choose one of {', '.join(CURVATURES)}")

    @property
    def loss(self) -> HeadLoss:
        return HeadLoss(self.tau, self.tau_squared)


def select_parameters(model: nn.Module, prefixes: Sequence[str] | None = None, blocks: int = 1) -> list[str]:
    """Names of the trainable parameters that start with one of `prefixes`; by default the head and
    the last `blocks` modules of `model.backbone` (an nn.Sequential) that contain a convolution or a
    linear layer, plus every parameterised module after them (e.g. a final BatchNorm): the last
    conv-BN stage of digits_net / cnn_small, the last BasicBlock and final BN of a Wide ResNet."""
    params = [n for n, p in model.named_parameters() if p.requires_grad]
    if prefixes is None:
        prefixes = _last_block_prefixes(model, blocks)
    names = [n for n in params if any(n.startswith(p) for p in prefixes)]
    if not names:
        raise InfluenceError(f"no trainable parameter starts with {list(prefixes)}; names look like {params[:4]}")
    return names


def _last_block_prefixes(model: nn.Module, blocks: int) -> list[str]:
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if not isinstance(backbone, nn.Sequential) or not isinstance(head, nn.Module):
        raise InfluenceError(f"{type(model).__name__} has no nn.Sequential `backbone` and `head`: give "
                             "ProjectedConfig.prefixes explicitly, e.g. ('layer4.', 'fc.')")
    prefixes, found = ["head."], 0
    for i in reversed(range(len(backbone))):
        module = backbone[i]
        if next(module.parameters(), None) is None:
            continue
        prefixes.append(f"backbone.{i}.")
        if any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules()):
            found += 1
            if found == blocks:
                break
    return prefixes


@dataclass(frozen=True)
class _Block:
    """How one parameter tensor (a slice of the flat vector) is projected."""

    kind: str  # identity | dense | kron
    start: int
    size: int
    rows: int  # kron: the tensor as a (rows, size // rows) matrix
    out_dim: int
    factors: tuple[int, int] = (0, 0)  # kron: (k_out, k_in)


class GradientProjection:
    """The fixed map R (k x P) of a flat gradient, block by block; `project` applies R to the last
    dimension, `lift` applies R^T. Matrices are regenerated from the seed on each device."""

    def __init__(self, shapes: Sequence[torch.Size], dim: int, seed: int, dense_max_entries: int = 1 << 22) -> None:
        sizes = [math.prod(s) for s in shapes]
        self.num_params = sum(sizes)
        self.seed = seed
        self.blocks = _plan(shapes, sizes, dim, dense_max_entries)
        self.dim = sum(b.out_dim for b in self.blocks)
        self._matrices: dict[tuple[torch.device, torch.dtype], list[tuple[Tensor, ...]]] = {}

    @property
    def exact(self) -> bool:
        return all(b.kind == "identity" for b in self.blocks)

    def matrices(self, device: torch.device, dtype: torch.dtype) -> list[tuple[Tensor, ...]]:
        key = (device, dtype)
        if key not in self._matrices:
            gen = torch.Generator().manual_seed(self.seed)
            mats: list[tuple[Tensor, ...]] = []
            for b in self.blocks:
                if b.kind == "dense":
                    mats.append((torch.randn(b.out_dim, b.size, generator=gen, dtype=torch.float64) / math.sqrt(b.out_dim),))
                elif b.kind == "kron":
                    (ko, ki), cols = b.factors, b.size // b.rows
                    mats.append((torch.randn(ko, b.rows, generator=gen, dtype=torch.float64) / math.sqrt(ko),
                                 torch.randn(ki, cols, generator=gen, dtype=torch.float64) / math.sqrt(ki)))
                else:
                    mats.append(())
            self._matrices[key] = [tuple(m.to(device, dtype) for m in ms) for ms in mats]
        return self._matrices[key]

    def project(self, g: Tensor) -> Tensor:
        """R g over the last dimension: (..., P) -> (..., k)."""
        if g.shape[-1] != self.num_params:
            raise InfluenceError(f"gradients have {g.shape[-1]} entries, the projection expects {self.num_params}")
        lead = g.shape[:-1]
        out = []
        for b, mats in zip(self.blocks, self.matrices(g.device, g.dtype)):
            part = g[..., b.start:b.start + b.size]
            if b.kind == "dense":
                part = part @ mats[0].T
            elif b.kind == "kron":
                part = (mats[0] @ part.reshape(*lead, b.rows, b.size // b.rows) @ mats[1].T).reshape(*lead, b.out_dim)
            out.append(part)
        return torch.cat(out, dim=-1)

    def lift(self, s: Tensor) -> Tensor:
        """R^T s for one vector: (k,) -> (P,)."""
        out, start = [], 0
        for b, mats in zip(self.blocks, self.matrices(s.device, s.dtype)):
            part = s[start:start + b.out_dim]
            start += b.out_dim
            if b.kind == "dense":
                part = mats[0].T @ part
            elif b.kind == "kron":
                part = (mats[0].T @ part.reshape(b.factors) @ mats[1]).reshape(-1)
            out.append(part)
        return torch.cat(out)


def _plan(shapes: Sequence[torch.Size], sizes: list[int], dim: int, dense_max_entries: int) -> list[_Block]:
    """Split dim among the tensors by water-filling (as LoGra gives every layer the same size):
    smallest first, a tensor no larger than an equal share of what is left stays unprojected, the
    others get that share each. So biases, BatchNorm and small heads are kept exactly and the head
    is not starved by a large convolution, as a proportional split would do."""
    if dim < len(sizes):
        raise ConfigError(f"projected influence dim={dim} is too small for {len(sizes)} parameter tensors; "
                          f"raise dim to at least {len(sizes)}")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    dims, left = [0] * len(sizes), dim
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for rank, i in enumerate(order):
        dims[i] = min(sizes[i], left // (len(sizes) - rank))
        left -= dims[i]
    blocks = []
    for st, n, shape, k in zip(starts, sizes, shapes, dims):
        rows = shape[0] if len(shape) >= 2 else 1
        if k == n:
            blocks.append(_Block("identity", st, n, 1, n))
        elif rows > 1 and k * n > dense_max_entries:
            cols = n // rows
            ko = min(rows, max(1, round(math.sqrt(k * rows / cols))))
            ki = min(cols, max(1, k // ko))
            blocks.append(_Block("kron", st, n, rows, ko * ki, (ko, ki)))
        else:
            blocks.append(_Block("dense", st, n, 1, k))
    return blocks


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class ProjectedInfluence:
    """Influence of examples on a reference loss, over the last block(s) and the head.

        est = ProjectedInfluence(model, ProjectedConfig(dim=2048))
        est.refresh(ref_x, ref_y, train_x, train_targets, step)   # images; runs its own forward passes
        scores = est.scores(x, targets)                           # (B,), I < 0 helps

    `targets`: hard labels (B,) or soft targets (B, C) of the scored loss (ProjectedConfig.tau).
    The model is used in eval mode (its mode is restored); the state (`state_dict`) is the lifted
    solution u, the damping and the step, enough to resume scoring exactly.
    """

    def __init__(self, model: nn.Module, cfg: ProjectedConfig | None = None) -> None:
        self.model = model
        self.cfg = cfg or ProjectedConfig()
        self.names = select_parameters(model, self.cfg.prefixes, self.cfg.blocks)
        params = dict(model.named_parameters())
        self.projection = GradientProjection([params[n].shape for n in self.names], self.cfg.dim, self.cfg.seed,
                                             self.cfg.dense_max_entries)
        self.direction: Tensor | None = None  # u = R^T (G_k + lambda I)^-1 R g_ref, (P,), float64
        self.damping = 0.0
        self.last_refresh = -1

    @property
    def num_params(self) -> int:
        return self.projection.num_params

    # ----- refresh ----------------------------------------------------------------------------------
    def refresh(self, ref_x: Tensor, ref_y: Tensor, train_x: Tensor, train_targets: Tensor, step: int) -> None:
        """Solve once: g_ref from the reference images and labels (mean cross-entropy), the curvature
        from the training images (their targets matter only for curvature='fisher')."""
        with eval_mode(self.model):
            net = FlatNetwork(self.model, self.names)
            g_ref = mean_loss_grad(net, ref_x, ref_y, CROSS_ENTROPY, self.cfg.batch_size)
            curv = self._new_curvature(g_ref)
            for jac, logits, targets in self._jacobians(net, train_x, train_targets):
                self._accumulate(curv, self.projection.project(jac), logits, targets)
        self._solve(self.projection.project(g_ref), curv, train_x.shape[0], step)

    def fit_gradients(self, ref_grad: Tensor, train_jacobians: Tensor, train_logits: Tensor, train_targets: Tensor,
                      step: int = 0) -> None:
        """`refresh` from precomputed tensors: ref_grad (P,), per-example logit Jacobians (N, C, P),
        logits (N, C) and targets of the curvature examples."""
        curv = self._new_curvature(ref_grad)
        self._accumulate(curv, self.projection.project(train_jacobians), train_logits, train_targets)
        self._solve(self.projection.project(ref_grad), curv, train_jacobians.shape[0], step)

    def _new_curvature(self, like: Tensor) -> Tensor:
        k = self.projection.dim
        return torch.zeros(k, k, dtype=torch.float64, device=like.device)

    def _jacobians(self, net: FlatNetwork, x: Tensor, targets: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(J, logits, targets) per chunk: J (chunk, C, P) by vmap over jacrev, logits (chunk, C)."""

        def one(theta: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
            z = net.logits(theta, xi[None])[0]
            return z, z

        per_chunk = vmap(jacrev(one, has_aux=True), in_dims=(None, 0))
        num_classes = None
        chunk = 1
        for sl in _chunks(x.shape[0], self.cfg.batch_size):
            if num_classes is None:  # size chunks from the first example's logits
                num_classes = net.logits(net.theta, x[:1]).shape[1]
                chunk = max(1, self.cfg.jacobian_floats // (num_classes * self.num_params))
            for sub in _chunks(sl.stop - sl.start, chunk):
                rows = slice(sl.start + sub.start, sl.start + sub.stop)
                jac, logits = per_chunk(net.theta, x[rows])
                yield jac.detach(), logits.detach(), targets[rows]

    def _accumulate(self, curv: Tensor, jp: Tensor, logits: Tensor, targets: Tensor) -> None:
        """Add sum_i (J_i R^T)^T A_i (J_i R^T) (ggn) or sum_i phi_i phi_i^T (fisher) of one chunk, each
        chunk's product in the Jacobians' dtype (float32 halves the cost), the sum in float64."""
        logits = logits.detach().to(jp.dtype)
        if self.cfg.curvature == "fisher":
            phi = torch.einsum("nc,nck->nk", self.logit_gradients(logits, targets).to(jp.dtype), jp)
            curv.add_((phi.T @ phi).to(curv.dtype))
            return
        # A_i = B_i B_i^T with B_i = diag(sqrt p) - p sqrt(p)^T, so the chunk adds V^T V for the rows
        # V_i = B_i^T J_i R^T = sqrt(p) (J_i R^T - p^T J_i R^T): positive semi-definite, no cancellation
        p = torch.softmax(logits / self.cfg.tau, dim=1)
        m = torch.einsum("nc,nck->nk", p, jp)
        v = (p.sqrt()[:, :, None] * (jp - m[:, None, :])).reshape(-1, jp.shape[-1])
        curv.add_((v.T @ v).to(curv.dtype), alpha=self.cfg.loss.hess_scale)

    def _solve(self, g_k: Tensor, curv: Tensor, num_examples: int, step: int) -> None:
        if num_examples == 0:
            raise InfluenceError("no training examples given: the curvature needs at least one")
        curv /= num_examples
        damping = self.cfg.damping
        if damping is None:
            damping = default_damping(float(curv.trace()) / self.num_params, self.cfg.damping_fraction,
                                      self.cfg.weight_decay)
        if not damping > 0:
            raise InfluenceError(f"damping={damping:g} must be > 0: set damping_fraction, weight_decay or damping")
        curv.diagonal().add_(damping)
        chol, info = torch.linalg.cholesky_ex(curv)
        if int(info) != 0:
            raise InfluenceError(f"the damped projected curvature (damping={damping:g}) is not numerically positive "
                                 "definite; raise damping_fraction or pass a larger damping")
        s = torch.cholesky_solve(g_k.to(torch.float64).reshape(-1, 1), chol)[:, 0]
        self.direction = self.projection.lift(s)
        self.damping = float(damping)
        self.last_refresh = step

    # ----- scoring ----------------------------------------------------------------------------------
    def scores(self, x: Tensor, targets: Tensor) -> Tensor:
        """I(z) for a batch of images and the targets of the scored loss, (B,): -r^T J u by one JVP."""
        u = self._require_direction()
        with eval_mode(self.model):
            net = FlatNetwork(self.model, self.names)
            u = u.to(net.theta)
            out = []
            for sl in _chunks(x.shape[0], self.cfg.batch_size):
                logits, ju = jvp(lambda th: net.logits(th, x[sl]), (net.theta,), (u,))
                out.append(-(self.logit_gradients(logits.detach(), targets[sl]) * ju.detach()).sum(1))
        return torch.cat(out)

    def scores_from_gradients(self, grads: Tensor) -> Tensor:
        """I(z) from precomputed per-example gradients of the chosen parameters (B, P)."""
        u = self._require_direction()
        return -(grads.to(u) @ u)

    def logit_gradients(self, logits: Tensor, targets: Tensor) -> Tensor:
        """dl/dlogits of the scored loss (a subclass with another loss overrides this)."""
        return logit_grads(logits, targets, self.cfg.loss)

    def _require_direction(self) -> Tensor:
        if self.direction is None:
            raise InfluenceError("projected influence scores requested before any refresh(); call refresh() first")
        return self.direction

    # ----- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        return {"direction": None if self.direction is None else self.direction.clone(), "damping": self.damping,
                "last_refresh": self.last_refresh, "names": list(self.names), "dim": self.projection.dim,
                "seed": self.cfg.seed}

    def load_state_dict(self, state: dict[str, object]) -> None:
        mine = {"names": list(self.names), "dim": self.projection.dim, "seed": self.cfg.seed}
        theirs = {key: state.get(key) for key in mine}
        if theirs != mine:
            raise InfluenceError(f"projected influence state was written for {theirs}, this estimator is {mine}: "
                                 "resume with the same network, prefixes, dim and seed")
        direction = state["direction"]
        self.direction = None if direction is None else direction.clone()  # type: ignore[attr-defined]
        self.damping = float(state["damping"])  # type: ignore[arg-type]
        self.last_refresh = int(state["last_refresh"])  # type: ignore[arg-type]
