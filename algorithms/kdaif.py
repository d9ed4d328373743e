"""KD-AIF, Knowledge Distillation with Adaptive Influence Weights (Wu, Luo, Liu, Deng, Statistics
59(2), 2025, arXiv 2501.02705): teacher-student distillation (kd.py, both modes and all teacher
updates) in which each example's loss is multiplied by a weight derived from its influence on the
student's validation loss, so that harmful pseudo-labels and distillation targets count less.

SSL mode weights each unlabelled example's pseudo-label loss (the labelled set is the validation
reference, so labelled examples keep weight 1); KD mode weights each labelled example's combined
loss alpha tau^2 KL + (1 - alpha) CE (reference: the held-out split `data.val_per_class` when
there is one). Influence is restricted to the student's classifier head and computed by
`ssl_kd.influence` (sign: I < 0 helps; the weight is a decreasing map of I, detached).

What follows the paper and its public example code: per-example weights from influence functions
on a validation loss; a sigmoid map of the influence to a weight (`weight_map=sigmoid`) or the
example code's exp(minmax) map (`exp_minmax`); the same weights multiply both the student's
distillation loss and, under `teacher_update=weighted_ce`, the teacher's fine-tuning loss; static
weights computed once (the example code's offline computation).

Our choices (the paper's text is not available to us): influence restricted to the head (closed
form, one small matmul a batch) instead of the full network (`ssl_kd.influence.projected` has a
multi-layer estimator for studies); the `periodic` and `online` schedules, the warm-up with weights
1 and the static table taken from the student at the end of warm-up; the reference set (the
labelled set in SSL mode, so the comparison with FixMatch uses no extra labels); the curvature of
a refresh taken from the scored batch; the confidence mask (`threshold`) and the confidence gate
(`gate`) that can be combined with the weights; the teacher's warm-up in SSL mode; the `ema`,
`mpl` and `feedback` teacher updates.

How an example is scored (issue 11; each choice measured in BENCHMARKS.md, "KD-AIF's signal"):
- what is scored is the example's clean image through the student in eval mode, the same view
  and BatchNorm mode as the reference (`score_view=clean`), against the target the loss uses
  (the teacher's pseudo-label from the weak view): the weight is about the example and its
  pseudo-label, not about one random strong view (`score_view=strong` scores the loss's forward);
- the score is divided by the example's gradient norm (`relative`): the plain score grows with
  how far the student is from the target, so its size mostly said "the student disagrees"
  (Spearman 0.84 with 1 - p(pseudo-label));
- the reference loss is the labelled cross-entropy at temperature `reference_tau` = 4: the student
  fits the labelled set within a few hundred steps, after which its plain gradient is a few
  residuals of memorised images; at temperature 4 every labelled image still says which class
  its neighbours should get. Together the two lift the correctness ROC-AUC from ~0.5 to ~0.84;
- each solve sets its own scale and an example's weight comes from its running mean score over
  its visits (`accumulate`), restarted when its pseudo-label changes;
- a cross-fitted reference (`reference=crossfit`: one fold of the labelled set out of the
  student's loss per period, rotating) and a held-out split (`reference=val`, extra labels) are
  options; neither beat the tempered labelled reference (measured);
- `gate` > 0: weight 1 at teacher confidence >= gate, the influence weight (<= 1) below, so
  influence decides about the pseudo-labels a confidence mask would drop.

Defaults were chosen on validation splits (`data.val_per_class`), never on the test split; the
estimator's settings on the correctness AUC of the training pool's pseudo-labels (a benchmark
quantity no user has), which was flat for reference_tau 2-8.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ssl_kd.algorithm import StepOutput
from ssl_kd.algorithms.kd import KD, KDConfig
from ssl_kd.augment.views import VIEW_NAMES, make_view
from ssl_kd.distill import DistillWeighter, pack_targets, teacher_weight_logs, weight_logs
from ssl_kd.errors import ConfigError
from ssl_kd.influence import InfluenceConfig, InfluenceWeighter, flip_detection_auc
from ssl_kd.influence.diagnostics import weight_diagnostics
from ssl_kd.registry import register_algorithm
from ssl_kd.trainer.distributed import gather_cat, local_part, sharded
from ssl_kd.trainer.evaluate import predict

REFERENCES = ("auto", "labelled", "val", "crossfit")
SCORE_VIEWS = ("clean", "strong")


@dataclass
class KDAIFConfig(KDConfig):
    schedule: str = "periodic"  # static (once, at the end of the weight warm-up) | periodic | online (every step)
    refresh_every: int = 50  # periodic: steps between influence solves
    weight_warmup: float = 0.2  # fraction of train.steps during which every weight is 1
    weight_map: str = "sigmoid"  # sigmoid | exp_minmax (the paper's example code)
    weight_temperature: float = 3.0  # sigmoid temperature, in units of the scores' median absolute deviation
    renormalise: bool = True  # rescale the weights to mean 1 over each batch
    max_weight: float = 5.0  # clip the weights to [0, max_weight]
    weight_ema: float = 0.0  # per-example smoothing of weights across visits (0: none)
    reference: str = "auto"  # labelled | val | crossfit | auto (val in KD mode when there is one, else labelled)
    folds: int = 3  # crossfit: folds of the labelled set; one is left out of the student's loss per period
    reference_size: int = 1024  # at most this many reference examples per solve (a fresh random subset each time)
    reference_view: str = "none"  # view of the reference images: none (clean) | weak | strong
    score_view: str = "clean"  # what is scored: clean (the example's clean image, eval mode, like the reference) | strong (the loss's own forward)
    damping_fraction: float = 0.1  # damping = this fraction of the head Hessian's mean eigenvalue + weight decay
    gate: float = 0.0  # SSL mode: weight 1 at teacher confidence >= gate, the influence weight (<= 1) below; 0: plain weights
    reference_tau: float = 4.0  # temperature of the reference loss (> 1: a memorised labelled set still has a gradient)
    relative: bool = True  # score / |example gradient|: whether it points where the reference wants, not how far off it is
    accumulate: bool = True  # weight from each example's running mean score over its visits (restarts on a new pseudo-label)
    accumulate_prior: float = 1.0  # pseudo-count of a zero score in that mean
    probe_size: int = 1024  # SSL mode: unlabelled examples scored at each evaluation for the weight diagnostics


@register_algorithm("kdaif")
class KDAIF(KD):
    Config = KDAIFConfig
    name = "kdaif"

    def __init__(self, model, cfg, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, ctx)
        icfg = self.influence_config()
        if cfg.schedule == "static" and icfg.warmup_steps == 0:
            raise ConfigError("schedule=static computes the weights once from the student at the end of the weight "
                              "warm-up; set algo.weight_warmup > 0 (a random student's influence is noise)")
        self.weighter = DistillWeighter(icfg, cfg.alpha) if self.mode == "kd" else InfluenceWeighter(icfg)
        self.reference_idx, reference = self.pick_reference()
        self.fold_of = self.crossfit_folds() if self.crossfit else None
        print(f"kdaif: influence weights ({cfg.schedule}, {cfg.weight_map}) from step {icfg.warmup_steps}; "
              f"reference: {reference} ({self.reference_idx.numel()} examples)", file=sys.stderr)

    def influence_config(self) -> InfluenceConfig:
        cfg = self.cfg
        tempered = self.mode == "kd" or cfg.target == "soft"
        if cfg.reference not in REFERENCES:
            raise ConfigError(f"algo.reference={cfg.reference!r}: use one of {', '.join(REFERENCES)}")
        if cfg.reference_view not in VIEW_NAMES:
            raise ConfigError(f"algo.reference_view={cfg.reference_view!r}: use one of {', '.join(VIEW_NAMES)}")
        if cfg.score_view not in SCORE_VIEWS:
            raise ConfigError(f"algo.score_view={cfg.score_view!r}: use one of {', '.join(SCORE_VIEWS)}")
        if not 0 <= cfg.gate < 1:
            raise ConfigError(f"algo.gate={cfg.gate}: give a teacher confidence in [0, 1) (0 turns gating off)")
        if cfg.gate > 0 and self.mode == "kd":
            raise ConfigError("algo.gate gates pseudo-labels by the teacher's confidence, so it needs SSL mode; set algo.gate=0")
        return InfluenceConfig(
            schedule=cfg.schedule, refresh_every=cfg.refresh_every,
            warmup_steps=round(cfg.weight_warmup * self.ctx.total_steps), weight_map=cfg.weight_map,
            temperature=cfg.weight_temperature, renormalise=cfg.renormalise and cfg.gate == 0,
            max_weight=cfg.max_weight, ema=cfg.weight_ema, reference_tau=cfg.reference_tau, relative=cfg.relative, accumulate=cfg.accumulate,
            accumulate_prior=cfg.accumulate_prior, damping_fraction=cfg.damping_fraction,
            weight_decay=self.ctx.train_cfg.weight_decay, tau=cfg.tau if tempered else 1.0, tau_squared=True,
            # per-index tables of the dataset's size; fit_static scores the whole pool every batch is drawn from
            index_size=self.ctx.data.train_y.numel(), check_lookups=False,
        )

    @property
    def crossfit(self) -> bool:
        return self.cfg.reference == "crossfit"

    def pick_reference(self) -> tuple[torch.Tensor, str]:
        data, ref = self.ctx.data, self.cfg.reference
        if ref == "auto":
            ref = "val" if self.mode == "kd" and data.val_idx.numel() > 0 else "labelled"
        if ref == "val" and data.val_idx.numel() == 0:
            raise ConfigError("algo.reference=val needs a validation split: add --set data.val_per_class=N")
        if ref == "crossfit":
            if self.mode != "ssl" or self.cfg.schedule != "periodic":
                raise ConfigError("algo.reference=crossfit rotates folds of the labelled set with the periodic refresh: "
                                  "it needs SSL mode and algo.schedule=periodic")
            if not 2 <= self.cfg.folds <= data.labelled_idx.numel():
                raise ConfigError(f"algo.folds={self.cfg.folds}: give 2 to {data.labelled_idx.numel()} (the labelled set's size)")
            return data.labelled_idx, f"cross-fitted labelled set, {self.cfg.folds} folds"
        return (data.val_idx, "validation split") if ref == "val" else (data.labelled_idx, "labelled set")

    # ----- the cross-fitted reference -------------------------------------------------------------
    def crossfit_folds(self) -> torch.Tensor:
        """Fold of each dataset index (-1: not labelled): class-balanced, seeded by the split seed."""
        d = self.ctx.data
        labelled = d.labelled_idx
        gen = torch.Generator().manual_seed(self.ctx.train_cfg.seed + 7919)
        order = torch.randperm(labelled.numel(), generator=gen)
        order = order[torch.sort(d.train_y[labelled].cpu()[order], stable=True).indices]  # classes in turn
        fold_of = torch.full((d.train_y.numel(),), -1, dtype=torch.long)
        fold_of[labelled.cpu()[order]] = torch.arange(labelled.numel()) % self.cfg.folds
        return fold_of.to(labelled.device)

    def period(self, step: int) -> int:
        """Refresh period of `step`: 0 from the first solve (the end of the weight warm-up), -1 the period before."""
        return (step - self.weighter.cfg.warmup_steps) // self.cfg.refresh_every

    def held_out_fold(self, step: int) -> int | None:
        """The fold left out of the student's labelled loss at `step`: the one the next solve uses as
        its reference, so that it has not been trained on for a whole period when it is."""
        period = self.period(step)
        return None if period < -1 else (period + 1) % self.cfg.folds

    def labelled_loss(self, logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        held = self.held_out_fold(self.step) if self.fold_of is not None else None
        if held is None:
            return super().labelled_loss(logits, labels, idx)
        keep = (self.fold_of[idx] != held).float()  # type: ignore[index]
        return (keep * F.cross_entropy(logits.float(), labels, reduction="none")).sum() / keep.sum().clamp(min=1)

    # ----- influence ------------------------------------------------------------------------------
    def features(self, net: torch.nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) of `net` in eval mode on the clean images at `idx` (torchrun: each
        rank computes its part and every rank gets all, so ranks agree whatever their BatchNorm statistics)."""
        d = self.ctx.data
        return sharded(lambda part: predict(net, d.train_x, d.policy, self.ctx.train_cfg.eval_batch_size,
                                            self.ctx.autocast, rows=idx[part]), idx.numel())

    def reference_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Student features (eval mode) and labels of the reference set in `reference_view`, or of
        a random subset of it (cross-fitted: the fold held out in the period that just ended).
        Subsets and augmentations come from an RNG seeded by the run's seed and the step, so
        influence leaves the training RNG stream untouched: kd and kdaif runs of one seed see the
        same batches."""
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
        self.student.eval()
        with torch.no_grad(), self.ctx.autocast():
            feats = sharded(lambda part: torch.cat([self.student(chunk)[1].float()
                                                    for chunk in x[part].split(self.ctx.train_cfg.eval_batch_size)]), x.shape[0])
        self.student.train()
        return feats, d.train_y[idx]

    def pool_targets(self, teacher_logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The targets the weighted loss uses, for the static fit's scale and the diagnostics."""
        if self.mode == "kd":
            return pack_targets(torch.softmax(teacher_logits / self.cfg.tau, -1), self.ctx.data.train_y[idx])
        if self.cfg.target == "hard":
            return teacher_logits.argmax(-1)
        return torch.softmax(teacher_logits / self.cfg.tau, -1)

    def fit_static(self) -> None:
        """Keep every weighted example's logits and projection once, with the student at this step."""
        pool = self.ctx.data.labelled_idx if self.mode == "kd" else self.ctx.data.unlabelled_idx
        logits, feats = self.features(self.student, pool)
        ref_feats, ref_y = self.reference_batch()
        targets = self.pool_targets(self.teacher_labelling_logits(pool), pool)
        self.weighter.fit_static(self.student.head, ref_feats, ref_y, feats, targets, pool, self.step)

    def influence_weights(self, feats: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                          idx: torch.Tensor) -> torch.Tensor:
        """Weights of the examples `idx`. With score_view=clean the scored features are the
        example's clean image through the student in eval mode, as for the reference: the weight
        is about the example and its target, not about one random strong view, and reference and
        scored examples then share BatchNorm's mode; `feats`/`logits` (the loss's forward) are
        used only with score_view=strong."""
        w = self.weighter
        if w.in_warmup(self.step):
            return torch.ones(idx.numel(), device=idx.device)
        # torchrun: every rank scores the global batch (computing its own part of the clean features)
        # and solves from it, so the solve, its scale and the per-example tables are the same on every
        # rank and as in one process; each rank keeps its part of the weights
        idx, targets = gather_cat(idx), gather_cat(targets)
        if self.cfg.score_view == "clean" and self.cfg.schedule != "static":  # the static table needs no features
            logits, feats = self.features(self.student, idx)
        else:
            logits, feats = gather_cat(logits.detach()), gather_cat(feats.detach())
        if self.cfg.schedule == "static" and w.table is None:
            self.fit_static()
        elif w.needs_refresh(self.step):
            ref_feats, ref_y = self.reference_batch()
            w.refresh(self.student.head, ref_feats, ref_y, feats.detach(), self.step)
        return local_part(w.weights(feats, logits, targets, self.step, idx=idx))

    def gated(self, w: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        """Gate mode: confident pseudo-labels keep weight 1; influence admits the others (weight <= 1)."""
        if self.cfg.gate == 0 or self.weighter.in_warmup(self.step):
            return w
        return torch.where(confidence >= self.cfg.gate, torch.ones_like(w), w.clamp(max=1.0))

    def unlabelled_weights(self, feats, logits, targets, idx, confidence):  # type: ignore[no-untyped-def]
        return self.gated(self.influence_weights(feats, logits, targets, idx), confidence)

    def labelled_weights(self, feats, logits, teacher_probs, labels, idx):  # type: ignore[no-untyped-def]
        return self.influence_weights(feats, logits, pack_targets(teacher_probs, labels), idx)

    # ----- diagnostics ----------------------------------------------------------------------------
    def teacher_labelling_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """The teacher's logits on the clean images at `idx` in the BatchNorm mode it labels in
        (batch statistics unless it is a frozen checkpoint), leaving its running statistics as
        they were."""
        buffers = [b.clone() for b in self.teacher.buffers()]
        self.teacher.train(not (self.cfg.teacher_ckpt and self.update == "frozen"))
        d, chunk = self.ctx.data, self.ctx.train_cfg.batch_size * max(1, self.ctx.train_cfg.uratio)
        with torch.no_grad(), self.ctx.autocast():
            logits = torch.cat([self.teacher(make_view("none", d.train_x[part], d.policy))[0].float()
                                for part in idx.split(chunk)])
        for b, saved in zip(self.teacher.buffers(), buffers):
            b.copy_(saved)
        return logits

    def probe_idx(self) -> torch.Tensor:
        pool = self.ctx.data.unlabelled_idx
        gen = torch.Generator().manual_seed(self.ctx.train_cfg.seed + 104729)
        keep = torch.randperm(pool.numel(), generator=gen)[: self.cfg.probe_size].to(pool.device)
        return pool[keep.sort().values]

    def probe_metrics(self) -> dict[str, Any]:
        """SSL mode: how well the weights track correct (and in-distribution) pseudo-labels on a
        fixed probe of unlabelled examples, against teacher confidence (weight_diagnostics)."""
        w, d = self.weighter, self.ctx.data
        if w.solution is None or w.reference is None:
            return {}
        idx = self.probe_idx()
        t_logits = self.teacher_labelling_logits(idx)
        probs = torch.softmax(t_logits, -1)
        confidence, pseudo = probs.max(-1)
        targets = self.pool_targets(t_logits, idx)
        logits, feats = self.features(self.student, idx)
        scores = w.batch_scores(feats, logits, targets, idx)
        weights = self.gated(w.preview(scores, targets, idx), confidence)
        ood_idx = getattr(d, "ood_idx", None)
        ood = torch.isin(idx, ood_idx) if ood_idx is not None and ood_idx.numel() > 0 else None
        previous = None
        if w.previous is not None and self.cfg.schedule != "static":
            previous = w.scores(feats, logits, targets, solution=w.previous)
        agreement = torch.softmax(logits, -1).gather(1, pseudo[:, None])[:, 0]
        stats = weight_diagnostics(scores, weights, confidence, agreement, pseudo == d.true_labels(idx), ood, previous,
                                   self.cfg.gate or 0.95)
        return {f"probe/{k}": v for k, v in stats.items()}

    # ----- logging --------------------------------------------------------------------------------
    def weight_outputs(self, out: StepOutput, w: torch.Tensor, idx: torch.Tensor | None) -> StepOutput:
        out.logs.update(weight_logs(w, "weight"))
        out.logs.update(self.weighter.stats)
        out.histograms["weight/" + ("unlabelled" if self.mode == "ssl" else "labelled")] = w
        if self.mode == "ssl":
            out.weights = w
        elif self.ctx.data.noisy_idx is not None:
            noisy = torch.isin(idx, self.ctx.data.noisy_idx)
            if noisy.any() and not noisy.all():
                out.logs.update({"weight/noisy_mean": w[noisy].mean(), "weight/clean_mean": w[~noisy].mean()})
        return out

    def teacher_weight_logs(self, w: torch.Tensor, teacher_pred: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        return teacher_weight_logs(w, teacher_pred, labels)

    def eval_metrics(self) -> dict[str, Any]:
        """SSL mode: the probe's weight diagnostics. KD mode with flipped labels: ROC-AUC of low
        weight at finding them, over the labelled set."""
        data, w = self.ctx.data, self.weighter
        if self.mode == "ssl":
            return self.probe_metrics()
        if data.noisy_idx is None or data.noisy_idx.numel() == 0 or w.solution is None:
            return {}
        idx = data.labelled_idx
        logits, feats = self.features(self.student, idx)
        t_logits, _ = self.features(self.teacher, idx)
        targets = self.pool_targets(t_logits, idx)
        scores = w.batch_scores(feats, logits, targets, idx)
        return {"noise_auc": flip_detection_auc(-scores, torch.isin(idx, data.noisy_idx))}  # the weight falls with the score

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "weighter": self.weighter.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state.items() if k != "weighter"})
        self.weighter.load_state_dict(state["weighter"])
