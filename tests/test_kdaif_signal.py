"""KD-AIF's estimator (issue 11): clean-view scoring, cross-fitted reference, relative scores,
tempered reference loss, gated weights, the feedback teacher, the probe diagnostics."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_kd.influence import InfluenceConfig, InfluenceWeighter
from ssl_kd.influence.diagnostics import roc_auc, weight_diagnostics
from ssl_kd.influence.head import HeadCurvature, HeadLoss, mean_grad, per_example_grads
from ssl_kd.influence.solve import solve_head
from ssl_kd.weighting.spec import WeightRequest
from tests.conftest import make_trainer, quick_args, run_steps

ACTIVE = ("--set", "algo.teacher_warmup=0", "--set", "weights.warmup=0", "--set", "algo.threshold=0")


def unlabelled_inputs(trainer, seed: int, confidence=None):
    """A weight request with random 'loss forward' features/logits for the first unlabelled batch."""
    gen = torch.Generator().manual_seed(seed)
    idx = trainer.data.unlabelled_idx[:16]
    feats = torch.randn(16, trainer.algorithm.student.head.in_features, generator=gen)
    logits = torch.randn(16, trainer.data.num_classes, generator=gen)
    return WeightRequest(feats, logits, trainer.data.train_y[idx], idx, confidence)


def weights_of(algo, request, mask=None):
    """What the algorithm's weighting module applies to `request` under `mask` (all ones by default)."""
    return algo.weights.apply(torch.ones(request.idx.numel()) if mask is None else mask, request)


def test_clean_scoring_ignores_the_strong_view_and_strong_scoring_does_not(tmp_path):
    single = ("--set", "weights.accumulate=false")  # one visit's score, not a running mean
    trainer = make_trainer(tmp_path / "clean", "kdaif", 4, *ACTIVE, *single)
    algo = trainer.algorithm
    first = weights_of(algo, unlabelled_inputs(trainer, 0))  # refreshes, sets the scale
    again = weights_of(algo, unlabelled_inputs(trainer, 1))
    torch.testing.assert_close(first, again)  # the example's clean image is scored, not the loss's view
    strong = make_trainer(tmp_path / "strong", "kdaif", 4, *ACTIVE, *single, "--set", "weights.score_view=strong").algorithm
    a = weights_of(strong, unlabelled_inputs(trainer, 0))
    assert not torch.allclose(a, weights_of(strong, unlabelled_inputs(trainer, 1)))


def test_crossfit_folds_rotate_out_of_the_labelled_loss_and_into_the_reference(tmp_path):
    trainer = make_trainer(tmp_path, "kdaif", 40, "--set", "algo.teacher_warmup=0", "--set", "weights.warmup=0.25",
                           "--set", "weights.reference=crossfit", "--set", "weights.folds=3", "--set", "weights.refresh_every=5")
    algo, data = trainer.algorithm, trainer.data
    module = algo.weights
    folds = module.fold_of[data.labelled_idx]
    assert sorted(folds.bincount().tolist()) == [10, 10, 10]
    for c in range(10):  # class-balanced: each class's three labels land in three folds
        assert sorted(folds[data.train_y[data.labelled_idx] == c].tolist()) == [0, 1, 2]
    # warm-up ends at step 10; the fold held out in steps 5-9 is the reference of the solve at 10, and so on
    assert [module.held_out_fold(s) for s in (0, 4, 5, 9, 10, 14, 15, 20)] == [None, None, 0, 0, 1, 1, 2, 0]
    algo.step = 12
    _, ref_y = module.reference_batch()
    assert ref_y.numel() == 10 and torch.equal(ref_y.sort().values, data.train_y[data.labelled_idx[folds == 0]].sort().values)
    idx = data.labelled_idx[:12]
    logits = torch.randn(12, 10)
    ce = F.cross_entropy(logits, data.train_y[idx], reduction="none")
    keep = module.fold_of[idx] != 1  # step 12 holds out fold 1
    torch.testing.assert_close(algo.labelled_loss(logits, data.train_y[idx], idx), ce[keep].mean())


def test_relative_score_is_the_plain_score_over_the_gradient_norm():
    gen = torch.Generator().manual_seed(0)
    f, logits, y = torch.randn(20, 5, generator=gen).relu(), torch.randn(20, 3, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    head = torch.nn.Linear(5, 3)
    plain, relative = InfluenceWeighter(InfluenceConfig()), InfluenceWeighter(InfluenceConfig(relative=True))
    for w in (plain, relative):
        w.refresh(head, f[:8], y[:8], f, 0)
    norms = per_example_grads(f, logits, y).flatten(1).norm(dim=1)
    torch.testing.assert_close(relative.scores(f, logits, y), plain.scores(f, logits, y) / norms)


def test_reference_temperature_tempers_the_validation_gradient():
    gen = torch.Generator().manual_seed(1)
    f, y = torch.randn(30, 4, generator=gen).relu(), torch.randint(0, 3, (30,), generator=gen)
    head = torch.nn.Linear(4, 3)
    w = InfluenceWeighter(InfluenceConfig(reference_tau=4.0, damping=0.1))
    w.refresh(head, f[:10], y[:10], f[10:], 0)
    with torch.no_grad():
        logits_v, logits_t = head(f[:10]).double(), head(f[10:]).double()
    g_val = mean_grad(f[:10].double(), logits_v, y[:10], HeadLoss(4.0, False))
    curv = HeadCurvature(f[10:], logits_t)
    torch.testing.assert_close(w.solution, solve_head(curv, g_val, 0.1, w.cfg.solve_options).float())


def test_gate_keeps_confident_pseudo_labels_at_one_and_admits_the_rest_by_influence(tmp_path):
    trainer = make_trainer(tmp_path, "kdaif", 4, *ACTIVE, "--set", "weights.combine=gate")
    conf = torch.linspace(0.3, 1.0, 16)
    mask = (conf >= 0.8).float()  # the algorithm's own confidence mask (algo.threshold=0.8)
    w = weights_of(trainer.algorithm, unlabelled_inputs(trainer, 0, conf), mask)
    assert torch.equal(w[conf >= 0.8], torch.ones(int((conf >= 0.8).sum())))
    low = w[conf < 0.8]
    assert low.max() <= 1 and low.min() >= 0 and low.std() > 0


def test_feedback_teacher_raises_pseudo_labels_that_weigh_more_than_the_baseline(tmp_path):
    algo = make_trainer(tmp_path, "kdaif", 4, *ACTIVE, "--set", "algo.teacher_update=feedback").algorithm
    assert algo.teacher_trains(0) and algo.teacher_opt is not None
    t_uw = torch.zeros(2, 10, requires_grad=True)
    pseudo, w = torch.tensor([3, 5]), torch.tensor([1.5, 0.5])  # baseline starts at 1: rewards +0.5 and -0.5
    logs: dict = {}
    algo.teacher_feedback_loss(torch.zeros(1, 10), torch.zeros(2, 10), torch.tensor([0]), torch.tensor([0]), pseudo,
                               torch.ones(2), {})  # the first batch starts the baseline at its mean reward, 1
    loss = algo.teacher_feedback_loss(torch.zeros(1, 10), t_uw, torch.tensor([0]), torch.tensor([0]), pseudo, w, logs)
    (grad,) = torch.autograd.grad(loss, t_uw)
    assert grad[0, 3] < 0 < grad[1, 5]  # descent raises example 0's pseudo-label, lowers example 1's
    assert float(algo.feedback_baseline) == pytest.approx(1.0)  # mean weight 1 keeps the baseline
    kd = make_trainer(tmp_path / "kd", "kd", 4, "--set", "algo.teacher_warmup=0", "--set", "algo.teacher_update=feedback").algorithm
    labelled = torch.randn(4, 10)
    y = torch.tensor([0, 1, 2, 3])
    loss = kd.teacher_feedback_loss(labelled, torch.randn(2, 10), y, torch.arange(4), pseudo, torch.ones(2), {})
    torch.testing.assert_close(loss, F.cross_entropy(labelled, y))  # weights 1: only the labelled term


def test_feedback_rewards_are_weights_before_renormalisation_on_both_sides_of_their_baseline(tmp_path):
    """Renormalised weights average 1 over every batch, so a baseline of them is always 1 and says
    nothing; the reward is the mapped weight before renormalisation, and its baseline starts at the
    first batch's mean, so rewards fall on both sides of it."""
    trainer = make_trainer(tmp_path, "kdaif", 6, *ACTIVE, "--set", "algo.teacher_update=feedback")
    outs = run_steps(trainer, 3)
    algo = trainer.algorithm
    assert float(outs[-1].logs["train/feedback_baseline"]) != pytest.approx(1.0, abs=1e-3)
    applied = weights_of(algo, unlabelled_inputs(trainer, 0))
    rewards = algo.weights.rewards(applied)
    assert float(applied.mean()) == pytest.approx(1.0, abs=1e-5)  # what the loss applies: renormalised
    assert 0.0 <= float(rewards.min()) and float(rewards.max()) <= 1.0  # the sigmoid's own level
    centred = rewards - algo.feedback_baseline
    assert (centred > 0).any() and (centred < 0).any()


def test_diagnostics_auc_and_means_on_a_known_case():
    correct = torch.tensor([True, True, True, False, False, False])
    weights = torch.tensor([0.9, 0.8, 0.2, 0.7, 0.1, 0.05])  # 8 of the 9 correct/wrong pairs ordered right
    assert roc_auc(weights, correct) == pytest.approx(8 / 9)
    ood = torch.tensor([False, False, False, False, True, True])
    stats = weight_diagnostics(-weights, weights, weights.flip(0), torch.full((6,), 0.5), correct, ood, -weights, 0.5)
    assert stats["correct_auc_weight"] == pytest.approx(8 / 9, abs=1e-4) and stats["correct_auc_score"] == stats["correct_auc_weight"]
    assert stats["ood_auc_weight"] == 1.0 and stats["stability"] == pytest.approx(1.0)
    assert stats["weight_ood_mean"] == pytest.approx(0.075) and stats["weight_id_mean"] == pytest.approx(0.65)
    assert math.isnan(roc_auc(weights, torch.ones(6, dtype=torch.bool)))


def test_probe_diagnostics_are_recorded_at_evaluations(tmp_path, run_cli):
    out = tmp_path / "run"
    code, _ = run_cli(quick_args(out, "kdaif", 6, *ACTIVE, "--eval-every", "3", "--set", "weights.refresh_every=2",
                                 "--set", "weights.probe_size=64"))
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    for key in ("correct_auc_weight", "correct_auc_confidence", "stability", "low_conf_share", "disagreement_spearman"):
        assert f"probe/{key}" in last, key
    assert 0 <= last["probe/low_conf_share"] <= 1 and -1 <= last["probe/stability"] <= 1
