"""The baselines: Mean Teacher, Pseudo-Label, UDA, FlexMatch.

Each unsupervised loss has a gradient with respect to the student and none with respect to any
teacher or target side; FlexMatch's counters use the fixed threshold; state survives a checkpoint
and resume is exact. Training two steps is covered for every algorithm in test_trainer.py.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ssl_kd.algorithm import Batch, Context
from ssl_kd.algorithms.fixmatch import FixMatch, FixMatchConfig
from ssl_kd.algorithms.flexmatch import FlexMatch, FlexMatchConfig, FlexThresholder, convex_mapping
from ssl_kd.algorithms.uda import UDA, UDAConfig
from ssl_kd.augment.views import make_view
from ssl_kd.errors import ConfigError
from ssl_kd.ramps import anneal, linear_rampup, sigmoid_rampup
from ssl_kd.trainer.trainer import Trainer
from tests.conftest import make_trainer, step_losses

BASELINES = ["meanteacher", "pseudolabel", "uda", "flexmatch"]


def student_grad_norm(trainer: Trainer) -> float:
    return float(sum(p.grad.abs().sum() for p in trainer.model.parameters() if p.grad is not None))


def assert_frozen(module: torch.nn.Module) -> None:
    assert all(not p.requires_grad and p.grad is None for p in module.parameters())


# ----- gradients: the student learns from the unlabelled loss, teachers and targets do not ----------------

def test_meanteacher_consistency_has_student_gradient_and_none_for_teacher(tmp_path):
    trainer = make_trainer(tmp_path, "meanteacher")
    step_losses(trainer, 2)  # the teacher is now an average, not a copy
    algo = trainer.algorithm
    batch = trainer.next_batch()
    student_logits, _ = trainer.model(batch.x_u["weak"])
    loss = algo.consistency_loss(student_logits, batch.x_u["weak_2"])
    assert loss > 0
    trainer.model.zero_grad(set_to_none=True)
    loss.backward()
    assert student_grad_norm(trainer) > 0
    assert_frozen(algo.teacher)
    assert_frozen(trainer.ema_model)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(algo.teacher.parameters(), trainer.model.parameters()))


def test_meanteacher_training_step_gradient_includes_the_consistency(tmp_path):
    """The loss train_step hands the trainer moves the student differently with and without the
    consistency term (USB's detached-versus-itself version would give the same gradient)."""
    trainer = make_trainer(tmp_path, "meanteacher", 6, "--set", "algo.rampup_fraction=0")
    step_losses(trainer, 2)
    algo, batch = trainer.algorithm, trainer.next_batch()
    params = [p for p in trainer.model.parameters()]

    def step_grads() -> list[torch.Tensor]:
        out = algo.train_step(batch)
        return list(torch.autograd.grad(out.loss, params))

    with_consistency = step_grads()
    algo.cfg.lambda_u = 0.0
    without = step_grads()
    assert any(not torch.allclose(a, b) for a, b in zip(with_consistency, without))


def test_meanteacher_teacher_is_the_scheduled_ema_of_the_student(tmp_path):
    trainer = make_trainer(tmp_path, "meanteacher", 3000, "--set", "algo.rampup_fraction=0.1")  # ramp-up: 300 steps
    algo = trainer.algorithm
    step_losses(trainer, 1)  # decay min(1 - 1/1, .) = 0: the teacher starts as the student
    for t, s in zip(algo.teacher.parameters(), trainer.model.parameters()):
        torch.testing.assert_close(t, s.detach(), rtol=0, atol=0)
    for step, decay in ((3, 0.75), (200, 0.99), (2000, 0.999)):  # capped early, then ramp-up, then final
        trainer.step = step
        before = [p.clone() for p in algo.teacher.parameters()]
        step_losses(trainer, 1)
        for t, old, s in zip(algo.teacher.parameters(), before, trainer.model.parameters()):
            torch.testing.assert_close(t, old * decay + s.detach() * (1 - decay))


@pytest.mark.parametrize("algo", ["uda", "flexmatch"])
def test_weak_strong_unsup_loss_trains_strong_side_only(tmp_path, algo):
    trainer = make_trainer(tmp_path, algo, 6, "--set", "algo.threshold=0.0")
    batch = trainer.next_batch()
    weak_logits = trainer.model(batch.x_u["weak"])[0].detach().requires_grad_()
    strong_logits, _ = trainer.model(batch.x_u["strong"])
    if algo == "uda":
        loss, _, mask = trainer.algorithm.unsup_loss(weak_logits, strong_logits)
    else:
        loss, _, mask = trainer.algorithm.unsup_loss(weak_logits, strong_logits, batch.idx_u)
    assert mask.sum() > 0 and loss > 0
    trainer.model.zero_grad(set_to_none=True)
    loss.backward()
    assert student_grad_norm(trainer) > 0
    assert weak_logits.grad is None  # the targets are constants
    assert_frozen(trainer.ema_model)


def test_pseudolabel_unsup_loss_trains_the_prediction_not_the_target(tmp_path):
    trainer = make_trainer(tmp_path, "pseudolabel", 6, "--set", "algo.threshold=0.0")
    logits, _ = trainer.model(trainer.next_batch().x_u["weak"])
    loss, pseudo, mask = trainer.algorithm.unsup_loss(logits)
    assert mask.all() and torch.equal(pseudo, logits.argmax(-1)) and loss > 0
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    # d CE / d logits = softmax - onehot(pseudo) / n: a detached target keeps the softmax term
    expected = (torch.softmax(logits, -1) - torch.nn.functional.one_hot(pseudo, logits.shape[1])) / len(logits)
    torch.testing.assert_close(grad, expected.detach())
    loss.backward()
    assert student_grad_norm(trainer) > 0
    assert_frozen(trainer.ema_model)


def test_unsup_loss_is_off_above_any_confidence(tmp_path):
    for algo in ("pseudolabel", "uda"):
        trainer = make_trainer(tmp_path / algo, algo, 6, "--set", "algo.threshold=1.0")  # the largest valid threshold
        out = trainer.algorithm.train_step(trainer.next_batch())
        assert out.logs["loss/unsup"] == 0 and out.mask.sum() == 0


# ----- whole training losses computed by hand on a tiny batch ------------------------------------------------

class LogitsAreInputs(torch.nn.Module):
    """A 'network' whose logits are its inputs, so a batch can be written as logits."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


def tiny(algo_cls, cfg, dataset_size: int = 6):  # type: ignore[no-untyped-def]
    """An algorithm over 3 classes and a 3-class batch written as logits: two labelled examples
    (probabilities 1/2 for their class 0, then 1/3 for class 2) and two unlabelled ones whose weak
    views give probabilities (0.8, 0.1, 0.1) and (0.25, 0.5, 0.25), and strong views uniform and (0.2, 0.6, 0.2)."""
    data = SimpleNamespace(unlabelled_idx=torch.arange(dataset_size), train_y=torch.zeros(dataset_size, dtype=torch.long),
                           modality="image", name="tiny", task="classification", is_regression=False)
    ctx = Context(num_classes=3, total_steps=10, device=torch.device("cpu"), data=data, train_cfg=None)
    log = math.log
    batch = Batch(x_l={"weak": torch.tensor([[log(2), 0, 0], [0, 0, 0]])}, y_l=torch.tensor([0, 2]), idx_l=torch.tensor([0, 1]),
                  x_u={"weak": torch.tensor([[log(8), 0, 0], [0, log(2), 0]]), "strong": torch.tensor([[0, 0, 0], [0, log(3), 0]])},
                  idx_u=torch.tensor([4, 5]))
    return algo_cls(LogitsAreInputs(), cfg, ctx), batch


SUP = (math.log(2) + math.log(3)) / 2  # mean cross-entropy of the two labelled examples


def test_fixmatch_loss_by_hand():
    algo, batch = tiny(FixMatch, FixMatchConfig(threshold=0.6, lambda_u=2.0))
    out = algo.train_step(batch)
    # only the first weak view (confidence 0.8) passes 0.6; its strong view is uniform: CE log 3; mean over 2
    assert out.mask.tolist() == [1.0, 0.0] and out.pseudo_labels.tolist() == [0, 1]
    assert out.loss.item() == pytest.approx(SUP + 2.0 * math.log(3) / 2)


def test_uda_loss_by_hand():
    algo, batch = tiny(UDA, UDAConfig(temperature=0.5, threshold=0.6, lambda_u=1.0))
    out = algo.train_step(batch)
    # the confident weak view (0.8, 0.1, 0.1) sharpened with T 0.5 is (64, 1, 1) / 66; KL to the uniform strong view
    target = [64 / 66, 1 / 66, 1 / 66]
    kl = sum(t * (math.log(t) + math.log(3)) for t in target)
    assert out.mask.tolist() == [1.0, 0.0]
    assert out.loss.item() == pytest.approx(SUP + kl / 2)


def test_uda_mask_on_the_sharpened_confidence_as_mpl_uses_it():
    # weak view (0.8, 0.1, 0.1): raw confidence 0.8 < 0.95, sharpened with T 0.5 64/66 = 0.97 >= 0.95
    for sharpened, expected in ((False, [0.0, 0.0]), (True, [1.0, 0.0])):
        algo, batch = tiny(UDA, UDAConfig(temperature=0.5, threshold=0.95, mask_sharpened=sharpened))
        assert algo.train_step(batch).mask.tolist() == expected


def test_flexmatch_loss_by_hand():
    algo, batch = tiny(FlexMatch, FlexMatchConfig(threshold=0.6, lambda_u=1.0))
    algo.thresholder.predictions[:3] = torch.tensor([0, 0, 1])  # earlier confident predictions
    out = algo.train_step(batch)
    # the batch is recorded first: example 4 (confidence 0.8 >= 0.6) joins class 0, example 5 (0.5) is not counted.
    # sigma = (3, 1, 0), 2 of 6 unused: beta = sigma / 3 = (1, 1/3, 0); thresholds 0.6 * M(beta) = (0.6, 0.12, 0)
    assert algo.thresholder.predictions.tolist() == [0, 0, 1, -1, 0, -1]
    torch.testing.assert_close(algo.thresholder.class_thresholds(), torch.tensor([0.6, 0.12, 0.0]))
    # both pass now (0.8 >= 0.6 for class 0, 0.5 >= 0.12 for class 1): CE log 3 and -log 0.6, mean over 2
    assert out.mask.tolist() == [1.0, 1.0]
    assert out.loss.item() == pytest.approx(SUP + (math.log(3) - math.log(0.6)) / 2)


# ----- FlexMatch: counters, learning effect, thresholds ------------------------------------------------------

def probs_rows(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_flexmatch_counts_only_predictions_above_the_fixed_threshold():
    th = FlexThresholder(0.95, num_classes=3, num_unlabelled=4, dataset_size=6, warmup=True)
    probs = probs_rows([0.97, 0.02, 0.01], [0.10, 0.60, 0.30], [0.02, 0.02, 0.96])
    idx = torch.tensor([0, 1, 5])
    th.update(probs, idx)
    # example 1 passes its class's flexible threshold (0 so far) but is below tau: it is not counted
    assert th.predictions.tolist() == [0, -1, -1, -1, -1, 2]
    assert th.mask(probs).tolist() == [1.0, 1.0, 1.0]
    # a later confident prediction replaces the earlier one; an unconfident one leaves it alone
    th.update(probs_rows([0.01, 0.98, 0.01], [0.50, 0.40, 0.10]), torch.tensor([0, 5]))
    assert th.predictions.tolist() == [1, -1, -1, -1, -1, 2]


def test_flexmatch_learning_effect_warmup_and_mapping():
    th = FlexThresholder(0.9, num_classes=3, num_unlabelled=10, dataset_size=10, warmup=True)
    th.predictions[:4] = torch.tensor([0, 0, 0, 1])  # sigma = (3, 1, 0); 6 examples unused
    torch.testing.assert_close(th.learning_effect(), torch.tensor([3 / 6, 1 / 6, 0.0]))
    th.warmup = False
    torch.testing.assert_close(th.learning_effect(), torch.tensor([1.0, 1 / 3, 0.0]))
    torch.testing.assert_close(th.class_thresholds(), 0.9 * torch.tensor([1.0, (1 / 3) / (2 - 1 / 3), 0.0]))
    assert convex_mapping(torch.tensor(1.0)) == 1.0 and convex_mapping(torch.tensor(0.0)) == 0.0
    # class 0 has threshold 0.9, class 1 ~0.18: the same confidence passes for one and not the other
    assert th.mask(probs_rows([0.5, 0.3, 0.2], [0.3, 0.5, 0.2])).tolist() == [0.0, 1.0]


def test_flexmatch_before_any_confident_prediction_every_threshold_is_zero():
    for warmup in (True, False):
        th = FlexThresholder(0.95, num_classes=4, num_unlabelled=8, dataset_size=8, warmup=warmup)
        assert th.class_thresholds().tolist() == [0.0] * 4


def test_flexmatch_state_checks_its_shape():
    th = FlexThresholder(0.95, num_classes=3, num_unlabelled=4, dataset_size=4, warmup=True)
    with pytest.raises(ValueError, match="predictions of shape"):
        th.load_state_dict({"predictions": torch.zeros(7, dtype=torch.long)})


# ----- checkpoints: state round trip and exact resume ---------------------------------------------------------

def algorithm_state_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        same = algorithm_state_equal(x, y) if isinstance(x, dict) else torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        if not same:
            return False
    return True


def test_flexmatch_state_survives_a_checkpoint(tmp_path):
    first = make_trainer(tmp_path, "flexmatch", 6, "--set", "algo.threshold=0.3")
    step_losses(first, 3)
    predictions = first.algorithm.thresholder.predictions
    assert (predictions >= 0).sum() > 0
    first.save()
    second = make_trainer(tmp_path, "flexmatch", 6, "--set", "algo.threshold=0.3")
    second.load(first.run_dir / "checkpoints" / "last.pt")
    assert torch.equal(second.algorithm.thresholder.predictions, predictions)
    assert torch.equal(second.algorithm.thresholder.class_thresholds(), first.algorithm.thresholder.class_thresholds())


def test_meanteacher_teacher_survives_a_checkpoint(tmp_path):
    first = make_trainer(tmp_path, "meanteacher", 6)
    step_losses(first, 3)
    first.save()
    second = make_trainer(tmp_path, "meanteacher", 6)
    second.load(first.run_dir / "checkpoints" / "last.pt")
    assert algorithm_state_equal(second.algorithm.state_dict(), first.algorithm.state_dict())
    teacher = dict(second.algorithm.teacher.named_parameters())
    assert any(not torch.equal(teacher[n], p) for n, p in first.model.named_parameters())  # a real average
    with pytest.raises(ValueError, match="teacher"):
        second.algorithm.load_state_dict({})


@pytest.mark.parametrize("algo,extra", [("flexmatch", ("--set", "algo.threshold=0.3")), ("meanteacher", ()),
                                        ("pseudolabel", ("--set", "algo.threshold=0.3")), ("uda", ("--set", "algo.tsa=log")),
                                        ("freematch", ()), ("softmatch", ()),
                                        # issue 29's algorithms
                                        ("pimodel", ()), ("dash", ("--set", "algo.warmup_fraction=0.2")),
                                        ("adamatch", ()), ("defixmatch", ("--set", "algo.threshold=0.3")),
                                        ("mixmatch", ()), ("vat", ()), ("remixmatch", ()),
                                        ("simmatch", ("--set", "algo.warmup_fraction=0.2")),
                                        ("comatch", ("--set", "algo.queue_batches=1", "--set", "algo.warmup_fraction=0.2"))])
def test_resume_reproduces_losses_exactly(tmp_path, algo, extra):
    first = make_trainer(tmp_path, algo, 6, *extra)
    step_losses(first, 3)
    first.save()
    expected = step_losses(first, 3)
    resumed = make_trainer(tmp_path, algo, 6, *extra)
    torch.manual_seed(1234)  # the checkpoint's RNG state must win
    resumed.load(first.run_dir / "checkpoints" / "last.pt")
    assert step_losses(resumed, 3) == expected
    assert algorithm_state_equal(resumed.algorithm.state_dict(), first.algorithm.state_dict())


# ----- schedules, UDA's annealing, configuration errors, the second weak view --------------------------------

def test_ramps():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5)) and sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(250, 100) == 1.0 and sigmoid_rampup(0, 0) == 1.0
    assert linear_rampup(40, 80) == 0.5 and linear_rampup(500, 80) == 1.0
    assert anneal("linear", 0.3) == pytest.approx(0.3)
    assert anneal("exp", 1.0) == 1.0 and anneal("exp", 0.0) == pytest.approx(math.exp(-5))
    assert anneal("log", 0.0) == 0.0 and anneal("log", 1.0) == pytest.approx(1 - math.exp(-5))
    with pytest.raises(ConfigError, match="linear, exp, log"):
        anneal("cosine", 0.5)


def test_uda_tsa_releases_examples_the_model_already_fits(tmp_path):
    trainer = make_trainer(tmp_path, "uda", 100, "--set", "algo.tsa=linear")
    algo = trainer.algorithm
    logits = torch.tensor([[4.0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0.0] * 10])  # p(correct) ~0.86 and 0.1
    labels = torch.tensor([0, 0])
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    algo.step = 0  # eta = 1/K = 0.1: only the second example (p = 0.1) is kept
    loss, eta = algo.sup_loss(logits, labels)
    assert eta == pytest.approx(0.1) and loss == pytest.approx(ce[1].item())
    algo.step = 100  # eta = 1: nothing is released
    loss, eta = algo.sup_loss(logits, labels)
    assert eta == pytest.approx(1.0) and loss == pytest.approx(ce.mean().item())


def test_uda_rejects_unknown_tsa_schedule(tmp_path):
    with pytest.raises(ConfigError, match="algo.tsa"):
        make_trainer(tmp_path, "uda", 2, "--set", "algo.tsa=cosine")


def test_numbered_views_are_independent_draws(tmp_path):
    trainer = make_trainer(tmp_path, "meanteacher", 2)
    x = trainer.data.train_x[:16]
    torch.manual_seed(0)
    first, second = make_view("weak", x, trainer.data.policy), make_view("weak_2", x, trainer.data.policy)
    assert first.shape == second.shape and not torch.equal(first, second)
    with pytest.raises(ConfigError, match="weak_2"):
        make_view("stronk_2", x, trainer.data.policy)
