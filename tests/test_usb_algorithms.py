"""Pi-Model, Dash, AdaMatch, DeFixMatch, MixMatch, ReMixMatch, SimMatch, CoMatch and VAT (issue 29):
losses computed by hand on a tiny batch, unsupervised gradients that reach the trained side only, and
AdaMatch's statistics and SimMatch's bank kept over the global batch under two gloo processes. Exact
resume is in test_baselines.py; training two steps (image and text) is covered for every algorithm in
test_trainer.py and test_text_train.py; the losses against USB's own code in test_usb_reference.py.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ssl_kd.algorithm import Batch
from ssl_kd.algorithms.adamatch import AdaMatch, AdaMatchConfig
from ssl_kd.algorithms.comatch import graph_contrastive_loss, pseudo_label_graph
from ssl_kd.algorithms.dash import Dash, DashConfig
from ssl_kd.algorithms.defixmatch import DeFixMatch, DeFixMatchConfig
from ssl_kd.algorithms.mixmatch import MixMatch, MixMatchConfig
from ssl_kd.algorithms.pimodel import PiModel, PiModelConfig
from ssl_kd.algorithms.remixmatch import ReMixMatch, ReMixMatchConfig, rotate_quarters
from ssl_kd.algorithms.simmatch import SimMatch, SimMatchConfig, unfold_and_aggregate
from ssl_kd.algorithms.vat import VAT, VATConfig, entropy, kl_from_logits, l2_normalise
from ssl_kd.align import PredictionAlign
from ssl_kd.components import RelativeThresholder
from ssl_kd.errors import ConfigError
from ssl_kd.trainer import distributed
from ssl_kd.augment.views import make_view
from tests.conftest import make_trainer, run_steps
from tests.test_baselines import SUP, tiny
from tests.test_distributed import _free_port

log = math.log
# tiny()'s unlabelled weak views: probabilities (0.8, 0.1, 0.1) and (0.25, 0.5, 0.25); strong: uniform and (0.2, 0.6, 0.2)
WEAK = [[0.8, 0.1, 0.1], [0.25, 0.5, 0.25]]
STRONG = [[1 / 3] * 3, [0.2, 0.6, 0.2]]


def ce(target: list[float], probs: list[float]) -> float:
    return -sum(t * log(p) for t, p in zip(target, probs) if t > 0)


def test_pimodel_loss_by_hand():
    algo, batch = tiny(PiModel, PiModelConfig(lambda_u=10.0, rampup_fraction=0.5))
    batch.x_u["weak_2"] = batch.x_u["strong"]  # the second weak draw: uniform and (0.2, 0.6, 0.2)
    algo.step = 2  # ramp 2 / (0.5 * 10) = 0.4
    out = algo.train_step(batch)
    sq = [sum((p - q) ** 2 for p, q in zip(a, b)) / 3 for a, b in zip(WEAK, STRONG)]
    assert out.loss.item() == pytest.approx(SUP + 10.0 * 0.4 * sum(sq) / 2)
    assert out.logs["train/unsup_weight"] == pytest.approx(4.0)


def test_pimodel_trains_the_first_view_only():
    algo, batch = tiny(PiModel, PiModelConfig())
    a = batch.x_u["weak"].clone().requires_grad_(True)
    b = batch.x_u["strong"].clone().requires_grad_(True)
    algo.consistency(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad is None


def dash_at(step: int, rho_hat: float, **cfg: float) -> tuple[Dash, Batch]:
    algo, batch = tiny(Dash, DashConfig(warmup_fraction=0.1, update_fraction=0.2, **cfg))  # 10 steps: warm-up 1, update every 2
    algo.rho_hat, algo.step = rho_hat, step
    return algo, batch


def test_dash_threshold_shrinks_by_gamma_per_update_down_to_rho_min():
    algo, _ = dash_at(1, 2.0, gamma=2.0, c=1.0, rho_min=0.3)
    assert algo.rho() == 2.0 and not algo.hard_labels()
    algo.step = 3  # (3 - 1) // 2 = 1 update
    assert algo.rho() == 1.0
    algo.step = 7  # 3 updates: 0.25 is below the floor
    assert algo.rho() == 0.3 and algo.hard_labels()


def test_dash_loss_by_hand_with_soft_then_hard_targets():
    # soft targets: softmax(logits / 0.5) of the weak views, i.e. p^2 renormalised
    sharp = [[p * p / sum(q * q for q in row) for p in row] for row in WEAK]
    own = [ce(t, p) for t, p in zip(sharp, WEAK)]  # the weak view's loss against its own target decides the mask
    rho = (own[0] + own[1]) / 2  # between the two: only the first passes
    algo, batch = dash_at(1, rho / 1.0001)
    out = algo.train_step(batch)
    assert out.mask.tolist() == [1.0, 0.0]
    assert out.loss.item() == pytest.approx(SUP + ce(sharp[0], STRONG[0]) / 2)
    algo, batch = dash_at(9, 0.01, rho_min=0.3)  # at the floor: hard labels, own loss -log p_max; 0.3 > -log 0.8
    out = algo.train_step(batch)
    assert out.mask.tolist() == [1.0, 0.0]
    assert out.loss.item() == pytest.approx(SUP + log(3) / 2)


def test_dash_warms_up_supervised_then_measures_rho_hat_on_the_labelled_split(tmp_path):
    trainer = make_trainer(tmp_path, "dash", 20, "--set", "algo.warmup_fraction=0.1")
    algo = trainer.algorithm
    warm = run_steps(trainer, 2)  # two warm-up steps: the labelled loss alone, nothing measured yet
    assert algo.rho_hat is None and all(set(o.logs) == {"loss/sup"} and o.mask is None for o in warm)
    data = trainer.data
    trainer.model.eval()
    with torch.no_grad():
        logits, _ = trainer.model(make_view("none", data.train_x[data.labelled_idx], data.policy))
    trainer.model.train()
    expected = torch.nn.functional.cross_entropy(logits, data.train_y[data.labelled_idx]).item()
    out = run_steps(trainer, 1)[0]
    assert algo.rho_hat == pytest.approx(expected, rel=1e-5)
    assert out.logs["train/rho"] == pytest.approx(1.0001 * expected, rel=1e-5) and out.mask is not None


def test_dash_rejects_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="gamma"):
        make_trainer(tmp_path, "dash", 4, "--set", "algo.gamma=1.0")


def test_relative_threshold_is_tau_times_the_mean_labelled_confidence():
    th = RelativeThresholder(0.9, 3)
    th.observe_labelled(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]))  # mean confidence 0.6: cutoff 0.54
    assert th.cutoff.item() == pytest.approx(0.54)
    assert th.mask(torch.tensor([[0.55, 0.4, 0.05], [0.5, 0.3, 0.2]])).tolist() == [1.0, 0.0]


def test_prediction_alignment_targets_the_labelled_predictions_ema():
    da = PredictionAlign(2, momentum=0.5)
    da.update_target(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))  # target 0.5 * (0.5, 0.5) + 0.5 * (1, 0) = (0.75, 0.25)
    torch.testing.assert_close(da.target, torch.tensor([0.75, 0.25]))
    aligned = da(torch.tensor([[0.5, 0.5]]))  # p_model = the first batch's mean (0.5, 0.5)
    torch.testing.assert_close(aligned, torch.tensor([[0.75, 0.25]]), rtol=1e-5, atol=1e-6)
    state = da.state_dict()
    other = PredictionAlign(2, momentum=0.5)
    other.load_state_dict(state)
    assert torch.equal(other.target, da.target) and torch.equal(other.p_model, da.p_model)


def test_adamatch_loss_by_hand():
    algo, batch = tiny(AdaMatch, AdaMatchConfig(threshold=0.9, stats_ema=0.0))
    out = algo.train_step(batch)
    # labelled probabilities (1/2, 1/4, 1/4) and uniform: target (the EMA at momentum 0) their mean (5/12, 7/24, 7/24);
    # p_model the unlabelled mean (0.525, 0.3, 0.175); cutoff 0.9 * mean(1/2, 1/3) = 0.375
    target, p_model = [5 / 12, 7 / 24, 7 / 24], [0.525, 0.3, 0.175]
    aligned = []
    for row in WEAK:
        r = [p * (t + 1e-6) / (m + 1e-6) for p, t, m in zip(row, target, p_model)]
        aligned.append([v / sum(r) for v in r])
    assert algo.thresholder.cutoff.item() == pytest.approx(0.375)
    conf = [max(r) for r in aligned]
    expected_mask = [float(c >= 0.375) for c in conf]
    assert out.mask.tolist() == expected_mask and expected_mask == [1.0, 1.0]
    pseudo = [r.index(max(r)) for r in aligned]
    assert out.pseudo_labels.tolist() == pseudo == [0, 1]
    assert out.loss.item() == pytest.approx(SUP + (log(3) - log(0.6)) / 2, rel=1e-5)


def test_defixmatch_loss_by_hand():
    algo, batch = tiny(DeFixMatch, DeFixMatchConfig(threshold=0.45, lambda_u=0.5))
    # labelled strong views: (0.2, 0.6, 0.2) for the first (label 0), uniform for the second (label 2)
    batch.x_l["strong"] = torch.tensor([[0, log(3), 0], [0, 0, 0]])
    out = algo.train_step(batch)
    sup = (SUP + (-log(0.2) + log(3)) / 2) / 2
    unsup = (log(3) - log(0.6)) / 2  # both weak views pass 0.45 (0.8 and 0.5): labels 0 and 1
    anti = -log(0.2) / 2  # labelled weak views: (1/2, 1/4, 1/4) passes as class 0 (its strong view gives 0.2), uniform does not
    assert out.loss.item() == pytest.approx(sup + 0.5 * (unsup - anti))
    assert out.logs["loss/anti_unsup"].item() == pytest.approx(anti)


def test_mixmatch_loss_by_hand():
    algo, batch = tiny(MixMatch, MixMatchConfig(temperature=0.5, lambda_u=100.0, rampup_fraction=0.5))
    batch.x_u["weak_2"] = batch.x_u["strong"]  # the second weak draw
    algo.step = 1  # ramp 1 / 5
    algo.draw_mixup = lambda n, device: (0.75, torch.tensor([1, 0, 2, 3, 5, 4]))  # swap the labelled pair and the second guesses
    out = algo.train_step(batch)
    # guesses: mean of the two views' probabilities, squared and renormalised
    mean = [[(a + b) / 2 for a, b in zip(w, s)] for w, s in zip(WEAK, STRONG)]
    guess = [[v * v / sum(u * u for u in row) for v in row] for row in mean]
    onehot = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    inputs = [[0.5, 0.25, 0.25], [1 / 3] * 3, WEAK[0], WEAK[1], STRONG[0], STRONG[1]]  # LogitsAreInputs: x are logits
    logits_in = [[log(p) for p in row] for row in inputs]
    targets = onehot + guess + guess
    perm = [1, 0, 2, 3, 5, 4]
    mixed_x = [[0.75 * a + 0.25 * b for a, b in zip(logits_in[i], logits_in[perm[i]])] for i in range(6)]
    mixed_y = [[0.75 * a + 0.25 * b for a, b in zip(targets[i], targets[perm[i]])] for i in range(6)]
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in mixed_x]
    sup = sum(ce(t, p) for t, p in zip(mixed_y[:2], probs[:2])) / 2
    unsup = sum(sum((p - t) ** 2 for p, t in zip(pr, ty)) / 3 for pr, ty in zip(probs[2:], mixed_y[2:])) / 4
    assert out.loss.item() == pytest.approx(sup + 100.0 * 0.2 * unsup, rel=1e-5)
    assert out.pseudo_labels.tolist() == [0, 1]


def test_mixmatch_lambda_is_folded_above_one_half():
    algo, _ = tiny(MixMatch, MixMatchConfig(alpha=0.5))
    torch.manual_seed(0)
    draws = [algo.draw_mixup(4, torch.device("cpu")) for _ in range(50)]
    assert all(0.5 <= lam <= 1.0 for lam, _ in draws) and len({lam for lam, _ in draws}) > 1
    assert all(sorted(p.tolist()) == [0, 1, 2, 3] for _, p in draws)


class _Linear(torch.nn.Module):
    """logits = W x (no bias), features = x: a network whose KL curvature is known in closed form."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(1) @ self.w.T, x.flatten(1)


def test_vat_power_iteration_finds_the_curvature_direction():
    """For logits W x, KL(p(x) || p(x + d)) ~ d^T W^T (diag q - q q^T) W d / 2, so one power iteration
    from d gives the direction of W^T (diag q - q q^T) W d: compare with that closed form."""
    torch.manual_seed(0)
    w = torch.randn(3, 5, dtype=torch.float64)
    algo, _ = tiny(VAT, VATConfig(eps=2.0, xi=1e-4))
    net = _Linear(w)
    x, d = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    r = algo.adversarial_perturbation(net, x, d)
    assert net.w.grad is None  # gradients with respect to d only
    torch.testing.assert_close(r.norm(dim=1), torch.full((4,), 2.0, dtype=torch.float64))
    q = torch.softmax(x @ w.T, dim=-1)
    expected = []
    for qi, di in zip(q, l2_normalise(d)):
        h = w.T @ (torch.diag(qi) - torch.outer(qi, qi)) @ w
        expected.append(h @ di)
    torch.testing.assert_close(r, 2.0 * l2_normalise(torch.stack(expected)), rtol=1e-3, atol=1e-4)


def test_vat_loss_by_hand_and_the_adversarial_direction_beats_a_random_one():
    torch.manual_seed(1)
    w = torch.randn(3, 5, dtype=torch.float64)
    algo, _ = tiny(VAT, VATConfig(eps=0.5, xi=1e-4))
    net = _Linear(w)
    x = torch.randn(8, 5, dtype=torch.float64)
    r = algo.adversarial_perturbation(net, x, torch.randn_like(x))
    q_logits = x @ w.T
    random_r = 0.5 * l2_normalise(torch.randn_like(x))
    assert kl_from_logits(q_logits, (x + r) @ w.T) > kl_from_logits(q_logits, (x + random_r) @ w.T)
    p = torch.softmax(q_logits, -1)
    assert entropy(q_logits).item() == pytest.approx(-(p * p.log()).sum(-1).mean().item())
    assert kl_from_logits(q_logits, q_logits).item() == pytest.approx(0.0, abs=1e-12)


def test_vat_and_mixmatch_refuse_text_and_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="eps"):
        make_trainer(tmp_path / "v", "vat", 4, "--set", "algo.eps=-1")
    with pytest.raises(ConfigError, match="alpha"):
        make_trainer(tmp_path / "m", "mixmatch", 4, "--set", "algo.alpha=0")
    assert VAT.modalities == ("image",) and MixMatch.modalities == ("image",)


# ----- AdaMatch's statistics under torchrun: the global batch, not each rank's half ----------------------------

def _adamatch_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)


def _adamatch_statistics(lx: torch.Tensor, luw: torch.Tensor, lus: torch.Tensor) -> dict:
    algo, _ = tiny(AdaMatch, AdaMatchConfig(threshold=0.7, stats_ema=0.5))
    algo.ctx.num_classes = 4
    algo.aligner = PredictionAlign(4, 0.5)
    algo.thresholder = RelativeThresholder(0.7, 4)
    for _ in range(2):
        algo.unsup_loss(lx, luw, lus)
    _, pseudo, mask = algo.unsup_loss(lx, luw, lus)
    return {"target": algo.aligner.target, "p_model": algo.aligner.p_model, "cutoff": algo.thresholder.cutoff,
            "pseudo": pseudo, "mask": mask}


def _adamatch_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_from_env(torch.device("cpu"), timeout_s=30)
    part = slice(4 * rank, 4 * rank + 4)
    torch.save(_adamatch_statistics(*(t[part] for t in _adamatch_batch())), f"{out}/{rank}.pt")
    os._exit(0)  # no gloo teardown (see test_distributed)


def test_adamatch_two_processes_keep_the_global_batch_statistics(tmp_path: Path) -> None:
    one = _adamatch_statistics(*_adamatch_batch())
    mp.spawn(_adamatch_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        res = torch.load(tmp_path / f"{rank}.pt", weights_only=False)
        for key in ("target", "p_model", "cutoff"):
            torch.testing.assert_close(res[key], one[key])
        part = slice(4 * rank, 4 * rank + 4)
        assert torch.equal(res["pseudo"], one["pseudo"][part]) and torch.equal(res["mask"], one["mask"][part])


# ----- ReMixMatch ---------------------------------------------------------------------------------------------

def test_rotate_quarters_turns_each_image_by_its_own_count():
    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None].repeat(3, 1, 1, 1)
    out = rotate_quarters(img, torch.tensor([0, 1, 2]))
    assert out[0, 0].tolist() == [[1, 2], [3, 4]]
    assert out[1, 0].tolist() == [[2, 4], [1, 3]]  # one quarter turn counter-clockwise (torch.rot90)
    assert out[2, 0].tolist() == [[4, 3], [2, 1]]


def test_remixmatch_anchor_is_aligned_to_the_labelled_marginal_then_sharpened():
    from types import SimpleNamespace

    from ssl_kd.algorithm import Context
    from tests.test_baselines import LogitsAreInputs

    # labelled marginal (3/4, 1/4, 0); the first batch's mean prediction is p_model
    data = SimpleNamespace(unlabelled_idx=torch.arange(4), train_y=torch.tensor([0, 0, 0, 1]), labelled_idx=torch.arange(4),
                           modality="image", name="tiny", task="classification", is_regression=False)
    ctx = Context(num_classes=3, total_steps=10, device=torch.device("cpu"), data=data, train_cfg=None)
    algo = ReMixMatch(LogitsAreInputs(), ReMixMatchConfig(temperature=0.5), ctx)
    weak = torch.tensor([[log(8), 0.0, 0.0], [0.0, log(2), 0.0]])  # (0.8, 0.1, 0.1) and (0.25, 0.5, 0.25)
    got = algo.anchor(weak)
    p_model = [0.525, 0.3, 0.175]
    target = [0.75, 0.25, 0.0]
    expected = []
    for row in WEAK:
        a = [p * (t + 1e-6) / (m + 1e-6) for p, t, m in zip(row, target, p_model)]
        a = [v / sum(a) for v in a]
        s = [v * v for v in a]
        expected.append([v / sum(s) for v in s])
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_remixmatch_trains_its_rotation_head_and_ramps_the_unlabelled_terms(tmp_path):
    trainer = make_trainer(tmp_path, "remixmatch", 128)  # ramp over 128 / 64 = 2 steps
    head = trainer.model.rotation.weight.detach().clone()
    outs = run_steps(trainer, 3)
    assert [o.logs["train/unsup_ramp"] for o in outs] == [0.0, 0.5, 1.0]
    assert all(float(o.logs[k]) > 0 for o in outs for k in ("loss/unsup", "loss/pre_mixup", "loss/rotation"))
    assert not torch.equal(head, trainer.model.rotation.weight)


# ----- SimMatch -----------------------------------------------------------------------------------------------

def test_simmatch_unfolding_and_aggregation_by_hand():
    # two bank entries labelled 0 and 1; similarities giving softmax (3/4, 1/4) at T 1
    sim_logits = torch.tensor([[log(3), 0.0]])
    probs = torch.tensor([[0.2, 0.8]])
    unfolded, aggregated = unfold_and_aggregate(sim_logits, probs, torch.tensor([0, 1]), temperature=1.0, alpha=0.9)
    # unfolding: (3/4 * 0.2, 1/4 * 0.8) = (0.15, 0.2), renormalised; aggregation: 0.9 p + 0.1 (3/4, 1/4)
    torch.testing.assert_close(unfolded, torch.tensor([[0.15 / 0.35, 0.2 / 0.35]]))
    torch.testing.assert_close(aggregated, torch.tensor([[0.9 * 0.2 + 0.075, 0.9 * 0.8 + 0.025]]))


def test_simmatch_bank_moves_towards_the_labelled_embeddings(tmp_path):
    trainer = make_trainer(tmp_path, "simmatch", 6)
    algo = trainer.algorithm
    assert algo.bank.shape == (trainer.data.labelled_idx.numel(), 128)
    idx = trainer.data.labelled_idx[:2]
    pos = algo.position[idx]
    old = algo.bank[pos].clone()
    emb = torch.nn.functional.normalize(torch.randn(2, 128), dim=1)
    algo.update_bank(emb, idx)
    torch.testing.assert_close(algo.bank[pos], torch.nn.functional.normalize(0.7 * old + 0.3 * emb, dim=1))
    before = algo.bank.clone()
    run_steps(trainer, 1)
    assert torch.allclose(algo.bank.norm(dim=1), torch.ones(algo.bank.shape[0]), atol=1e-5)
    assert not torch.equal(before, algo.bank)


def test_simmatch_instance_loss_waits_for_the_first_epoch(tmp_path):
    trainer = make_trainer(tmp_path, "simmatch", 10, "--set", "algo.warmup_fraction=0.2")
    outs = run_steps(trainer, 3)
    assert [float(o.logs["loss/instance"]) for o in outs][:2] == [0.0, 0.0] and float(outs[2].logs["loss/instance"]) > 0


def _bank_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_from_env(torch.device("cpu"), timeout_s=30)
    algo = _bank_algorithm()
    emb, idx = _bank_batch()
    algo.update_bank(emb[2 * rank : 2 * rank + 2], idx[2 * rank : 2 * rank + 2])
    torch.save(algo.bank, f"{out}/{rank}.pt")
    os._exit(0)  # no gloo teardown (see test_distributed)


def _bank_algorithm() -> SimMatch:
    from types import SimpleNamespace

    from ssl_kd.algorithm import Context
    from tests.test_baselines import LogitsAreInputs

    torch.manual_seed(0)
    data = SimpleNamespace(unlabelled_idx=torch.arange(8), train_y=torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), labelled_idx=torch.arange(6),
                           modality="image", name="tiny", task="classification", is_regression=False)
    return SimMatch(LogitsAreInputs(), SimMatchConfig(), Context(num_classes=3, total_steps=10, device=torch.device("cpu"),
                                                                  data=data, train_cfg=None))


def _bank_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.nn.functional.normalize(torch.randn(4, 128, generator=g), dim=1), torch.tensor([5, 0, 3, 1])


def test_simmatch_bank_is_the_same_on_every_process(tmp_path: Path) -> None:
    one = _bank_algorithm()
    one.update_bank(*_bank_batch())
    mp.spawn(_bank_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"{rank}.pt"), one.bank)


# ----- CoMatch ------------------------------------------------------------------------------------------------

def test_comatch_pseudo_label_graph_and_contrastive_loss_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])
    q = pseudo_label_graph(probs, cutoff=0.7)
    # q0.q1 = 0.74 kept, q0.q2 = 0.18 and q1.q2 = 0.26 removed; self-loops 1
    torch.testing.assert_close(q, torch.tensor([[1 / 1.74, 0.74 / 1.74, 0.0], [0.74 / 1.74, 1 / 1.74, 0.0], [0.0, 0.0, 1.0]]))
    z = torch.eye(3)
    # similarities z z^T / 0.5: 2 on the diagonal, 0 elsewhere -> softmax rows (e^2, 1, 1) / (e^2 + 2)
    row = [math.exp(2) / (math.exp(2) + 2), 1 / (math.exp(2) + 2)]
    expected = (-(1 / 1.74 * log(row[0]) + 0.74 / 1.74 * log(row[1])) * 2 - log(row[0])) / 3
    assert graph_contrastive_loss(z, z, q, 0.5).item() == pytest.approx(expected, rel=1e-5)


def test_comatch_queue_wraps_and_smooths_with_its_neighbours(tmp_path):
    trainer = make_trainer(tmp_path, "comatch", 6, "--set", "algo.queue_batches=1")
    algo = trainer.algorithm
    size = algo.queue_z.shape[0]
    z = torch.nn.functional.normalize(torch.randn(size + 3, 64), dim=1)
    p = torch.softmax(torch.randn(size + 3, 10), dim=1)
    algo.enqueue(z[:size], p[:size])
    algo.enqueue(z[size:], p[size:])  # overwrites the three oldest entries
    assert algo.filled == size and algo.ptr == 3
    torch.testing.assert_close(algo.queue_z[:3], z[size:])
    torch.testing.assert_close(algo.queue_z[3:], z[3:size])
    own = torch.tensor([[1.0] + [0.0] * 9])
    sim = torch.softmax(z[:1] @ algo.queue_z.T / 0.2, dim=1)
    torch.testing.assert_close(algo.smoothed(z[:1], own), 0.9 * own + 0.1 * sim @ algo.queue_p)
