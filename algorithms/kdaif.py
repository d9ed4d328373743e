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
form, one small matmul a batch) instead of the full network; the sigmoid's temperature scaled by
the median absolute deviation of recent scores, and weights renormalised to mean 1 over a batch;
the `periodic` and `online` schedules, the warm-up with weights 1 and the static weights taken
from the student at the end of warm-up; the reference set (the labelled set in SSL mode, so the
comparison with FixMatch uses no extra labels); the curvature of a refresh taken from the current
training batch; the confidence mask (`threshold`) that can be combined with the weights; the
teacher's warm-up in SSL mode; the `ema` and `mpl` teacher updates.

Defaults, chosen on a validation split of digits_30 (notes/kdaif_bench.md): EMA teacher, periodic
refresh, weights instead of a confidence mask (threshold 0; a 0.95 mask left too few examples
for the weights to matter and lost 3-5 points), sigmoid temperature 3 MADs (at 1, a third of the
examples got weight ~0 and accuracy fell). Measured there: the weights favour correct pseudo-labels
only slightly (w-weighted pseudo-label accuracy +0.4 to +0.9 points), because the labelled
reference is memorised by the student and its gradient carries little signal; with a held-out
labelled reference (`reference=val`) they help more.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from ssl_kd.algorithm import StepOutput
from ssl_kd.algorithms.kd import KD, KDConfig
from ssl_kd.augment.views import VIEW_NAMES, make_view
from ssl_kd.distill import DistillWeighter, pack_targets, teacher_weight_logs, weight_logs
from ssl_kd.errors import ConfigError
from ssl_kd.influence import InfluenceConfig, InfluenceWeighter, flip_detection_auc
from ssl_kd.registry import register_algorithm
from ssl_kd.trainer.evaluate import predict

REFERENCES = ("auto", "labelled", "val")


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
    reference: str = "auto"  # validation reference: labelled | val | auto (val in KD mode when there is one, else labelled)
    reference_size: int = 1024  # at most this many reference examples per solve (a fresh random subset each time)
    reference_view: str = "none"  # view of the reference images: none (clean) | weak | strong
    damping_fraction: float = 0.1  # damping = this fraction of the head Hessian's mean eigenvalue + weight decay


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
        print(f"kdaif: influence weights ({cfg.schedule}, {cfg.weight_map}) from step {icfg.warmup_steps}; "
              f"reference: {reference} ({self.reference_idx.numel()} examples)", file=sys.stderr)

    def influence_config(self) -> InfluenceConfig:
        cfg = self.cfg
        tempered = self.mode == "kd" or cfg.target == "soft"
        if cfg.reference not in REFERENCES:
            raise ConfigError(f"algo.reference={cfg.reference!r}: use one of {', '.join(REFERENCES)}")
        if cfg.reference_view not in VIEW_NAMES:
            raise ConfigError(f"algo.reference_view={cfg.reference_view!r}: use one of {', '.join(VIEW_NAMES)}")
        return InfluenceConfig(
            schedule=cfg.schedule, refresh_every=cfg.refresh_every,
            warmup_steps=round(cfg.weight_warmup * self.ctx.total_steps), weight_map=cfg.weight_map,
            temperature=cfg.weight_temperature, renormalise=cfg.renormalise, max_weight=cfg.max_weight,
            ema=cfg.weight_ema, damping_fraction=cfg.damping_fraction, weight_decay=self.ctx.train_cfg.weight_decay,
            tau=cfg.tau if tempered else 1.0, tau_squared=True,
        )

    def pick_reference(self) -> tuple[torch.Tensor, str]:
        data, ref = self.ctx.data, self.cfg.reference
        if ref == "auto":
            ref = "val" if self.mode == "kd" and data.val_idx.numel() > 0 else "labelled"
        if ref == "val" and data.val_idx.numel() == 0:
            raise ConfigError("algo.reference=val needs a validation split: add --set data.val_per_class=N")
        return (data.val_idx, "validation split") if ref == "val" else (data.labelled_idx, "labelled set")

    # ----- influence ------------------------------------------------------------------------------
    def features(self, net: torch.nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) of `net` in eval mode on the clean images at `idx`."""
        d = self.ctx.data
        return predict(net, d.train_x[idx], d.policy, self.ctx.train_cfg.eval_batch_size, self.ctx.autocast)

    def reference_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Student features (eval mode) and labels of the reference set in `reference_view`, or of
        a random subset of it. Subsets and augmentations come from an RNG seeded by the run's seed
        and the step, so influence leaves the training RNG stream untouched: kd and kdaif runs of
        one seed see the same batches."""
        d, idx = self.ctx.data, self.reference_idx
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
            feats = torch.cat([self.student(chunk)[1].float() for chunk in x.split(self.ctx.train_cfg.eval_batch_size)])
        self.student.train()
        return feats, d.train_y[idx]

    def pool_targets(self, teacher_logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The targets the weighted loss uses, for the static fit over the whole pool."""
        if self.mode == "kd":
            return pack_targets(torch.softmax(teacher_logits / self.cfg.tau, -1), self.ctx.data.train_y[idx])
        if self.cfg.target == "hard":
            return teacher_logits.argmax(-1)
        return torch.softmax(teacher_logits / self.cfg.tau, -1)

    def fit_static(self) -> None:
        """Score every example the weights apply to once, with the student at this step."""
        pool = self.ctx.data.labelled_idx if self.mode == "kd" else self.ctx.data.unlabelled_idx
        _, feats = self.features(self.student, pool)
        t_logits, _ = self.features(self.teacher, pool)
        ref_feats, ref_y = self.reference_batch()
        self.weighter.fit_static(self.student.head, ref_feats, ref_y, feats, self.pool_targets(t_logits, pool), pool, self.step)

    def influence_weights(self, feats: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                          idx: torch.Tensor | None) -> torch.Tensor:
        w = self.weighter
        if not w.in_warmup(self.step):
            if self.cfg.schedule == "static" and w.table is None:
                self.fit_static()
            elif w.needs_refresh(self.step):
                ref_feats, ref_y = self.reference_batch()
                w.refresh(self.student.head, ref_feats, ref_y, feats.detach(), self.step)
        return w.weights(feats, logits, targets, self.step, idx=idx)

    def unlabelled_weights(self, feats, logits, targets, idx):  # type: ignore[no-untyped-def]
        return self.influence_weights(feats, logits, targets, idx)

    def labelled_weights(self, feats, logits, teacher_probs, labels, idx):  # type: ignore[no-untyped-def]
        return self.influence_weights(feats, logits, pack_targets(teacher_probs, labels), idx)

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
        """KD mode with flipped labels: ROC-AUC of low weight at finding them, over the labelled set."""
        data = self.ctx.data
        if self.mode != "kd" or data.noisy_idx is None or data.noisy_idx.numel() == 0:
            return {}
        idx = data.labelled_idx
        if self.weighter.table is not None:
            weights = self.weighter.table[idx]
        elif self.weighter.solution is not None:
            logits, feats = self.features(self.student, idx)
            t_logits, _ = self.features(self.teacher, idx)
            weights = -self.weighter.scores(feats, logits, self.pool_targets(t_logits, idx))  # monotone in the weight
        else:
            return {}
        return {"noise_auc": flip_detection_auc(weights, torch.isin(idx, data.noisy_idx))}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "weighter": self.weighter.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state.items() if k != "weighter"})
        self.weighter.load_state_dict(state["weighter"])
