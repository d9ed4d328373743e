"""IOMatch (issue 29): its open-set targets by hand, which images each term uses, the open-set loss
held off for the first epoch, heads that train and reload, exact resume, and the outlier AUC."""
from __future__ import annotations

import pytest
import torch

from ssl_kd.algorithms.iomatch import open_set_targets
from ssl_kd.run import load_run
from tests.conftest import make_trainer, quick_args, run_steps, step_losses
from tests.test_baselines import algorithm_state_equal


def test_open_set_targets_by_hand():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    r = torch.tensor([[[0.2, 0.6], [0.8, 0.4]], [[0.9, 0.1], [0.1, 0.9]]])  # [:, 0] outlier, [:, 1] inlier
    out, q = open_set_targets(p, r)
    torch.testing.assert_close(out, torch.tensor([0.4, 0.9]))
    torch.testing.assert_close(q, torch.tensor([[0.4, 0.2, 0.4], [0.1, 0.0, 0.9]]))
    torch.testing.assert_close(q.sum(1), torch.ones(2))  # a distribution over K + 1 classes


def test_heads_train_and_the_open_set_loss_waits_for_the_first_epoch(tmp_path):
    trainer = make_trainer(tmp_path, "iomatch", 10, "--set", "algo.open_start_fraction=0.2", "--set", "algo.q_cutoff=0")
    heads = [trainer.model.proj, trainer.model.multi_binary, trainer.model.open_set]
    before = [h.state_dict() for h in heads]
    before = [{k: v.clone() for k, v in b.items()} for b in before]
    outs = run_steps(trainer, 3)
    assert [float(o.logs["loss/open_set"]) for o in outs][:2] == [0.0, 0.0] and float(outs[2].logs["loss/open_set"]) > 0
    for head, old in zip(heads, before):
        assert any(not torch.equal(v, head.state_dict()[k]) for k, v in old.items())


def test_closed_set_term_uses_only_confident_inliers(tmp_path):
    trainer = make_trainer(tmp_path, "iomatch", 6, "--set", "algo.p_cutoff=1.1")  # nothing is that confident
    out = run_steps(trainer, 1)[0]
    assert out.mask.sum() == 0 and float(out.logs["loss/unsup"]) == 0.0
    trainer = make_trainer(tmp_path / "b", "iomatch", 6, "--set", "algo.p_cutoff=0")
    out = run_steps(trainer, 1)[0]
    inliers = out.mask.sum()
    assert 0 < inliers and float(out.logs["train/inlier_ratio"]) == pytest.approx(float(inliers) / out.mask.numel())


def test_resume_is_exact_and_eval_rebuilds_the_heads(tmp_path):
    first = make_trainer(tmp_path, "iomatch", 6)
    step_losses(first, 3)
    first.save()
    saved = first.model.open_set.weight.detach().clone()
    expected = step_losses(first, 3)
    resumed = make_trainer(tmp_path, "iomatch", 6)
    resumed.load(first.run_dir / "checkpoints" / "last.pt")
    assert step_losses(resumed, 3) == expected
    assert algorithm_state_equal(resumed.algorithm.state_dict(), first.algorithm.state_dict())
    assert torch.equal(load_run(first.run_dir / "checkpoints" / "last.pt", device="cpu").model.open_set.weight, saved)


def test_outlier_auc_is_recorded_under_class_mismatch(tmp_path, run_cli):
    code, _ = run_cli(quick_args(tmp_path / "r", "iomatch", 4, "--set", "data.unlabelled_mismatch=0.5"))
    assert code == 0
    assert "iomatch_ood_auc" in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1]
