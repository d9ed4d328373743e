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
on a validation loss; a sigmoid map of the influence to a weight (`weights.map=sigmoid`) or the
example code's exp(minmax) map (`exp_minmax`); the same weights multiply both the student's
distillation loss and, under `teacher_update=weighted_ce`, the teacher's fine-tuning loss; static
weights computed once (the example code's offline computation).

Since issue 16 the weighting is a module any algorithm takes (ssl_kd.weighting, the `weights.*`
config section): KD-AIF is `kd` with `weights.kind=influence` by default, and every option below is
a `weights.*` key (an old `algo.<key>` stops the run naming its new key). FlexMatch with influence
weights is `--algo flexmatch --set weights.kind=influence`.

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
- `weights.combine=gate` with the algorithm's own mask (e.g. `algo.threshold=0.95`): weight 1 where
  the mask admits, the influence weight (<= 1) below, so influence decides about the pseudo-labels
  a confidence mask would drop.

Defaults were chosen on validation splits (`data.val_per_class`), never on the test split; the
estimator's settings on the correctness AUC of the training pool's pseudo-labels (a benchmark
quantity no user has), which was flat for reference_tau 2-8.
"""

from __future__ import annotations

from ssl_kd.algorithms.kd import KD
from ssl_kd.registry import register_algorithm


@register_algorithm("kdaif")
class KDAIF(KD):
    """`kd` whose per-example terms carry influence weights unless `weights.kind` says otherwise."""

    name = "kdaif"
    default_weights = "influence"
