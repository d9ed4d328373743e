"""OpenMatch (issue 29) and the algorithm-owned heads it needs: the OVA losses by hand, the outlier
score, selection that excludes outliers from FixMatch, heads that train, checkpoint and reload with
the network, exact resume, and the outlier AUC recorded at evaluation under class mismatch."""
from __future__ import annotations

import math

import pytest
import torch

from ssl_kd.algorithms.openmatch import OpenMatch
from ssl_kd.openset import ova_entropy, ova_loss, ova_probs, outlier_score, socr
from ssl_kd.run import load_run
from tests.conftest import make_trainer, quick_args, run_steps, step_losses
from tests.test_baselines import algorithm_state_equal

log = math.log


def open_logits(*rows: list[list[float]]) -> torch.Tensor:
    """OVA logits from per-example [outlier logits per class, inlier logits per class]."""
    return torch.tensor([r[0] + r[1] for r in rows])


def test_ova_probabilities_pair_each_class_outlier_with_inlier():
    p = ova_probs(open_logits([[0.0, log(3)], [log(3), 0.0]]))  # class 0: 1:3 -> p(in) 3/4; class 1: 3:1 -> p(in) 1/4
    torch.testing.assert_close(p[0], torch.tensor([[0.25, 0.75], [0.75, 0.25]]))


def test_ova_loss_entropy_and_socr_by_hand():
    a = open_logits([[0.0, log(3)], [log(3), 0.0]])  # p(in) = (3/4, 1/4), p(out) = (1/4, 3/4)
    b = open_logits([[0.0, 0.0], [0.0, 0.0]])  # every head 1/2
    # label 1: -log p(in of 1) = -log 1/4; the only negative, class 0: -log p(out of 0) = -log 1/4
    assert ova_loss(a, torch.tensor([1])).item() == pytest.approx(2 * log(4), rel=1e-5)
    h = -(0.25 * log(0.25) + 0.75 * log(0.75))
    assert ova_entropy(a).item() == pytest.approx(h, rel=1e-5)
    assert ova_entropy(b).item() == pytest.approx(log(2), rel=1e-5)
    assert socr(a, b).item() == pytest.approx(4 * 0.25 ** 2, rel=1e-5)  # four entries, each 1/4 away
    assert outlier_score(torch.tensor([[0.0, 1.0]]), a).item() == pytest.approx(0.75)  # predicted class 1's head


def test_the_ova_head_is_part_of_the_network_and_learns(tmp_path):
    trainer = make_trainer(tmp_path, "openmatch", 6)
    assert isinstance(trainer.model.ova, torch.nn.Linear) and trainer.ema_model is not None and hasattr(trainer.ema_model, "ova")
    ova_params = {id(p) for p in trainer.model.ova.parameters()}
    assert ova_params <= {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    before = trainer.model.ova.weight.detach().clone()
    run_steps(trainer, 2)
    assert not torch.equal(before, trainer.model.ova.weight)


def test_selection_excludes_the_pools_outliers_from_fixmatch(tmp_path):
    trainer = make_trainer(tmp_path, "openmatch", 10, "--set", "algo.start_fix_fraction=0.1", "--set", "algo.select_fraction=0.5")
    algo = trainer.algorithm
    algo.select = lambda: algo.selected.zero_()  # every image an outlier
    out = run_steps(trainer, 2)[-1]  # step 1 = the start: selection runs, FixMatch is on
    assert algo.fixmatch_on() and out.mask.sum() == 0 and float(out.logs["loss/unsup"]) == 0.0
    algo.select = lambda: algo.selected.fill_(True)
    trainer.step = 6  # 1 + 5 steps later: the next selection
    out = run_steps(trainer, 1)[-1]
    assert out.mask.sum() > 0  # threshold 0: every pseudo-label counts


def test_selection_scores_the_pool_with_the_ema_model(tmp_path):
    trainer = make_trainer(tmp_path, "openmatch", 6)
    algo, data = trainer.algorithm, trainer.data
    algo.select()
    pool = data.unlabelled_idx
    assert (algo.scores[pool] >= 0).all()
    assert torch.equal(algo.selected[pool], algo.scores[pool] < 0.5)


def test_resume_is_exact_and_eval_rebuilds_the_heads(tmp_path):
    extra = ("--set", "algo.start_fix_fraction=0.2", "--set", "algo.select_fraction=0.3")
    first = make_trainer(tmp_path, "openmatch", 6, *extra)
    step_losses(first, 3)
    first.save()
    saved_head = first.model.ova.weight.detach().clone()
    expected = step_losses(first, 3)
    resumed = make_trainer(tmp_path, "openmatch", 6, *extra)
    resumed.load(first.run_dir / "checkpoints" / "last.pt")
    assert step_losses(resumed, 3) == expected
    assert algorithm_state_equal(resumed.algorithm.state_dict(), first.algorithm.state_dict())
    loaded = load_run(first.run_dir / "checkpoints" / "last.pt", device="cpu")  # eval/export/predict's reader
    assert torch.equal(loaded.model.ova.weight, saved_head)


def test_outlier_auc_is_recorded_under_class_mismatch(tmp_path, run_cli):
    code, _ = run_cli(quick_args(tmp_path / "r", "openmatch", 4, "--set", "data.unlabelled_mismatch=0.5",
                                 "--set", "algo.start_fix_fraction=0.25"))
    assert code == 0
    rows = [line for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert "openmatch_ood_auc" in rows[-1]


def test_zero_weights_remove_the_fixmatch_term(tmp_path):
    extra = ("--set", "weights.warmup=0", "--set", "weights.refresh_every=2", "--set", "algo.start_fix_fraction=0")
    plain = make_trainer(tmp_path / "none", "openmatch", 6, "--set", "weights.kind=none", *extra)
    weighted = make_trainer(tmp_path / "w", "openmatch", 6, "--set", "weights.kind=influence", *extra)
    weighted.algorithm.weights.weighter.weights = lambda feats, *args, **kwargs: torch.zeros(feats.shape[0])
    for trainer in (plain, weighted):
        trainer.algorithm.select = lambda algo=trainer.algorithm: algo.selected.fill_(True)
    assert float(run_steps(plain, 2)[-1].logs["loss/unsup"]) > 0.0
    assert float(run_steps(weighted, 2)[-1].logs["loss/unsup"]) == 0.0
