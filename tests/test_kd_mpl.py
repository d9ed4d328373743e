"""The two baselines: Hinton KD (its losses by hand, both modes) and Meta Pseudo Labels (the
feedback's sign, who gets which gradient, exact resume)."""
from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.config import TrainConfig
from ssl_kd.nets.small import digits_net
from ssl_kd.teacher import TeacherOptimiser, mpl_feedback, mpl_teacher_update, preserved_buffers
from tests.conftest import make_trainer, run_steps
from tests.test_kdaif import teacher_ckpt  # noqa: F401 (a fixture)


def hinton(student_logits, teacher_logits, labels, alpha, tau):
    kl = F.kl_div(F.log_softmax(student_logits / tau, -1), F.softmax(teacher_logits / tau, -1), reduction="batchmean")
    return alpha * tau**2 * kl + (1 - alpha) * F.cross_entropy(student_logits, labels)


# ----- KD -----------------------------------------------------------------------------------------------

def test_kd_mode_loss_is_hintons(tmp_path, teacher_ckpt):
    trainer = make_trainer(tmp_path, "kd", 2, "--dataset", "digits", "--teacher-ckpt", str(teacher_ckpt),
                           "--set", "algo.tau=3", "--set", "algo.alpha=0.6")
    algo, batch = trainer.algorithm, trainer.next_batch()
    out = algo.train_step(batch)
    x = batch.x_l["weak"]
    algo.teacher.eval()  # a frozen checkpoint predicts with its trained statistics
    with torch.no_grad():
        t_logits, _ = algo.teacher(x)
    s_logits, _ = trainer.model(x)
    torch.testing.assert_close(out.loss, hinton(s_logits, t_logits, batch.y_l, 0.6, 3.0))
    assert all(p.grad is None and not p.requires_grad for p in algo.teacher.parameters())


def test_ssl_mode_soft_targets_are_tempered_kl(tmp_path):
    trainer = make_trainer(tmp_path, "kd", 2, "--set", "algo.teacher_warmup=0", "--set", "algo.target=soft",
                           "--set", "algo.tau=2", "--set", "algo.threshold=0", "--set", "algo.lambda_u=1")
    algo, batch = trainer.algorithm, trainer.next_batch()
    out = algo.train_step(batch)
    with torch.no_grad():  # the EMA teacher labels with batch statistics, as in the step
        t_logits, _ = algo.teacher(batch.x_u["weak"])
    s_l, s_u = trainer.model(torch.cat([batch.x_l["weak"], batch.x_u["strong"]]))[0].split([8, 16])
    kl = F.kl_div(F.log_softmax(s_u / 2, -1), F.softmax(t_logits / 2, -1), reduction="batchmean")
    torch.testing.assert_close(out.loss, F.cross_entropy(s_l, batch.y_l) + 4 * kl)


# ----- MPL ------------------------------------------------------------------------------------------------

def labelled_loss(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad(), preserved_buffers(student):
        return F.cross_entropy(student(x)[0], y).item()


@pytest.mark.parametrize("helpful", [True, False])
def test_mpl_feedback_rewards_pseudo_labels_that_lower_the_labelled_loss(helpful):
    """Pseudo-labels equal to the true labels of the same images lower the student's labelled loss:
    h > 0 and the teacher's update raises its probability of them. Wrong ones: h < 0, lowered."""
    torch.manual_seed(0)
    student = digits_net(10).train()
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    fit = torch.optim.SGD(student.parameters(), lr=0.1)
    for _ in range(10):  # a student that has begun to learn the labelled set
        fit.zero_grad()
        F.cross_entropy(student(x)[0], y).backward()
        fit.step()
    pseudo = y if helpful else (y + 3) % 10
    lr = 0.02
    before = labelled_loss(student, x, y)
    with preserved_buffers(student):
        grads_u = torch.autograd.grad(F.cross_entropy(student(x)[0], pseudo), list(student.parameters()))
    with torch.no_grad():
        for p, g in zip(student.parameters(), grads_u):
            p -= lr * g
    after = labelled_loss(student, x, y)
    h = mpl_feedback(student, x, y, list(grads_u), lr, nullcontext)
    sign = 1 if helpful else -1
    assert sign * (before - after) > 0 and sign * h > 0
    assert h == pytest.approx(before - after, rel=0.5)  # first order in lr

    teacher = nn.Linear(64, 10)
    opt = TeacherOptimiser(teacher, TrainConfig(lr=0.5, momentum=0.0, nesterov=False, weight_decay=0.0, steps=10))
    prob = lambda: F.softmax(teacher(x.flatten(1)), -1).gather(1, pseudo[:, None]).mean().item()  # noqa: E731
    p_before = prob()
    t_logits = teacher(x.flatten(1))
    logs = mpl_teacher_update(opt, 0.0 * t_logits.sum(), t_logits, pseudo, student, x, y, list(grads_u), lr, nullcontext)
    assert sign * logs["train/mpl_feedback"] > 0 and sign * (prob() - p_before) > 0


def test_mpl_teacher_gets_the_feedback_and_the_student_only_its_own_loss(tmp_path):
    trainer = make_trainer(tmp_path, "mpl", 4, "--set", "algo.student_wait=0.25")
    algo = trainer.algorithm
    outs = run_steps(trainer, 2)
    assert outs[0].loss == 0 and "train/mpl_feedback" not in outs[0].logs  # the student waits
    assert "train/mpl_feedback" in outs[1].logs and outs[1].pseudo_labels is not None
    out = algo.train_step(trainer.next_batch())
    trainer.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    student_grads = [p.grad.clone() for p in trainer.model.parameters()]
    assert sum(float(g.abs().sum()) for g in student_grads) > 0
    algo.after_step()
    assert all(torch.equal(g, p.grad) for g, p in zip(student_grads, trainer.model.parameters()))
    assert sum(float(p.grad.abs().sum()) for p in algo.teacher.parameters()) > 0
    assert all(p.grad is None for p in trainer.ema_model.parameters())


def test_mpl_student_is_untouched_while_it_waits(tmp_path):
    """The port's student_wait has learning rate 0: with weight decay and momentum on, neither
    the student's weights nor its BatchNorm statistics may move until the wait is over."""
    trainer = make_trainer(tmp_path, "mpl", 8, "--set", "algo.student_wait=0.5", "--set", "train.weight_decay=0.01")
    assert trainer.cfg.train.momentum > 0
    student = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    teacher = [p.detach().clone() for p in trainer.algorithm.teacher.parameters()]
    for _ in range(4):  # the wait: steps 0-3
        trainer.train_one_step()
        trainer.step += 1
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in student.items())
    assert any(not torch.equal(a, b) for a, b in zip(teacher, trainer.algorithm.teacher.parameters()))
    trainer.train_one_step()  # step 4: the student learns
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in student.items())
    assert trainer.algorithm.uda.cfg.mask_sharpened  # the teacher's mask follows the port


def test_mpl_resume_is_exact(tmp_path):
    first = make_trainer(tmp_path, "mpl", 6, "--set", "algo.student_wait=0.2")
    run_steps(first, 3)
    first.save()
    expected = [o.loss.item() for o in run_steps(first, 3)]
    resumed = make_trainer(tmp_path, "mpl", 6, "--set", "algo.student_wait=0.2")
    torch.manual_seed(7)
    resumed.load(first.run_dir / "checkpoints" / "last.pt")
    assert [o.loss.item() for o in run_steps(resumed, 3)] == expected
    assert all(torch.equal(p, q) for p, q in zip(first.algorithm.teacher.parameters(), resumed.algorithm.teacher.parameters()))


def test_mpl_reward_is_the_feedback_minus_its_moving_average():
    """Issue 16: the official MPL code subtracts a moving average of h (decay 0.99, updated with h
    first); it is part of the teacher optimiser's state, so resume keeps it."""
    cfg = TrainConfig(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, steps=10)
    opt = TeacherOptimiser(nn.Linear(2, 2), cfg)
    rewards = [float(opt.mpl_reward(torch.tensor(h))) for h in (2.0, 2.0, -1.0)]
    b1 = 0.01 * 2.0
    b2 = 0.99 * b1 + 0.01 * 2.0
    b3 = 0.99 * b2 + 0.01 * -1.0
    assert rewards == pytest.approx([2.0 - b1, 2.0 - b2, -1.0 - b3])
    resumed = TeacherOptimiser(nn.Linear(2, 2), cfg)
    resumed.load_state_dict(opt.state_dict())
    assert float(resumed.mpl_reward(torch.tensor(0.5))) == pytest.approx(0.5 - (0.99 * b3 + 0.005))
    none = TeacherOptimiser(nn.Linear(2, 2), cfg, mpl_baseline_decay=1.0)
    assert [float(none.mpl_reward(torch.tensor(h))) for h in (2.0, -1.0)] == [2.0, -1.0]
