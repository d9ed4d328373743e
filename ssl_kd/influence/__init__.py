"""Influence functions for per-example loss weights (KD-AIF) and for explanations.

Sign convention (Koh & Liang 2017, "up-weighting" influence on the validation loss)::

    I(z) = - g_val^T (H + lambda I)^-1 grad_theta l(z)

with g_val the gradient of the mean validation cross-entropy and H the Hessian of the mean
training loss. I(z) < 0: up-weighting z lowers the validation loss, so z HELPS; I(z) > 0: z
hurts. Removing z from n training examples changes the validation loss by about -I(z) / n
(tested against leave-one-out retraining). Libraries disagree on this sign; weights here always
give helpful examples the larger weight.

By default theta is the classifier head (last linear layer with bias), where gradients, Hessian
and its products have closed forms in the features and logits a training step already computed
(`head.py`); `solve.py` does the damped solve (Cholesky, CG, K-FAC, EK-FAC); `full.py` covers
every parameter with torch.func for fidelity studies; `projected.py` covers the last block(s)
plus the head cheaply (seeded random projection of the gradients, Gauss-Newton curvature in k
dimensions, one JVP per scored batch; `ProjectedInfluence`); `weights.py` maps scores to weights;
`weighter.py` schedules it all; `explain.py` ranks training examples and writes a report;
`noise.py` measures how well low weights find flipped labels.

Use in an algorithm's train_step (the weighter's state goes in the algorithm's state_dict)::

    weighter = InfluenceWeighter(InfluenceConfig(schedule="periodic", refresh_every=500, warmup_steps=1000))
    ...
    logits_u, feats_u = model(x_strong)                    # computed anyway for the loss
    if weighter.needs_refresh(step):                      # every refresh_every steps after warm-up
        val_logits, val_feats = model(x_val)               # no_grad, eval mode (BatchNorm running stats)
        weighter.refresh(model.head, val_feats, y_val, feats_u, step)
    w = weighter.weights(feats_u, logits_u, targets_u, step, idx=idx_u)   # detached, mean 1; ones in warm-up
    loss_u = (w * per_example_loss).mean()
    logs.update(weighter.stats)

`targets` are what the weighted loss uses: labels or hard pseudo-labels (B,), or soft targets
(B, C) at temperature `tau` (set `InfluenceConfig.tau`/`tau_squared` to match the loss). The
static schedule instead calls `fit_static(head, val_feats, y_val, train_feats, train_targets,
train_idx)` once and looks weights up by `idx`.
"""
from ssl_kd.influence.errors import InfluenceError
from ssl_kd.influence.explain import Ranking, rank_training_examples, write_report
from ssl_kd.influence.full import FullConfig, full_influence
from ssl_kd.influence.head import HeadCurvature, HeadLoss
from ssl_kd.influence.noise import flip_detection_auc, flip_labels
from ssl_kd.influence.projected import ProjectedConfig, ProjectedInfluence
from ssl_kd.influence.solve import SolveOptions, solve_head
from ssl_kd.influence.weighter import InfluenceConfig, InfluenceWeighter

__all__ = [
    "FullConfig", "HeadCurvature", "HeadLoss", "InfluenceConfig", "InfluenceError", "InfluenceWeighter",
    "ProjectedConfig", "ProjectedInfluence", "Ranking", "SolveOptions", "flip_detection_auc", "flip_labels",
    "full_influence", "rank_training_examples", "solve_head", "write_report",
]
