"""FreeMatch, SoftMatch and the shared distribution alignment (issue 20).

Hand-computed losses on a tiny batch; SoftMatch's weight is the truncated Gaussian at the tracked
mean and variance (exactly 1 above the mean); FreeMatch's thresholds move as their EMAs say; the
alignment's output; gradients reach the student only; exact resume; two gloo processes with half
batches keep the one-process statistics and fairness gradient. Training two steps (image and
text) is covered for every algorithm in test_trainer.py and test_text_train.py.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from ssl_kd.algorithms.fixmatch import FixMatch, FixMatchConfig
from ssl_kd.algorithms.freematch import FreeMatch, FreeMatchConfig, FreeThresholder, fairness_loss
from ssl_kd.algorithms.softmatch import GaussianWeighter, SoftMatch, SoftMatchConfig
from ssl_kd.align import DistAlign, labelled_marginal, make_aligner
from ssl_kd.errors import ConfigError
from ssl_kd.trainer import distributed
from tests.conftest import make_trainer, step_losses
from tests.test_baselines import SUP, algorithm_state_equal, assert_frozen, student_grad_norm, tiny
from tests.test_distributed import _free_port

log = math.log


def rows(*r: list[float]) -> torch.Tensor:
    return torch.tensor(r, dtype=torch.float32)


# ----- distribution alignment ---------------------------------------------------------------------------------

def test_uniform_alignment_divides_by_the_running_mean_prediction():
    align = DistAlign(torch.full((3,), 1 / 3), momentum=0.5)
    first = rows([0.8, 0.1, 0.1], [0.25, 0.5, 0.25])
    out = align(first)  # p_model starts at the first batch's mean (0.525, 0.3, 0.175)
    torch.testing.assert_close(align.p_model, torch.tensor([0.525, 0.3, 0.175]))
    expected = first / torch.tensor([0.525, 0.3, 0.175])
    torch.testing.assert_close(out, expected / expected.sum(-1, keepdim=True), rtol=1e-5, atol=1e-6)
    # the aligned batch's mean is flatter than the raw one: the over-predicted class 0 loses mass
    assert out.mean(0)[0] < first.mean(0)[0] and out.mean(0)[2] > first.mean(0)[2]
    align(rows([0.1, 0.1, 0.8]))  # then an EMA: 0.5 * old + 0.5 * new
    torch.testing.assert_close(align.p_model, torch.tensor([0.3125, 0.2, 0.4875]))


def test_remixmatch_alignment_targets_the_labelled_marginal():
    target = labelled_marginal(torch.tensor([0, 0, 0, 1, -1]), 3)  # an unlabelled -1 is not counted
    torch.testing.assert_close(target, torch.tensor([0.75, 0.25, 0.0]))
    align = DistAlign(torch.tensor([0.5, 0.25, 0.25]), momentum=0.9)
    probs = rows([0.5, 0.25, 0.25], [0.5, 0.25, 0.25])  # already the target marginal: unchanged
    torch.testing.assert_close(align(probs), probs)
    data = SimpleNamespace(train_y=torch.tensor([2, 2, 1, 0]), labelled_idx=torch.tensor([0, 1, 2]))
    ctx = SimpleNamespace(num_classes=3, device=torch.device("cpu"), data=data)
    torch.testing.assert_close(make_aligner("labelled", 0.9, ctx).target, torch.tensor([0.0, 1 / 3, 2 / 3]))
    assert make_aligner("none", 0.9, ctx) is None
    with pytest.raises(ConfigError, match="algo.dist_align='remix'"):
        make_aligner("remix", 0.9, ctx)
    with pytest.raises(ConfigError, match="algo.stats_ema=1.0"):
        make_aligner("uniform", 1.0, ctx)


def test_alignment_state_round_trip():
    align = DistAlign(torch.full((3,), 1 / 3), momentum=0.9)
    align(rows([0.6, 0.3, 0.1]))
    other = DistAlign(torch.full((3,), 1 / 3), momentum=0.9)
    other.load_state_dict(align.state_dict())
    assert other.seen and torch.equal(other.p_model, align.p_model)
    with pytest.raises(ValueError, match="p_model of shape"):
        other.load_state_dict({"p_model": torch.ones(5)})


def test_fixmatch_without_alignment_keeps_its_state_and_with_it_saves_the_aligner(tmp_path):
    algo, _ = tiny(FixMatch, FixMatchConfig())
    assert algo.aligner is None and set(algo.state_dict()) == {"thresholder"}
    assert set(tiny(SoftMatch, SoftMatchConfig())[0].state_dict()) == {"thresholder", "aligner"}  # uniform alignment on
    trainer = make_trainer(tmp_path, "fixmatch", 4, "--set", "algo.dist_align=labelled")
    step_losses(trainer, 1)
    state = trainer.algorithm.state_dict()["aligner"]
    assert state["seen"] and state["p_model"].shape == (10,)


# ----- SoftMatch ----------------------------------------------------------------------------------------------

def test_softmatch_weight_is_the_truncated_gaussian_at_the_tracked_mean_and_variance():
    w = GaussianWeighter(num_classes=4, momentum=0.5, n_sigma=2.0)
    probs = rows([0.9, 0.05, 0.03, 0.02], [0.35, 0.3, 0.2, 0.15], [0.3, 0.3, 0.2, 0.2])
    conf = torch.tensor([0.9, 0.35, 0.3])
    w.update(probs, torch.arange(3))
    mean = 0.5 * 0.25 + 0.5 * conf.mean()  # 0.383: two confidences below it
    var = 0.5 * 1.0 + 0.5 * conf.var()  # unbiased, as the authors
    torch.testing.assert_close(w.mean, mean)
    torch.testing.assert_close(w.var, var)
    weights = w.mask(probs)
    for c, got in zip(conf.tolist(), weights.tolist()):
        if c >= mean:
            assert got == 1.0  # exactly lambda_max above the mean
        else:
            assert got == pytest.approx(math.exp(-((c - mean.item()) ** 2) / (2 * var.item() / 4)), rel=1e-6)
    assert weights[0] == 1.0 and 0 < weights[2] < weights[1] < 1
    w.n_sigma = 1.0  # the bare formula: a wider Gaussian, larger weights below the mean
    assert (w.mask(probs)[1:] > weights[1:]).all()


def test_softmatch_loss_by_hand():
    algo, batch = tiny(SoftMatch, SoftMatchConfig(stats_ema=0.0))  # the statistics are this batch's alone
    out = algo.train_step(batch)
    # uniform alignment of the weak views (0.8, 0.1, 0.1), (0.25, 0.5, 0.25) by their mean (0.525, 0.3, 0.175)
    aligned = rows([0.8, 0.1, 0.1], [0.25, 0.5, 0.25]) / torch.tensor([0.525, 0.3, 0.175])
    conf = (aligned / aligned.sum(-1, keepdim=True)).max(-1).values
    assert algo.thresholder.mean.item() == pytest.approx(conf.mean().item(), rel=1e-5)
    # two confidences: mean (c1 + c2) / 2, unbiased variance (c1 - c2)^2 / 2, so the lower one is
    # 1 standard deviation / sqrt 2 below the mean: exponent -(d^2 / 4) / (2 (d^2 / 2) / 4) = -1
    assert out.mask[0].item() == 1.0 and out.mask[1].item() == pytest.approx(math.exp(-1), rel=1e-5)
    # pseudo-labels are the raw argmax; strong views uniform (CE log 3) and (0.2, 0.6, 0.2) (CE -log 0.6)
    assert out.pseudo_labels.tolist() == [0, 1]
    assert out.loss.item() == pytest.approx(SUP + (log(3) - math.exp(-1) * log(0.6)) / 2, rel=1e-5)


def test_softmatch_rejects_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="algo.n_sigma=0"):
        make_trainer(tmp_path, "softmatch", 2, "--set", "algo.n_sigma=0")
    with pytest.raises(ConfigError, match="algo.dist_align='flat'"):
        make_trainer(tmp_path, "softmatch", 2, "--set", "algo.dist_align=flat")


# ----- FreeMatch ----------------------------------------------------------------------------------------------

def test_freematch_thresholds_move_as_their_emas_say():
    th = FreeThresholder(num_classes=3, momentum=0.5)
    torch.testing.assert_close(th.class_thresholds(), torch.full((3,), 1 / 3))  # tau_0 = 1/C, p~_0 uniform
    probs = rows([0.8, 0.1, 0.1], [0.25, 0.5, 0.25])
    th.update(probs, torch.arange(2))
    tau = 0.5 / 3 + 0.5 * 0.65  # mean confidence (0.8 + 0.5) / 2
    p_model = torch.tensor([0.5 / 3 + 0.5 * 0.525, 0.5 / 3 + 0.5 * 0.3, 0.5 / 3 + 0.5 * 0.175])
    torch.testing.assert_close(th.global_threshold, torch.tensor(tau))
    torch.testing.assert_close(th.p_model, p_model)
    torch.testing.assert_close(th.label_hist, torch.tensor([0.5 / 3 + 0.25, 0.5 / 3 + 0.25, 0.5 / 3]))
    torch.testing.assert_close(th.class_thresholds(), tau * p_model / p_model[0])
    # class 2 (least predicted) has the lowest threshold (0.29; class 0: 0.49): 0.45 passes there, not for class 0
    assert th.mask(rows([0.45, 0.1, 0.44], [0.3, 0.25, 0.45])).tolist() == [0.0, 1.0]
    th.update(rows([0.1, 0.1, 0.8]), torch.tensor([5]))  # a confident class-2 batch raises tau, lifts class 2
    assert th.global_threshold > tau and th.p_model[2] > p_model[2]


def fairness_by_hand(p_model: list[float], label_hist: list[float], kept_probs: list[list[float]]) -> float:
    """-H(SumNorm(p_model / h), SumNorm(p_bar / h_bar)) written out."""
    target = [p / h for p, h in zip(p_model, label_hist)]
    target = [t / sum(target) for t in target]
    n, c = len(kept_probs), len(p_model)
    p_bar = [sum(p[k] for p in kept_probs) / n for k in range(c)]
    h_bar = [sum(1 for p in kept_probs if max(range(c), key=p.__getitem__) == k) / n for k in range(c)]
    mod = [pb / hb if hb > 0 else 0.0 for pb, hb in zip(p_bar, h_bar)]
    mod = [m / sum(mod) for m in mod]
    return sum(t * log(m + 1e-12) for t, m in zip(target, mod))


def test_freematch_loss_by_hand():
    algo, batch = tiny(FreeMatch, FreeMatchConfig(stats_ema=0.5, lambda_f=0.1))
    batch.x_u["strong"] = torch.tensor([[log(2), 0, 0], [0, log(3), 0]])  # strong views (0.5, .25, .25), (0.2, 0.6, 0.2)
    out = algo.train_step(batch)
    # thresholds as in the EMA test: (0.492, 0.363, 0.291) for classes (0, 1, 2); 0.8 (class 0) and 0.5 (class 1) pass
    assert out.mask.tolist() == [1.0, 1.0] and out.pseudo_labels.tolist() == [0, 1]
    p_model = [0.5 / 3 + 0.5 * 0.525, 0.5 / 3 + 0.5 * 0.3, 0.5 / 3 + 0.5 * 0.175]
    label_hist = [0.5 / 3 + 0.25, 0.5 / 3 + 0.25, 0.5 / 3]
    fair = fairness_by_hand(p_model, label_hist, [[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]])
    assert out.logs["loss/fairness"].item() == pytest.approx(fair, rel=1e-5)
    assert out.loss.item() == pytest.approx(SUP + (log(2) - log(0.6)) / 2 + 0.1 * fair, rel=1e-5)


def test_fairness_is_zero_when_nothing_passes_and_trains_the_strong_side_only():
    p_model, hist = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.6, 0.2, 0.2])
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]], requires_grad=True)
    assert fairness_loss(logits, torch.zeros(3), p_model, hist).item() == 0.0
    loss = fairness_loss(logits, torch.tensor([1.0, 1.0, 0.0]), p_model, hist)
    kept = torch.softmax(logits[:2].detach(), -1).tolist()
    assert loss.item() == pytest.approx(fairness_by_hand(p_model.tolist(), hist.tolist(), kept), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad[:2].abs().sum() > 0 and grad[2].abs().sum() == 0  # only kept examples carry a gradient


# ----- the student learns from the unsupervised losses; the weak side is a constant -----------------------------

@pytest.mark.parametrize("algo", ["freematch", "softmatch"])
def test_unsup_loss_trains_the_strong_side_only(tmp_path, algo):
    trainer = make_trainer(tmp_path, algo, 6)
    batch = trainer.next_batch()
    weak_logits = trainer.model(batch.x_u["weak"])[0].detach().requires_grad_()
    strong_logits, _ = trainer.model(batch.x_u["strong"])
    loss, _, mask = trainer.algorithm.unsup_loss(weak_logits, strong_logits, batch.idx_u)
    if algo == "freematch":
        loss = loss + trainer.algorithm.fairness
    assert mask.sum() > 0 and loss != 0
    trainer.model.zero_grad(set_to_none=True)
    loss.backward()
    assert student_grad_norm(trainer) > 0
    assert weak_logits.grad is None
    assert_frozen(trainer.ema_model)


# ----- checkpoints (exact resume of both: test_baselines.py) ------------------------------------------------

def test_statistics_checkpoint_must_match():
    with pytest.raises(ValueError, match="label_hist of shape"):
        FreeThresholder(3, 0.9).load_state_dict({"global_threshold": torch.tensor(0.5), "p_model": torch.ones(3),
                                                 "label_hist": torch.ones(4)})
    with pytest.raises(ValueError, match="softmatch state must hold mean"):
        GaussianWeighter(3, 0.9, 2.0).load_state_dict({})


# ----- two gloo processes with half batches keep one process's statistics and fairness gradient ------------------

def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    weak = torch.softmax(torch.randn(8, 4, generator=g) * 2, -1)
    strong = torch.randn(8, 4, generator=g) * 2
    mask = torch.tensor([1.0, 1, 0, 1, 1, 0, 1, 1])
    return weak, strong, mask


def _statistics(weak: torch.Tensor, strong: torch.Tensor, mask: torch.Tensor) -> dict:
    free, gauss, align = FreeThresholder(4, 0.9), GaussianWeighter(4, 0.9, 2.0), DistAlign(torch.full((4,), 0.25), 0.9)
    for _ in range(2):
        free.update(weak, torch.arange(len(weak)))
        gauss.update(weak, torch.arange(len(weak)))
        aligned = align(weak)
    strong = strong.clone().requires_grad_()
    loss = fairness_loss(strong, mask, free.p_model, free.label_hist)
    loss.backward()
    return {"free": free.state_dict(), "gauss": gauss.state_dict(), "align": align.state_dict(), "aligned": aligned,
            "loss": loss.detach(), "grad": strong.grad}


def _stats_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_from_env(torch.device("cpu"), timeout_s=30)
    part = slice(4 * rank, 4 * rank + 4)
    weak, strong, mask = _batch()
    torch.save(_statistics(weak[part], strong[part], mask[part]), f"{out}/{rank}.pt")
    os._exit(0)  # no gloo teardown (see test_distributed)


def test_two_processes_keep_the_global_batch_statistics(tmp_path: Path) -> None:
    one = _statistics(*_batch())
    mp.spawn(_stats_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(2)]
    for rank, res in enumerate(ranks):
        for key in ("free", "gauss", "align"):
            for name, value in one[key].items():
                got = res[key][name]
                assert got == value if isinstance(value, bool) else torch.allclose(got, value, rtol=1e-6, atol=1e-7), (key, name)
        torch.testing.assert_close(res["aligned"], one["aligned"][4 * rank : 4 * rank + 4])
        torch.testing.assert_close(res["loss"], one["loss"])
        # DDP averages the two ranks' gradients: each rank's, halved, is the one-process gradient of its examples
        torch.testing.assert_close(res["grad"] / 2, one["grad"][4 * rank : 4 * rank + 4])
