"""`weights.kind=influence`: per-example weights from head-restricted influence on a validation loss.

KD-AIF's weighting (Wu, Luo, Liu, Deng, Statistics 59(2), 2025) as a module: the algorithm hands
over each batch's weighted terms (`WeightRequest`) and multiplies them by what `apply` returns; this
module owns the solve (ssl_kd.influence.InfluenceWeighter), its schedule, the reference set, the
map from score to weight, the state in the checkpoint, the logs (`weight/*`, `influence/*`) and the
diagnostics (`probe/*`, `noise_auc`).

How an example is scored (each choice measured in BENCHMARKS.md, "KD-AIF's signal"):
- `score_view=clean`: the example's clean image through the student in eval mode, the same view and
  BatchNorm mode as the reference, against the target the loss uses;
- `relative`: the score over the example's gradient norm (`cosine`) or RelatIF's sqrt(g^T H^-1 g);
- the reference loss is the labelled cross-entropy at `reference_tau` (4): a memorised labelled
  set still says which class its neighbours should get;
- each solve sets its own scale, and with `accumulate` an example's weight comes from its running
  mean score over its visits, restarted when its target changes.
Maps: `sigmoid` (soft, renormalised to mean 1 unless `renormalise=false`), `exp_minmax` (the paper's
example code), and two that drop examples (weights 0 or 1): `quantile` (drop the least helpful share
`drop` of each batch, or of each target class with `per_class`) and `labelled_threshold` (admit an
example whose score is at most the (1 - drop) quantile of the labelled reference's own scores).
The weight meets the algorithm's mask m by `combine`: `multiply` (w m) or `gate` (m where m > 0, else
min(w, 1): influence admits the pseudo-labels the mask drops).
"""
from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_kd.augment.views import VIEW_NAMES, make_view
from ssl_kd.distill import weight_logs
from ssl_kd.errors import ConfigError
from ssl_kd.influence import InfluenceConfig, InfluenceWeighter, flip_detection_auc
from ssl_kd.influence.diagnostics import weight_diagnostics
from ssl_kd.trainer.distributed import gather_cat, local_part, sharded
from ssl_kd.trainer.evaluate import predict
from ssl_kd.weighting.config import HARD_MAPS, WeightsConfig
from ssl_kd.weighting.spec import WeightRequest, WeightSpec


def influence_config(
    cfg: WeightsConfig, weight_decay: float, warmup_steps: int = 0, tau: float = 1.0, tau_squared: bool = True,
    **extra: Any,
) -> InfluenceConfig:
    """The estimator and map of the `weights` section as an InfluenceConfig: the one translation
    of weights.* keys, used by training and by tools/explain.py (`run_influence_config`)."""
    if cfg.reference_view not in VIEW_NAMES:
        raise ConfigError(f"weights.reference_view={cfg.reference_view!r}: use one of {', '.join(VIEW_NAMES)}")
    return InfluenceConfig(
        schedule=cfg.schedule, refresh_every=cfg.refresh_every, warmup_steps=warmup_steps, weight_map=cfg.map,
        temperature=cfg.temperature, renormalise=cfg.renormalise and cfg.combine == "multiply" and cfg.map not in HARD_MAPS,
        max_weight=cfg.max_weight, ema=cfg.ema, reference_tau=cfg.reference_tau, relative=cfg.relative,
        accumulate=cfg.accumulate, accumulate_prior=cfg.accumulate_prior, damping_fraction=cfg.damping_fraction,
        weight_decay=weight_decay, tau=tau, tau_squared=tau_squared, drop=cfg.drop, per_class=cfg.per_class, **extra,
    )


def run_influence_config(cfg: Any) -> InfluenceConfig:
    """The influence settings to explain a run (a Config) with: those its weights trained with
    (weights.kind=influence, kdaif's default), else the defaults; with the run's weight decay
    either way (the head's L2 penalty is part of the curvature it trained with). The loss scored
    stays cross-entropy at temperature 1: explanations score hard labels and pseudo-labels."""
    weight_decay = float(getattr(cfg.train, "weight_decay", 0.0))
    weights = getattr(cfg, "weights", None)
    if weights is None or not weights.active:
        return InfluenceConfig(weight_decay=weight_decay)
    return influence_config(weights, weight_decay)


class InfluenceWeights:
    active = True

    def __init__(self, cfg: WeightsConfig, algorithm: Any) -> None:
        self.cfg = cfg
        self.algorithm = algorithm
        self.ctx = algorithm.ctx
        self.spec: WeightSpec = algorithm.weight_spec()
        icfg = self.influence_config()
        if cfg.schedule == "static" and icfg.warmup_steps == 0:
            raise ConfigError("weights.schedule=static computes the weights once from the student at the end of the "
                              "warm-up; set weights.warmup > 0 (a random student's influence is noise)")
        self.weighter = self.spec.make_weighter(icfg) if self.spec.make_weighter else InfluenceWeighter(icfg)
        self.reference_idx, reference = self.pick_reference()
        self.fold_of = self.crossfit_folds() if cfg.reference == "crossfit" else None
        self._last: tuple[Tensor, Tensor, Tensor] | None = None  # (weights, applied multiplier, idx) of the last batch
        self._mapped: Tensor | None = None  # the last batch's weights before renormalisation
        print(f"weights: influence ({cfg.schedule}, {cfg.map}, combine={cfg.combine}) on the {self.spec.pool} terms "
              f"from step {icfg.warmup_steps}; reference: {reference} ({self.reference_idx.numel()} examples)", file=sys.stderr)

    @property
    def student(self) -> torch.nn.Module:
        return self.spec.student

    @property
    def step(self) -> int:
        return self.algorithm.step

    @property
    def weights_labelled(self) -> bool:
        return self.spec.pool == "labelled"

    # ----- set-up ---------------------------------------------------------------------------------
    def influence_config(self) -> InfluenceConfig:
        return influence_config(self.cfg, self.ctx.train_cfg.weight_decay, round(self.cfg.warmup * self.ctx.total_steps),
                                self.spec.tau, self.spec.tau_squared,
                                # per-index tables of the dataset's size; fit_static scores the whole pool every batch is drawn from
                                index_size=self.ctx.data.train_y.numel(), check_lookups=False)

    def pick_reference(self) -> tuple[Tensor, str]:
        data, ref = self.ctx.data, self.cfg.reference
        if ref == "auto":
            ref = "val" if self.weights_labelled and data.val_idx.numel() > 0 else "labelled"
        if ref == "val" and data.val_idx.numel() == 0:
            raise ConfigError("weights.reference=val needs a validation split: add --set data.val_per_class=N")
        if ref == "crossfit":
            if self.weights_labelled or self.cfg.schedule != "periodic":
                raise ConfigError("weights.reference=crossfit rotates folds of the labelled set with the periodic refresh: "
                                  "it needs weighted unlabelled terms (SSL) and weights.schedule=periodic")
            if not type(self.algorithm).crossfit_ready:
                raise ConfigError(f"weights.reference=crossfit leaves a fold out of the supervised loss, which "
                                  f"{self.ctx.train_cfg.algo!r} does not route through the weights; use kd or kdaif")
            if not 2 <= self.cfg.folds <= data.labelled_idx.numel():
                raise ConfigError(f"weights.folds={self.cfg.folds}: give 2 to {data.labelled_idx.numel()} (the labelled set's size)")
            return data.labelled_idx, f"cross-fitted labelled set, {self.cfg.folds} folds"
        return (data.val_idx, "validation split") if ref == "val" else (data.labelled_idx, "labelled set")

    # ----- the cross-fitted reference -------------------------------------------------------------
    def crossfit_folds(self) -> Tensor:
        """Fold of each dataset index (-1: not labelled): class-balanced, seeded by the run's seed."""
        d = self.ctx.data
        labelled = d.labelled_idx
        gen = torch.Generator().manual_seed(self.ctx.train_cfg.seed + 7919)
        order = torch.randperm(labelled.numel(), generator=gen)
        order = order[torch.sort(d.train_y[labelled].cpu()[order], stable=True).indices]  # classes in turn
        fold_of = torch.full((d.train_y.numel(),), -1, dtype=torch.long)
        fold_of[labelled.cpu()[order]] = torch.arange(labelled.numel()) % self.cfg.folds
        return fold_of.to(labelled.device)

    def period(self, step: int) -> int:
        """Refresh period of `step`: 0 from the first solve (the end of the warm-up), -1 the period before."""
        return (step - self.weighter.cfg.warmup_steps) // self.cfg.refresh_every

    def held_out_fold(self, step: int) -> int | None:
        """The fold left out of the student's losses at `step`: the one the next solve uses as its
        reference, so that it has not been trained on for a whole period when it is."""
        period = self.period(step)
        return None if period < -1 else (period + 1) % self.cfg.folds

    def held_out(self, idx: Tensor) -> Tensor | None:
        """1.0 where example `idx` is in this step's held-out fold (None without cross-fitting)."""
        held = self.held_out_fold(self.step) if self.fold_of is not None else None
        return None if held is None else (self.fold_of[idx] == held).float()  # type: ignore[index]

    def labelled_keep(self, idx: Tensor) -> Tensor | None:
        held = self.held_out(idx)
        return None if held is None else 1.0 - held

    # ----- influence ------------------------------------------------------------------------------
    def features(self, net: torch.nn.Module, idx: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, features) of `net` in eval mode on the clean images at `idx` (torchrun: each
        rank computes its part and every rank gets all, so ranks agree whatever their BatchNorm statistics)."""
        d = self.ctx.data
        return sharded(lambda part: predict(net, d.train_x, d.policy, self.ctx.train_cfg.eval_batch_size,
                                            self.ctx.autocast, rows=idx[part]), idx.numel())

    def reference_batch(self) -> tuple[Tensor, Tensor]:
        """Student features (eval mode) and labels of the reference set in `reference_view`, or of
        a random subset of it (cross-fitted: the fold held out in the period that just ended).
        Subsets and augmentations come from an RNG seeded by the run's seed and the step, so
        influence leaves the training RNG stream untouched: runs with and without weights of one
        seed see the same batches."""
        d, idx = self.ctx.data, self.reference_idx
        if self.fold_of is not None:
            idx = idx[self.fold_of[idx] == self.period(self.step) % self.cfg.folds]
        device = idx.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.ctx.train_cfg.seed * 1_000_003 + self.step)
            if idx.numel() > self.cfg.reference_size:
                idx = idx[torch.randperm(idx.numel(), device=device)[: self.cfg.reference_size]]
            if self.cfg.reference_view == "none":
                return self.features(self.student, idx)[1], d.train_y[idx]
            x = make_view(self.cfg.reference_view, d.train_x[idx], d.policy)
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad(), self.ctx.autocast():
            feats = sharded(lambda part: torch.cat([self.student(chunk)[1].float()
                                                    for chunk in x[part].split(self.ctx.train_cfg.eval_batch_size)]), x.shape[0])
        self.student.train(was_training)
        return feats, d.train_y[idx]

    def pool(self) -> Tensor:
        d = self.ctx.data
        return d.labelled_idx if self.weights_labelled else d.unlabelled_idx

    def fit_static(self) -> None:
        """Keep every weighted example's logits and projection once, with the student at this step."""
        pool = self.pool()
        logits, feats = self.features(self.student, pool)
        ref_feats, ref_y = self.reference_batch()
        targets = self.spec.targets(self.spec.labeller(pool), pool)
        self.weighter.fit_static(self.student.head, ref_feats, ref_y, feats, targets, pool, self.step)

    def influence_weights(self, request: WeightRequest) -> Tensor:
        """Weights of the examples `request.idx`. With score_view=clean the scored features are the
        example's clean image through the student in eval mode, as for the reference; the loss's
        forward (`request.features`/`logits`) is scored only with score_view=strong."""
        w, idx, targets = self.weighter, request.idx, request.targets
        if w.in_warmup(self.step):
            self._mapped = torch.ones(idx.numel(), device=idx.device)
            return self._mapped
        # torchrun: every rank scores the global batch (computing its own part of the clean features)
        # and solves from it, so the solve, its scale and the per-example tables are the same on every
        # rank and as in one process; each rank keeps its part of the weights
        idx, targets = gather_cat(idx), gather_cat(targets)
        if self.cfg.score_view == "clean" and self.cfg.schedule != "static":  # the static table needs no features
            logits, feats = self.features(self.student, idx)
        else:
            logits, feats = gather_cat(request.logits.detach()), gather_cat(request.features.detach())
        if self.cfg.schedule == "static" and w.table is None:
            self.fit_static()
        elif w.needs_refresh(self.step):
            ref_feats, ref_y = self.reference_batch()
            w.refresh(self.student.head, ref_feats, ref_y, feats.detach(), self.step)
        weights = local_part(w.weights(feats, logits, targets, self.step, idx=idx))
        self._mapped = local_part(w.mapped)
        return weights

    def combine(self, w: Tensor, mask: Tensor) -> Tensor:
        """The multiplier of the weighted terms: the weight on what the mask admits (`multiply`), or
        the mask where it admits and the weight (at most 1) where it does not (`gate`)."""
        if self.cfg.combine == "gate":
            return torch.where(mask > 0, mask, w.clamp(max=1.0))
        return mask * w

    def apply(self, mask: Tensor, request: WeightRequest) -> Tensor:
        """The per-example multiplier of the algorithm's terms (detached): its mask until the
        warm-up ends, then the mask combined with the influence weights."""
        w = self.influence_weights(request)
        held = self.held_out(request.idx) if not self.weights_labelled else None
        if held is not None:  # a held-out reference fold is kept out of every loss of the student
            w = w * (1.0 - held)
        applied = mask if self.weighter.in_warmup(self.step) else self.combine(w, mask)
        self._last = (w, applied.detach(), request.idx)
        return applied.detach()

    def rewards(self, applied: Tensor) -> Tensor:
        """Each example's reward for a teacher that learns from the weights (`feedback`): its weight
        before renormalisation where the algorithm's mask admits it, else 0. Renormalised weights
        average exactly 1 over every batch, so a running baseline of them would say nothing."""
        assert self._mapped is not None, "rewards() follows apply() of the same batch"
        return torch.where(applied > 0, self._mapped, torch.zeros_like(self._mapped))

    # ----- logging --------------------------------------------------------------------------------
    def step_outputs(self, out: Any) -> Any:
        """The last applied weights' statistics in a step's output (`weight/*`, `influence/*`, a
        histogram); SSL: `out.weights` (what the loss applied), which the trainer compares with
        the truth it keeps for monitoring."""
        if self._last is None:
            return out
        w, applied, idx = self._last
        self._last = None
        out.logs.update(weight_logs(w, "weight"))
        out.logs.update(self.weighter.stats)
        out.histograms["weight/" + self.spec.pool] = w
        if not self.weights_labelled:
            out.weights = applied
        elif self.ctx.data.noisy_idx is not None:
            noisy = torch.isin(idx, self.ctx.data.noisy_idx)
            if noisy.any() and not noisy.all():
                out.logs.update({"weight/noisy_mean": w[noisy].mean(), "weight/clean_mean": w[~noisy].mean()})
        return out

    # ----- diagnostics ----------------------------------------------------------------------------
    def probe_idx(self) -> Tensor:
        pool = self.ctx.data.unlabelled_idx
        gen = torch.Generator().manual_seed(self.ctx.train_cfg.seed + 104729)
        keep = torch.randperm(pool.numel(), generator=gen)[: self.cfg.probe_size].to(pool.device)
        return pool[keep.sort().values]

    def probe_metrics(self) -> dict[str, Any]:
        """SSL: how well the weights track correct (and in-distribution) pseudo-labels on a fixed
        probe of unlabelled examples, against the labeller's confidence (weight_diagnostics). The
        probe's weights are the run's map and combination of the current state (the truth is read
        here for monitoring only)."""
        w, d = self.weighter, self.ctx.data
        if w.solution is None or w.reference is None:
            return {}
        idx = self.probe_idx()
        t_logits = self.spec.labeller(idx)
        confidence, pseudo = torch.softmax(t_logits, -1).max(-1)
        targets = self.spec.targets(t_logits, idx)
        logits, feats = self.features(self.student, idx)
        scores = w.batch_scores(feats, logits, targets, idx)
        weights = w.preview(scores, targets, idx)
        ood_idx = getattr(d, "ood_idx", None)
        ood = torch.isin(idx, ood_idx) if ood_idx is not None and ood_idx.numel() > 0 else None
        previous = None
        if w.previous is not None and self.cfg.schedule != "static" and self.cfg.relative != "relatif":  # relatif: one factor kept
            previous = w.scores(feats, logits, targets, solution=w.previous)
        agreement = torch.softmax(logits, -1).gather(1, pseudo[:, None])[:, 0]
        stats = weight_diagnostics(scores, weights, confidence, agreement, pseudo == d.true_labels(idx) if getattr(d, "pool_truth", True) else None,
                                   ood, previous)
        return {f"probe/{k}": v for k, v in stats.items()}

    def eval_metrics(self) -> dict[str, Any]:
        """SSL: the probe's weight diagnostics. Weighted labelled data with flipped labels: ROC-AUC
        of low weight at finding them, over the labelled set."""
        data, w = self.ctx.data, self.weighter
        if not self.weights_labelled:
            return self.probe_metrics()
        if data.noisy_idx is None or data.noisy_idx.numel() == 0 or w.solution is None:
            return {}
        idx = data.labelled_idx
        logits, feats = self.features(self.student, idx)
        targets = self.spec.targets(self.spec.labeller(idx), idx)
        scores = w.batch_scores(feats, logits, targets, idx)
        return {"noise_auc": flip_detection_auc(-scores, torch.isin(idx, data.noisy_idx))}  # the weight falls with the score

    def state_dict(self) -> dict[str, Any]:
        return {"weighter": self.weighter.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "weighter" not in state:
            raise ValueError(f"the run trained with influence weights but the checkpoint holds no weight state ({sorted(state)}); "
                             "resume with the weights the run was trained with")
        self.weighter.load_state_dict(state["weighter"])
