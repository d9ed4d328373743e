"""`InfluenceWeighter`: per-example loss weights from head-restricted influence, on a schedule.

One object holds everything a training run needs to resume exactly (the current and previous
solves, the reference scores behind the scale-free map, per-index accumulated scores, EMA and
static tables) and exposes it through `state_dict()` / `load_state_dict()`.

Three choices make the weights less noisy than one score per visit:
- each solve sets its own scale (the reference scores of the first batch scored after it), so a
  temperature means the same for a whole period however much the solves' magnitudes differ;
- with `accumulate`, an example's weight comes from the running mean of its normalised scores over
  its visits (TracIn-style averaging over checkpoints), shrunk towards 0 ("no evidence") by a
  prior pseudo-count, and restarted when its target changes (a new pseudo-label is a new claim);
- the static table keeps each example's projection and logits, not a weight, so the weight always
  scores the target the loss uses at that step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_kd.errors import ConfigError
from ssl_kd.influence.errors import InfluenceError
from ssl_kd.influence.head import HeadCurvature, HeadLoss, logit_grads, mean_grad, with_bias
from ssl_kd.influence.solve import (SOLVERS, SolveOptions, cholesky_solve, damped_cholesky, default_damping,
                                    inverse_norms, solve_head)
from ssl_kd.influence.weights import (WEIGHT_MAPS, finalise, map_scores, quantile_admission, robust_spread,
                                     threshold_admission)

SCHEDULES = ("static", "periodic", "online")
RELATIVE = ("none", "cosine", "relatif")


@dataclass
class InfluenceConfig:
    """How influence scores are computed, refreshed and turned into weights."""

    schedule: str = "periodic"  # static (one table from a trained model) | periodic | online (every step)
    refresh_every: int = 500  # periodic: steps between solves
    warmup_steps: int = 0  # weights are 1 before this step (the early model's influence is noise)
    weight_map: str = "sigmoid"  # sigmoid | exp_minmax | quantile | labelled_threshold (the last two: 0 or 1)
    temperature: float = 1.0  # sigmoid: T = temperature * robust std (1.4826 MAD) of the solve's reference scores
    renormalise: bool = True  # rescale to mean 1 over the batch
    min_weight: float = 0.0
    max_weight: float = 5.0
    ema: float = 0.0  # per-example smoothing of weights across refreshes (needs idx); 0 disables
    reference_tau: float = 1.0  # temperature of the validation loss: > 1 keeps a memorised reference's gradient alive
    # none | cosine (score / Euclidean norm of the example's head gradient) | relatif (score /
    # sqrt(g^T (H + lambda I)^-1 g), Barshan et al. 2020's l-relative influence; dense solver only);
    # a bool is read as cosine (True) / none (False), what `relative` meant before
    relative: str | bool = "none"
    accumulate: bool = False  # weight from the per-index running mean of normalised scores (needs idx)
    accumulate_prior: float = 1.0  # pseudo-count of a zero score in that mean (shrinks rarely seen examples)
    solver: str = "auto"  # auto | cholesky | cg | kfac | ekfac
    damping: float | None = None  # None: damping_fraction * mean Hessian eigenvalue + weight_decay
    damping_fraction: float = 0.1
    weight_decay: float = 0.0  # the head's L2 coefficient (its curvature adds to H)
    dense_max_params: int = 20_000  # auto: Cholesky up to this many head parameters, CG beyond
    cg_tol: float = 1e-6
    cg_max_iter: int = 500
    tau: float = 1.0  # temperature of the weighted training loss (1: plain cross-entropy)
    tau_squared: bool = True  # the weighted loss carries the tau^2 factor of distillation
    index_size: int = 0  # size of the per-index tables (the dataset's); 0: grown to the largest index seen, read back per call
    check_lookups: bool = True  # static: check that each looked-up index was scored (a host readback per call)
    drop: float = 0.2  # quantile: share of each batch dropped; labelled_threshold: share of the reference's own scores above the threshold
    per_class: bool = False  # quantile: the share is dropped within each target class

    def __post_init__(self) -> None:
        for key, value, choices in (
            ("schedule", self.schedule, SCHEDULES),
            ("weight_map", self.weight_map, WEIGHT_MAPS),
            ("solver", self.solver, SOLVERS),
        ):
            if value not in choices:
                raise ConfigError(f"influence {key}={value!r} is unknown; choose one of {', '.join(choices)}")
        if isinstance(self.relative, bool):
            self.relative = "cosine" if self.relative else "none"
        if self.relative not in RELATIVE:
            raise ConfigError(f"influence relative={self.relative!r} is unknown; choose one of {', '.join(RELATIVE)}")
        if self.relative == "relatif" and self.solver not in ("auto", "cholesky"):
            raise ConfigError(f"influence relative='relatif' needs the inverse Hessian the dense solve keeps, not "
                              f"solver={self.solver!r}: set solver=cholesky (or auto), or relative=cosine")
        if self.relative == "relatif" and self.schedule == "static":
            raise ConfigError("influence relative='relatif' needs each example's features at scoring time, which the "
                              "static table does not keep: use schedule=periodic or online, or relative=cosine")
        if self.refresh_every < 1:
            raise ConfigError(f"influence refresh_every={self.refresh_every}: must be >= 1")
        if self.accumulate_prior < 0:
            raise ConfigError(f"influence accumulate_prior={self.accumulate_prior}: must be >= 0")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"influence ema={self.ema}: give a decay in [0, 1) (0 disables smoothing)")
        if not self.temperature > 0:
            raise ConfigError(f"influence temperature={self.temperature}: must be > 0")
        if not 0 <= self.min_weight <= self.max_weight:
            raise ConfigError(f"influence weights clip to [{self.min_weight}, {self.max_weight}]: need 0 <= min <= max")

    @property
    def loss(self) -> HeadLoss:
        return HeadLoss(self.tau, self.tau_squared)

    @property
    def solve_options(self) -> SolveOptions:
        return SolveOptions(self.solver, self.dense_max_params, self.cg_tol, self.cg_max_iter)


def head_logits(head: nn.Linear, features: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    bias = None if head.bias is None else head.bias.detach().to(dtype)
    return F.linear(features.detach().to(dtype), head.weight.detach().to(dtype), bias)


def _extended(table: Tensor | None, size: int, fill: float | bool, device: torch.device) -> Tensor:
    """`table` grown to at least `size` entries, new ones set to `fill` (per-index tables grow with
    the largest index seen, so the weighter needs no dataset size up front)."""
    dtype = torch.bool if isinstance(fill, bool) else torch.float32
    table = table if table is not None else torch.empty(0, dtype=dtype, device=device)
    if table.numel() >= size:
        return table
    return torch.cat([table, torch.full((size - table.numel(),), fill, dtype=dtype, device=device)])


def _last_occurrence(idx: Tensor, size: int) -> Tensor:
    """For each position of `idx`, the position of its index's last occurrence in `idx` (indices < size)."""
    position = torch.arange(idx.numel(), device=idx.device)
    last = torch.full((size,), -1, dtype=torch.long, device=idx.device)
    return last.scatter_reduce_(0, idx, position, "amax")[idx]


STATE_KEYS = ("solution", "previous", "damping", "last_refresh", "reference", "smoothed", "seen", "acc_sum",
              "acc_count", "acc_key", "static_logits", "static_proj", "factor", "reference_own")
OPTIONAL_STATE_KEYS = ("factor", "reference_own")  # absent from checkpoints written before they existed


class InfluenceWeighter:
    """Stateful per-example weights; see the package docstring for the call pattern."""

    def __init__(self, cfg: InfluenceConfig | None = None) -> None:
        self.cfg = cfg or InfluenceConfig()
        self.solution: Tensor | None = None  # (H + lambda I)^-1 g_val, (C, D1), float32
        self.previous: Tensor | None = None  # the solve before it (stability diagnostics)
        self.damping = 0.0
        self.last_refresh = -1  # step of the last solve (-1: none yet)
        self.reference: Tensor | None = None  # scores of the first batch scored after the solve: the map's scale
        self.smoothed: Tensor | None = None  # per-index EMA of weights
        self.seen: Tensor | None = None
        self.acc_sum: Tensor | None = None  # per-index sum and count of normalised scores, and the target they scored
        self.acc_count: Tensor | None = None
        self.acc_key: Tensor | None = None
        self.static_logits: Tensor | None = None  # static: per-index logits and projections of the scored model
        self.static_proj: Tensor | None = None
        self.factor: Tensor | None = None  # relatif: Cholesky factor of H + lambda I (float64) for the denominators
        self.reference_own: Tensor | None = None  # the reference examples' own scores against their labels (labelled_threshold)
        self.stats: dict[str, Tensor] = {}  # detached scalars of the last weights() call, for logging
        self.mapped: Tensor | None = None  # the last weights() call's mapped weights before renormalisation

    @property
    def table(self) -> Tensor | None:
        """Static schedule: which indices fit_static() scored (non-NaN rows), else None."""
        return None if self.static_proj is None else self.static_proj[:, 0]

    def in_warmup(self, step: int) -> bool:
        return step < self.cfg.warmup_steps

    def needs_refresh(self, step: int) -> bool:
        """Whether the caller should call `refresh` before `weights` at this step."""
        if self.in_warmup(step) or self.cfg.schedule == "static":
            return False
        if self.cfg.schedule == "online" or self.solution is None:
            return True
        return step - self.last_refresh >= self.cfg.refresh_every

    @torch.no_grad()
    def refresh(self, head: nn.Linear, val_features: Tensor, val_labels: Tensor, train_features: Tensor, step: int) -> None:
        """Solve (H + lambda I) s = g_val in float64: g_val from the validation features and labels
        (mean cross-entropy), H from the training features under the weighted loss. The next batch
        scored sets the new solve's scale."""
        bias = head.bias is not None
        g_val = mean_grad(val_features.double(), head_logits(head, val_features), val_labels,
                          HeadLoss(self.cfg.reference_tau, False), bias)
        curv = HeadCurvature(train_features, head_logits(head, train_features), self.cfg.loss, bias)
        damping = self.cfg.damping
        if damping is None:
            damping = default_damping(curv.trace() / curv.num_params, self.cfg.damping_fraction, self.cfg.weight_decay)
        self.previous = self.solution
        if self.cfg.relative == "relatif":
            method = self.cfg.solve_options.resolve(curv.num_params)
            if method != "cholesky":
                raise InfluenceError(
                    f"influence relative='relatif' needs the dense solve, but the head has {curv.num_params} "
                    f"parameters > dense_max_params={self.cfg.dense_max_params}: raise dense_max_params (O(P^2) "
                    "memory) or use relative=cosine")
            self.factor = damped_cholesky(curv, damping)
            self.solution = cholesky_solve(self.factor, g_val).float()
        else:
            self.solution = solve_head(curv, g_val, damping, self.cfg.solve_options).float()
        self.damping = damping
        self.last_refresh = step
        self.reference = None
        if self.cfg.weight_map == "labelled_threshold":  # plain cross-entropy on their labels, whatever the weighted loss
            ref_logits = head_logits(head, val_features, torch.float32)
            self.reference_own = self._scored(logit_grads(ref_logits, val_labels, self.cfg.loss),
                                              self.projection(val_features, for_scores=True), val_features)

    @torch.no_grad()
    def scores(self, features: Tensor, logits: Tensor, targets: Tensor, solution: Tensor | None = None) -> Tensor:
        """I(z) per example from the last solve (or `solution`): one (B, D) x (D, C) matmul. I < 0: z helps.

        The plain score grows with how far the student is from the target, so its size mostly says
        "the student disagrees"; `relative` divides it by the size of the example's gradient so
        that it says whether the example pushes the head where the reference wants it:
        `cosine` by the Euclidean norm |grad l(z)| = |dl/dz| |[f; 1]| (the score is then
        |s| cos(s, grad l(z)), the gradient-cosine form), `relatif` by sqrt(grad^T (H + lambda I)^-1
        grad) (RelatIF's l-relative influence, which also discounts directions of low curvature)."""
        grads = self.logit_gradients(logits.detach().float(), targets)
        if self.cfg.relative == "relatif" and solution is not None:
            raise InfluenceError("relative='relatif' scores against the last refresh's factor: do not pass a solution")
        return self._scored(grads, self.projection(features, solution, True), features)

    def _scored(self, grads: Tensor, proj: Tensor, features: Tensor | None = None) -> Tensor:
        s = -(grads * proj).sum(1)
        if self.cfg.relative == "cosine":
            return s / grads.norm(dim=1).clamp_min(1e-12)  # the features' norm is in `proj` already
        if self.cfg.relative == "relatif":
            return s / self._relatif_norms(grads, features).clamp_min(1e-12)
        return s

    def _relatif_norms(self, grads: Tensor, features: Tensor | None) -> Tensor:
        """sqrt(g^T (H + lambda I)^-1 g) of each example's head gradient g = dl/dz (x) [f; 1]."""
        if self.factor is None or features is None:
            raise InfluenceError("relative='relatif' needs the Cholesky factor of a refresh() and the batch's features")
        factor = self.factor.to(grads.device)
        assert self.solution is not None
        x = with_bias(features.detach().to(factor.dtype), self.solution.shape[1] > features.shape[1])
        g = (grads.to(factor.dtype)[:, :, None] * x[:, None, :]).reshape(grads.shape[0], -1)
        return inverse_norms(factor, g).to(grads.dtype)

    def projection(self, features: Tensor, solution: Tensor | None = None, for_scores: bool = False) -> Tensor:
        """(H + lambda I)^-1 g_val applied to each example's [features; 1]: (B, C); for scores
        with `relative`, divided by |[features; 1]|."""
        s = self.solution if solution is None else solution
        if s is None:
            raise InfluenceError("influence scores requested before any refresh(); call refresh() first "
                                 "(needs_refresh(step) says when)")
        s = s.to(features.device)
        d = features.shape[1]
        if s.shape[1] not in (d, d + 1):
            raise InfluenceError(f"features have {d} dimensions but the solve was for a head of {s.shape[1]} columns; "
                                 "score with the features of the network whose head was refreshed")
        proj = features.detach().float() @ s[:, :d].T
        if s.shape[1] == d + 1:
            proj = proj + s[:, d]
        if for_scores and self.cfg.relative == "cosine":
            norm = (features.detach().float().pow(2).sum(1) + (s.shape[1] - d)).sqrt()
            proj = proj / norm.clamp_min(1e-12)[:, None]
        return proj

    def logit_gradients(self, logits: Tensor, targets: Tensor) -> Tensor:
        """d l / d logits per example for the weighted loss (subclasses with another loss override this)."""
        return logit_grads(logits, targets, self.cfg.loss)

    def target_keys(self, targets: Tensor) -> Tensor:
        """One integer per example naming its target, to restart accumulation when it changes."""
        return targets.long() if targets.dim() == 1 else targets.argmax(-1)

    @torch.no_grad()
    def weights(
        self, features: Tensor, logits: Tensor, targets: Tensor, step: int, idx: Tensor | None = None
    ) -> Tensor:
        """Detached weights (B,) for a batch: ones during warm-up, else mapped influence scores.

        `targets` are what the weighted loss uses: labels/hard pseudo-labels (B,) or soft targets
        (B, C). `idx` (dataset indices) is needed by the static schedule, accumulation and EMA.
        """
        n = features.shape[0]
        if self.in_warmup(step):
            return torch.ones(n, device=features.device)
        self._follow(features.device)
        s = self.batch_scores(features, logits, targets, idx)
        if self.reference is None:
            self.reference = s.detach().clone()
        spread = robust_spread(self.reference)
        z = s / spread
        keys = self.target_keys(targets)
        if self.cfg.accumulate:
            z = self._accumulate(idx, z, keys)
        w = self._map(z, keys, logits.shape[1])
        self.stats = {"influence/score_mean": z.mean(), "influence/score_std": z.std(correction=0),
                      "influence/scale": spread}
        if self.cfg.ema > 0:
            w = self._smooth(idx, w)
        self.mapped = w  # before renormalisation: an absolute level (a reward's), where the renormalised mean is always 1
        w = finalise(w, self.cfg.renormalise, self.cfg.min_weight, self.cfg.max_weight)
        self.stats.update({"influence/weight_min": w.min(), "influence/weight_max": w.max()})
        return w

    def _map(self, z: Tensor, keys: Tensor, num_classes: int) -> Tensor:
        """The weight map of normalised scores z (scores over this solve's reference spread)."""
        assert self.reference is not None
        spread = robust_spread(self.reference)
        if self.cfg.weight_map == "quantile":
            return quantile_admission(z, keys if self.cfg.per_class else None, self.cfg.drop, num_classes)
        if self.cfg.weight_map == "labelled_threshold":
            if self.reference_own is None:
                raise InfluenceError("labelled_threshold needs the reference's own scores: refresh() first")
            return threshold_admission(z, self.reference_own.to(z.device) / spread, self.cfg.drop)
        return map_scores(z, self.reference / spread, self.cfg.weight_map, self.cfg.temperature)

    @torch.no_grad()
    def preview(self, scores: Tensor, targets: Tensor, idx: Tensor) -> Tensor:
        """The weights (before renormalisation and EMA) that the current state gives `scores` of
        the examples `idx`, changing no state: running means are used where an example's
        target is the one they were accumulated for. For diagnostics."""
        if self.reference is None:
            raise InfluenceError("preview() needs a scored batch after the last refresh (the solve's scale)")
        z = scores / robust_spread(self.reference)
        if self.cfg.accumulate and self.acc_sum is not None and self.acc_sum.numel() > int(idx.max()):
            assert self.acc_count is not None and self.acc_key is not None
            known = (self.acc_key[idx] == self.target_keys(targets).float()) & (self.acc_count[idx] > 0)
            z = torch.where(known, self.acc_sum[idx] / (self.acc_count[idx] + self.cfg.accumulate_prior), z)
        return self._map(z, self.target_keys(targets), self.solution.shape[0] if self.solution is not None else 1)

    @torch.no_grad()
    def fit_static(
        self, head: nn.Linear, val_features: Tensor, val_labels: Tensor, train_features: Tensor, train_targets: Tensor,
        train_idx: Tensor, step: int = 0, batch_size: int = 4096,
    ) -> Tensor:
        """Score the whole training set once (the static schedule): keep each index's logits and
        projection, so that later weights score whatever target the loss then uses. The map's
        scale comes from the pool's scores against `train_targets`, which are returned."""
        self.refresh(head, val_features, val_labels, train_features, step)
        logits = head_logits(head, train_features, torch.float32)
        proj = torch.cat([self.projection(train_features[i:i + batch_size], for_scores=True)
                          for i in range(0, train_features.shape[0], batch_size)])
        size, c = int(train_idx.max()) + 1, logits.shape[1]
        self.static_logits = torch.full((size, c), float("nan"), device=logits.device)
        self.static_proj = torch.full((size, c), float("nan"), device=logits.device)
        self.static_logits[train_idx], self.static_proj[train_idx] = logits, proj
        scores = self.static_scores(train_idx, train_targets)
        self.reference = scores.clone()
        return scores

    def batch_scores(self, features: Tensor, logits: Tensor, targets: Tensor, idx: Tensor | None) -> Tensor:
        """Scores of a batch under the schedule: the static table's by index, else from `features`."""
        return self.static_scores(idx, targets) if self.cfg.schedule == "static" else self.scores(features, logits, targets)

    def static_scores(self, idx: Tensor | None, targets: Tensor) -> Tensor:
        table = self.table
        if table is None:
            raise InfluenceError("the static schedule needs fit_static() (scores for the whole training set) "
                                 "before weights()")
        if idx is None:
            raise InfluenceError("the static schedule looks weights up by dataset index: pass idx to weights()")
        if self.cfg.check_lookups and (int(idx.max()) >= table.numel() or bool(table[idx].isnan().any())):
            raise InfluenceError("weights() asked for dataset indices that fit_static() did not score; "
                                 "pass every index the run trains on to fit_static()")
        return self._scored(self.logit_gradients(self.static_logits[idx], targets), self.static_proj[idx])  # type: ignore[index]

    def _follow(self, device: torch.device) -> None:
        """Move the state to the features' device (a checkpoint may have been loaded on the CPU)."""
        for name in STATE_KEYS:
            t = getattr(self, name)
            if isinstance(t, Tensor) and t.device != device:
                setattr(self, name, t.to(device))

    def _accumulate(self, idx: Tensor | None, z: Tensor, keys: Tensor) -> Tensor:
        """Running mean of each index's normalised scores for its current target, shrunk to 0 by the prior.

        An index repeated within the batch counts once per occurrence, summed with index_add_ (an
        indexed assignment would keep one undefined winner on CUDA). Its target is the last
        occurrence's; an occurrence with another target is a superseded claim that adds nothing
        and is weighed on its own score as a first visit."""
        if idx is None:
            raise InfluenceError("accumulate keeps one running score per dataset index: pass idx to weights()")
        size = self.cfg.index_size or int(idx.max()) + 1  # a known size needs no host readback
        self.acc_sum = _extended(self.acc_sum, size, 0.0, z.device)
        self.acc_count = _extended(self.acc_count, size, 0.0, z.device)
        self.acc_key = _extended(self.acc_key, size, -1.0, z.device)
        key = keys.float()[_last_occurrence(idx, self.acc_key.numel())]
        counted = (keys.float() == key).float()
        # every occurrence of an index computes the same value, so these assignments are deterministic
        kept = self.acc_key[idx] == key
        self.acc_sum[idx] = torch.where(kept, self.acc_sum[idx], torch.zeros_like(z))
        self.acc_count[idx] = torch.where(kept, self.acc_count[idx], torch.zeros_like(z))
        self.acc_key[idx] = key
        self.acc_sum.index_add_(0, idx, z * counted)
        self.acc_count.index_add_(0, idx, counted)
        mean = self.acc_sum[idx] / (self.acc_count[idx] + self.cfg.accumulate_prior)
        return torch.where(counted > 0, mean, z / (1 + self.cfg.accumulate_prior))

    def _smooth(self, idx: Tensor | None, w: Tensor) -> Tensor:
        if idx is None:
            raise InfluenceError("ema smoothing keeps one weight per dataset index: pass idx to weights(), or set ema=0")
        size = self.cfg.index_size or int(idx.max()) + 1  # a known size needs no host readback
        self.smoothed = _extended(self.smoothed, size, 0.0, w.device)
        self.seen = _extended(self.seen, size, False, w.device)
        seen = self.seen[idx]
        w = torch.where(seen, self.cfg.ema * self.smoothed[idx] + (1 - self.cfg.ema) * w, w)
        self.smoothed[idx] = w[_last_occurrence(idx, self.smoothed.numel())]  # duplicates: the last one's, on any device
        self.seen[idx] = True
        return w

    def state_dict(self) -> dict[str, object]:
        return {k: (v.clone() if isinstance(v, Tensor) else v) for k in STATE_KEYS for v in [getattr(self, k)]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        state = {**{k: None for k in OPTIONAL_STATE_KEYS}, **state}
        if set(state) != set(STATE_KEYS):
            raise InfluenceError(f"influence state has keys {sorted(state)}, expected {sorted(STATE_KEYS)}: "
                                 "the checkpoint was written by a different version of the weighter")
        for key in STATE_KEYS:
            value = state[key]
            setattr(self, key, value.clone() if isinstance(value, Tensor) else value)
        self.damping = float(self.damping)
        self.last_refresh = int(self.last_refresh)
