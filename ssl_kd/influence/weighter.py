"""`InfluenceWeighter`: per-example loss weights from head-restricted influence, on a schedule.

One object holds everything a training run needs to resume exactly (the current solve, the
recent scores behind the scale-free map, per-index EMA and static tables) and exposes it through
`state_dict()` / `load_state_dict()`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_kd.errors import ConfigError
from ssl_kd.influence.errors import InfluenceError
from ssl_kd.influence.head import CROSS_ENTROPY, HeadCurvature, HeadLoss, logit_grads, mean_grad
from ssl_kd.influence.solve import SOLVERS, SolveOptions, default_damping, solve_head
from ssl_kd.influence.weights import WEIGHT_MAPS, ScoreHistory, finalise, map_scores

SCHEDULES = ("static", "periodic", "online")


@dataclass
class InfluenceConfig:
    """How influence scores are computed, refreshed and turned into weights."""

    schedule: str = "periodic"  # static (one table from a trained model) | periodic | online (every step)
    refresh_every: int = 500  # periodic: steps between solves
    warmup_steps: int = 0  # weights are 1 before this step (the early model's influence is noise)
    weight_map: str = "sigmoid"  # sigmoid | exp_minmax
    temperature: float = 1.0  # sigmoid: T = temperature * robust std (1.4826 MAD) of recent scores
    history: int = 4096  # recent scores kept for the map's scale
    renormalise: bool = True  # rescale to mean 1 over the batch
    min_weight: float = 0.0
    max_weight: float = 5.0
    ema: float = 0.0  # per-example smoothing of weights across refreshes (needs idx); 0 disables
    solver: str = "auto"  # auto | cholesky | cg | kfac | ekfac
    damping: float | None = None  # None: damping_fraction * mean Hessian eigenvalue + weight_decay
    damping_fraction: float = 0.1
    weight_decay: float = 0.0  # the head's L2 coefficient (its curvature adds to H)
    dense_max_params: int = 20_000  # auto: Cholesky up to this many head parameters, CG beyond
    cg_tol: float = 1e-6
    cg_max_iter: int = 500
    tau: float = 1.0  # temperature of the weighted training loss (1: plain cross-entropy)
    tau_squared: bool = True  # the weighted loss carries the tau^2 factor of distillation

    def __post_init__(self) -> None:
        for key, value, choices in (
            ("schedule", self.schedule, SCHEDULES),
            ("weight_map", self.weight_map, WEIGHT_MAPS),
            ("solver", self.solver, SOLVERS),
        ):
            if value not in choices:
                raise ConfigError(f"influence {key}={value!r} is unknown; choose one of {', '.join(choices)}")
        if self.refresh_every < 1 or self.history < 1:
            raise ConfigError("influence refresh_every and history must be >= 1")
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


class InfluenceWeighter:
    """Stateful per-example weights; see the package docstring for the call pattern."""

    def __init__(self, cfg: InfluenceConfig | None = None) -> None:
        self.cfg = cfg or InfluenceConfig()
        self.solution: Tensor | None = None  # (H + lambda I)^-1 g_val, (C, D1), float32
        self.damping = 0.0
        self.last_refresh = -1  # step of the last solve (-1: none yet)
        self.history = ScoreHistory(self.cfg.history)
        self.smoothed: Tensor | None = None  # per-index EMA of weights
        self.seen: Tensor | None = None
        self.table: Tensor | None = None  # static: mapped weight per index, NaN where not computed
        self.stats: dict[str, Tensor] = {}  # detached scalars of the last weights() call, for logging

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
        (mean cross-entropy), H from the training features under the weighted loss."""
        bias = head.bias is not None
        g_val = mean_grad(val_features.double(), head_logits(head, val_features), val_labels, CROSS_ENTROPY, bias)
        curv = HeadCurvature(train_features, head_logits(head, train_features), self.cfg.loss, bias)
        damping = self.cfg.damping
        if damping is None:
            damping = default_damping(curv.trace() / curv.num_params, self.cfg.damping_fraction, self.cfg.weight_decay)
        self.solution = solve_head(curv, g_val, damping, self.cfg.solve_options).float()
        self.damping = damping
        self.last_refresh = step

    @torch.no_grad()
    def scores(self, features: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        """I(z) per example from the last solve: one (B, D) x (D, C) matmul. I < 0: z helps."""
        return -(self.logit_gradients(logits.detach().float(), targets) * self.projection(features)).sum(1)

    def projection(self, features: Tensor) -> Tensor:
        """(H + lambda I)^-1 g_val applied to each example's [features; 1]: (B, C)."""
        if self.solution is None:
            raise InfluenceError("influence scores requested before any refresh(); call refresh() first "
                                 "(needs_refresh(step) says when)")
        s = self.solution.to(features.device)
        d = features.shape[1]
        if s.shape[1] not in (d, d + 1):
            raise InfluenceError(f"features have {d} dimensions but the solve was for a head of {s.shape[1]} columns; "
                                 "score with the features of the network whose head was refreshed")
        proj = features.detach().float() @ s[:, :d].T
        if s.shape[1] == d + 1:
            proj = proj + s[:, d]
        return proj

    def logit_gradients(self, logits: Tensor, targets: Tensor) -> Tensor:
        """d l / d logits per example for the weighted loss (subclasses with another loss override this)."""
        return logit_grads(logits, targets, self.cfg.loss)

    @torch.no_grad()
    def weights(
        self, features: Tensor, logits: Tensor, targets: Tensor, step: int, idx: Tensor | None = None
    ) -> Tensor:
        """Detached weights (B,) for a batch: ones during warm-up, else mapped influence scores.

        `targets` are what the weighted loss uses: labels/hard pseudo-labels (B,) or soft targets
        (B, C). `idx` (dataset indices) is needed by the static schedule and by EMA smoothing.
        """
        n = features.shape[0]
        if self.in_warmup(step):
            return torch.ones(n, device=features.device)
        self._follow(features.device)
        self.stats = {}
        if self.cfg.schedule == "static":
            w = self._lookup(idx)
        else:
            s = self.scores(features, logits, targets)
            self.history.add(s)
            w = map_scores(s, self.history.values(), self.cfg.weight_map, self.cfg.temperature)
            self.stats = {"influence/score_mean": s.mean(), "influence/score_std": s.std(correction=0)}
            if self.cfg.ema > 0:
                w = self._smooth(idx, w)
        w = finalise(w, self.cfg.renormalise, self.cfg.min_weight, self.cfg.max_weight)
        self.stats.update({"influence/weight_min": w.min(), "influence/weight_max": w.max()})
        return w

    @torch.no_grad()
    def fit_static(
        self, head: nn.Linear, val_features: Tensor, val_labels: Tensor, train_features: Tensor, train_targets: Tensor,
        train_idx: Tensor, step: int = 0, batch_size: int = 4096,
    ) -> Tensor:
        """Score the whole training set once (the static schedule) and store a weight per index.
        Returns the scores; the map's scale comes from all of them."""
        self.refresh(head, val_features, val_labels, train_features, step)
        logits = head_logits(head, train_features, torch.float32)
        scores = torch.cat([
            self.scores(train_features[i:i + batch_size], logits[i:i + batch_size], train_targets[i:i + batch_size])
            for i in range(0, train_features.shape[0], batch_size)
        ])
        self.table = _extended(self.table, int(train_idx.max()) + 1, float("nan"), scores.device)
        self.table[train_idx] = map_scores(scores, scores, self.cfg.weight_map, self.cfg.temperature)
        return scores

    def _follow(self, device: torch.device) -> None:
        """Move the state to the features' device (a checkpoint may have been loaded on the CPU)."""
        for name in ("solution", "smoothed", "seen", "table"):
            t = getattr(self, name)
            if t is not None and t.device != device:
                setattr(self, name, t.to(device))
        buffer = self.history.buffer
        if buffer is not None and buffer.device != device:
            self.history.buffer = buffer.to(device)

    def _lookup(self, idx: Tensor | None) -> Tensor:
        if self.table is None:
            raise InfluenceError("the static schedule needs fit_static() (scores for the whole training set) "
                                 "before weights()")
        if idx is None:
            raise InfluenceError("the static schedule looks weights up by dataset index: pass idx to weights()")
        if int(idx.max()) >= self.table.numel() or bool(self.table[idx].isnan().any()):
            raise InfluenceError("weights() asked for dataset indices that fit_static() did not score; "
                                 "pass every index the run trains on to fit_static()")
        return self.table[idx]

    def _smooth(self, idx: Tensor | None, w: Tensor) -> Tensor:
        if idx is None:
            raise InfluenceError("ema smoothing keeps one weight per dataset index: pass idx to weights(), or set ema=0")
        size = int(idx.max()) + 1
        self.smoothed = _extended(self.smoothed, size, 0.0, w.device)
        self.seen = _extended(self.seen, size, False, w.device)
        seen = self.seen[idx]
        w = torch.where(seen, self.cfg.ema * self.smoothed[idx] + (1 - self.cfg.ema) * w, w)
        self.smoothed[idx] = w
        self.seen[idx] = True
        return w

    def state_dict(self) -> dict[str, object]:
        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.clone()

        return {
            "solution": copy(self.solution), "damping": self.damping, "last_refresh": self.last_refresh,
            "history": self.history.state_dict(), "smoothed": copy(self.smoothed), "seen": copy(self.seen),
            "table": copy(self.table),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        expected = {"solution", "damping", "last_refresh", "history", "smoothed", "seen", "table"}
        if set(state) != expected:
            raise InfluenceError(f"influence state has keys {sorted(state)}, expected {sorted(expected)}: "
                                 "the checkpoint was written by a different version of the weighter")
        self.solution, self.smoothed, self.seen, self.table = (state["solution"], state["smoothed"], state["seen"],  # type: ignore[assignment]
                                                                state["table"])
        self.damping = float(state["damping"])  # type: ignore[arg-type]
        self.last_refresh = int(state["last_refresh"])  # type: ignore[arg-type]
        self.history.load_state_dict(state["history"])  # type: ignore[arg-type]
