"""DKD's loss against a hand computation, and dkd / dkdaif as KD-mode algorithms."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ssl_kd.cli import main as train_main
from ssl_kd.distill import DistillWeighter, LossWeighter, dkd_parts, kd_losses, pack_targets, tempered_kl
from ssl_kd.errors import ConfigError
from ssl_kd.influence import InfluenceConfig
from tests.conftest import make_trainer, quick_args, run_steps

STUDENT = [[2.0, -1.0, 0.5, 0.0], [0.3, 0.1, -2.0, 1.5]]
TEACHER = [[3.0, 0.0, 1.0, -1.0], [0.0, 0.5, -1.0, 2.5]]
LABELS = [0, 3]


def softmax(z: list[float], tau: float) -> list[float]:
    e = [math.exp(v / tau) for v in z]
    return [v / sum(e) for v in e]


def hand_dkd(s: list[float], t: list[float], y: int, tau: float) -> tuple[float, float]:
    """TCKD and NCKD of one example from the paper's definitions, in plain floats."""
    ps, pt = softmax(s, tau), softmax(t, tau)
    b_s, b_t = (ps[y], 1 - ps[y]), (pt[y], 1 - pt[y])
    tckd = sum(bt * math.log(bt / bs) for bt, bs in zip(b_t, b_s))
    others = [j for j in range(len(s)) if j != y]
    nckd = sum(pt[j] / b_t[1] * math.log((pt[j] / b_t[1]) / (ps[j] / b_s[1])) for j in others)
    return tau**2 * tckd, tau**2 * nckd


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dkd_parts_match_a_hand_computation(tau):
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    parts = dkd_parts(s, torch.softmax(t / tau, -1), y, tau)
    for i in range(2):
        tckd, nckd = hand_dkd(STUDENT[i], TEACHER[i], LABELS[i], tau)
        assert parts.tckd[i].item() == pytest.approx(tckd, rel=1e-4)
        assert parts.nckd[i].item() == pytest.approx(nckd, rel=1e-4)
    # the paper's decomposition: KD = TCKD + (1 - p_t[target]) * NCKD
    pt_target = torch.softmax(t / tau, -1)[torch.arange(2), y]
    kd = tempered_kl(s, torch.softmax(t / tau, -1), tau)
    assert torch.allclose(kd, parts.tckd + (1 - pt_target) * parts.nckd, rtol=1e-5)


def test_dkd_parts_stay_finite_for_a_certain_teacher():
    s = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    probs = torch.tensor([[1.0, 0.0, 0.0]])  # all mass on the target: NCKD has nothing to match
    parts = dkd_parts(s, probs, torch.tensor([0]), 4.0)
    (parts.tckd + parts.nckd).sum().backward()
    assert parts.nckd.item() == 0 and torch.isfinite(s.grad).all() and parts.tckd.item() > 0


def test_loss_weighter_autograd_gradients_equal_kd_closed_form():
    """The per-example logit gradients by autograd of the summed loss equal KD's closed form."""
    cfg = InfluenceConfig(tau=4.0)
    s, y = torch.tensor(STUDENT), torch.tensor(LABELS)
    targets = pack_targets(torch.softmax(torch.tensor(TEACHER) / 4.0, -1), y)

    def kd_loss(logits: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        distill, ce = kd_losses(logits, packed[:, :-1], packed[:, -1].long(), 4.0)
        return 0.7 * distill + 0.3 * ce

    auto = LossWeighter(cfg, kd_loss).logit_gradients(s, targets)
    closed = DistillWeighter(cfg, 0.7).logit_gradients(s, targets)
    assert torch.allclose(auto, closed, atol=1e-6) and auto.abs().sum() > 0


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert train_main(quick_args(out, "supervised", 2, "--dataset", "digits")) == 0
    return out


def test_dkd_trains_with_its_parts_logged_and_ramped(tmp_path, teacher_ckpt):
    trainer = make_trainer(tmp_path, "dkd", 4, "--dataset", "digits", "--teacher-ckpt", str(teacher_ckpt),
                           "--set", "algo.dkd_warmup=0.5")
    algo = trainer.algorithm
    assert (algo.cfg.alpha, algo.cfg.beta, algo.cfg.tau, algo.ramp_steps) == (1.0, 8.0, 4.0, 2)
    outs = run_steps(trainer, 1)
    logs = outs[0].logs
    expected = logs["loss/sup"] + 0.5 * (logs["loss/tckd"] + 8 * logs["loss/nckd"])
    assert torch.allclose(outs[0].loss, expected) and logs["loss/nckd"] > 0
    ramps = []
    for step in range(3):
        algo.step = step
        ramps.append(algo.ramp())
    assert ramps == [0.5, 1.0, 1.0]  # (k + 1) / 2 warm-up steps, then 1


def test_dkdaif_with_unit_weights_equals_dkd(tmp_path, teacher_ckpt):
    extra = ("--dataset", "digits", "--teacher-ckpt", str(teacher_ckpt), "--set", "algo.dkd_warmup=0.3")
    dkd = make_trainer(tmp_path / "dkd", "dkd", 3, *extra)
    dkd_outs = run_steps(dkd, 3)
    aif = make_trainer(tmp_path / "aif", "dkdaif", 3, *extra, "--set", "weights.warmup=0")
    assert isinstance(aif.algorithm.weights.weighter, LossWeighter)
    aif.algorithm.weights.weighter.weights = lambda feats, *args, **kwargs: torch.ones(feats.shape[0])
    for a, b in zip(dkd_outs, run_steps(aif, 3)):
        assert torch.equal(a.loss, b.loss)
        assert all(torch.equal(a.logs[k], b.logs[k]) for k in ("loss/sup", "loss/tckd", "loss/nckd"))
    assert all(torch.equal(p, q) for p, q in zip(dkd.model.parameters(), aif.model.parameters()))


def test_dkdaif_weights_use_the_dkd_gradient(tmp_path, teacher_ckpt):
    trainer = make_trainer(tmp_path, "dkdaif", 2, "--dataset", "digits", "--teacher-ckpt", str(teacher_ckpt),
                           "--set", "weights.warmup=0", "--set", "algo.dkd_warmup=0")
    logs, out = trainer.train_one_step()
    w = out.histograms["weight/labelled"]
    assert torch.isfinite(out.loss) and w.std() > 0 and not w.requires_grad
    algo = trainer.algorithm
    logits = torch.randn(3, 10)
    targets = pack_targets(torch.softmax(torch.randn(3, 10), -1), torch.tensor([1, 2, 3]))
    z = logits.clone().requires_grad_(True)
    algo.kd_mode_loss(z, targets[:, :-1], targets[:, -1].long())[0][1].backward()  # example 1's loss alone
    assert torch.allclose(algo.weights.weighter.logit_gradients(logits, targets)[1], z.grad[1], atol=1e-6)


def test_dkdaif_gradient_keeps_its_direction_for_confident_examples(tmp_path, teacher_ckpt):
    """The autograd gradient of DKD's loss is taken in float64: in float32 a student logit margin
    of 25 rounds the target-class terms away and the direction is lost."""
    algo = make_trainer(tmp_path, "dkdaif", 2, "--dataset", "digits", "--teacher-ckpt", str(teacher_ckpt),
                        "--set", "weights.warmup=0", "--set", "algo.dkd_warmup=0").algorithm
    logits = torch.zeros(2, 10)
    logits[:, 1] = 25.0  # confident, right (example 0) and wrong (example 1) against the labels
    teacher = torch.softmax(torch.tensor([[0.0, 3.0, 1.0, 0, 0, 0, 0, 0, 0, 0]] * 2), -1)
    targets = pack_targets(teacher, torch.tensor([1, 2]))
    z = logits.double().requires_grad_(True)
    algo.kd_mode_loss(z, targets[:, :-1].double(), targets[:, -1].long())[0].sum().backward()
    got = algo.weights.weighter.logit_gradients(logits, targets)
    assert got.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got.double(), z.grad, dim=1).min() > 1 - 1e-6


def test_dkd_needs_kd_mode(tmp_path):
    with pytest.raises(ConfigError, match="KD mode|algo.mode=kd"):
        make_trainer(tmp_path, "dkd", 2, "--set", "algo.mode=ssl", "--set", "algo.teacher_warmup=0.5")


def test_teacher_weight_logs_split_by_teacher_correctness_and_class():
    from ssl_kd.distill import teacher_weight_logs

    w = torch.tensor([0.5, 1.5, 2.0, 1.0])
    logs = teacher_weight_logs(w, teacher_pred=torch.tensor([0, 1, 0, 2]), labels=torch.tensor([0, 0, 2, 2]))
    assert logs["weight/teacher_right_mean"].item() == pytest.approx(0.75)  # examples 0 and 3
    assert logs["weight/teacher_wrong_mean"].item() == pytest.approx(1.75)  # examples 1 and 2
    assert logs["weight/class_0"].item() == pytest.approx(1.0) and logs["weight/class_2"].item() == pytest.approx(1.5)
    assert "weight/class_1" not in logs


def test_kdaif_logs_weights_where_the_teacher_is_wrong(tmp_path, teacher_ckpt):
    trainer = make_trainer(tmp_path, "dkdaif", 2, "--dataset", "digits", "--teacher-ckpt", str(teacher_ckpt),
                           "--set", "weights.warmup=0")
    logs, _ = trainer.train_one_step()
    right = float(logs["train/teacher_batch_acc"]) / 100
    mixed = right * float(logs.get("weight/teacher_right_mean", 0)) + (1 - right) * float(logs.get("weight/teacher_wrong_mean", 0))
    assert mixed == pytest.approx(float(logs["weight/mean"]), rel=1e-5)  # the two groups partition the batch
    class_means = [float(v) for k, v in logs.items() if k.startswith("weight/class_")]
    assert class_means and min(class_means) <= float(logs["weight/mean"]) <= max(class_means)
