"""InfluenceWeighter: weights detached, bounded, ones in warm-up; maps; schedules; exact resume."""
import copy

import pytest
import torch
from torch import nn

from ssl_kd.errors import ConfigError
from ssl_kd.influence import InfluenceConfig, InfluenceError, InfluenceWeighter
from ssl_kd.influence.weights import exp_minmax_weights, robust_spread, sigmoid_weights

D, C, B = 6, 4, 32


def batch(seed, n=B, grad=False):
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(n, D, generator=gen).relu().requires_grad_(grad)
    logits = torch.randn(n, C, generator=gen).requires_grad_(grad)
    y = torch.randint(0, C, (n,), generator=gen)
    return f, logits, y


def head():
    torch.manual_seed(0)
    return nn.Linear(D, C)


def refreshed(cfg, step=0):
    w = InfluenceWeighter(cfg)
    f, _, y = batch(100, n=64)
    w.refresh(head(), f, y, batch(101, n=128)[0], step)
    return w


def test_weights_detached_bounded_and_ones_in_warmup():
    cfg = InfluenceConfig(warmup_steps=10, min_weight=0.2, max_weight=3.0, temperature=0.05)
    w = refreshed(cfg, step=10)
    f, logits, y = batch(1, grad=True)
    warm = w.weights(f, logits, y, step=9)
    assert torch.equal(warm, torch.ones(B)) and not warm.requires_grad
    out = w.weights(f, logits, y, step=10)
    assert not out.requires_grad and out.grad_fn is None
    assert out.min() >= 0.2 and out.max() <= 3.0
    assert not torch.allclose(out, out[0].expand_as(out))


def test_renormalised_to_mean_one_and_helpful_weigh_more():
    w = refreshed(InfluenceConfig(max_weight=100.0))
    f, logits, y = batch(2)
    scores = w.scores(f, logits, y)
    out = w.weights(f, logits, y, step=0)
    assert float(out.mean()) == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(torch.argsort(out), torch.argsort(-scores))  # monotone: I < 0 helps


def test_maps_are_scale_free_and_bounded():
    s = torch.randn(100)
    torch.testing.assert_close(sigmoid_weights(s, s, 1.0), sigmoid_weights(1e-6 * s, 1e-6 * s, 1.0))
    w = exp_minmax_weights(s, s)
    assert float(w.min()) == pytest.approx(torch.e**-1) and float(w.max()) == pytest.approx(torch.e)
    assert int(torch.argmax(w)) == int(torch.argmin(s))
    flat = torch.zeros(5)
    torch.testing.assert_close(sigmoid_weights(flat, flat, 1.0), torch.full((5,), 0.5))
    torch.testing.assert_close(exp_minmax_weights(flat, flat), torch.ones(5))


def test_schedules_say_when_to_refresh():
    periodic = refreshed(InfluenceConfig(schedule="periodic", refresh_every=5, warmup_steps=3), step=3)
    assert [periodic.needs_refresh(s) for s in (2, 4, 7, 8)] == [False, False, False, True]
    online = InfluenceWeighter(InfluenceConfig(schedule="online"))
    assert online.needs_refresh(0) and online.needs_refresh(1)
    assert not InfluenceWeighter(InfluenceConfig(schedule="static")).needs_refresh(0)
    fresh = InfluenceWeighter(InfluenceConfig(warmup_steps=2))
    assert not fresh.needs_refresh(1) and fresh.needs_refresh(2)


def test_static_table_looks_up_by_index():
    w = InfluenceWeighter(InfluenceConfig(schedule="static", renormalise=False))
    ft, _, yt = batch(3, n=50)
    fv, _, yv = batch(4, n=20)
    idx = torch.arange(100, 150)
    scores = w.fit_static(head(), fv, yv, ft, yt, idx)
    f, logits, _ = batch(5, n=4)  # ignored: logits and features come from the table
    rows = torch.tensor([0, 49, 20, 0])
    out = w.weights(f, logits, yt[rows], step=0, idx=rows + 100)
    assert out[0] == out[3]
    assert (out[0] > out[1]) == (scores[0] < scores[49])
    # the table scores the target the loss uses now, not the one given to fit_static
    other = (yt[rows] + 1) % C
    rescored = w.weights(f, logits, other, step=0, idx=rows + 100)
    table_logits = head()(ft[rows]).detach()
    torch.testing.assert_close(w.static_scores(rows + 100, other), w.scores(ft[rows], table_logits, other))
    assert not torch.allclose(rescored, out)
    with pytest.raises(InfluenceError, match="did not score"):
        w.weights(f, logits, other, step=0, idx=torch.tensor([3]))
    with pytest.raises(InfluenceError, match="pass idx"):
        w.weights(f, logits, other, step=0)


def test_ema_smooths_per_index():
    cfg = InfluenceConfig(ema=0.9, renormalise=False)
    w = refreshed(cfg)
    f, logits, y = batch(6, n=4)
    idx = torch.tensor([0, 1, 2, 3])
    first = w.weights(f, logits, y, 0, idx)
    raw = copy.deepcopy(w)
    f2, logits2, y2 = batch(7, n=4)
    second = w.weights(f2, logits2, y2, 1, idx)
    raw.cfg = InfluenceConfig(ema=0.0, renormalise=False)
    unsmoothed = raw.weights(f2, logits2, y2, 1, idx)
    torch.testing.assert_close(second, 0.9 * first + 0.1 * unsmoothed)
    with pytest.raises(InfluenceError, match="pass idx"):
        w.weights(f2, logits2, y2, 1)


def test_state_dict_resumes_exactly():
    cfg = InfluenceConfig(ema=0.5, accumulate=True)
    w = refreshed(cfg)
    for step in range(3):  # fill the reference scores, the EMA and accumulation tables
        f, logits, y = batch(10 + step)
        w.weights(f, logits, y, step, idx=torch.arange(B) + step)
    resumed = InfluenceWeighter(cfg)
    resumed.load_state_dict(copy.deepcopy(w.state_dict()))
    f, logits, y = batch(20)
    idx = torch.arange(B)
    assert torch.equal(w.weights(f, logits, y, 5, idx), resumed.weights(f, logits, y, 5, idx))
    assert resumed.last_refresh == w.last_refresh and resumed.damping == w.damping
    state = w.state_dict()
    del state["acc_sum"]
    with pytest.raises(InfluenceError, match="different version"):
        InfluenceWeighter(cfg).load_state_dict(state)


def test_each_solve_sets_its_own_scale():
    """The map's scale comes from the first batch scored after a solve, so a solve whose scores
    are 1000x larger gives the same weights, and a refresh forgets the previous scale."""
    cfg = InfluenceConfig(renormalise=False)
    w = refreshed(cfg)
    f, logits, y = batch(30)
    first = w.weights(f, logits, y, step=0)
    torch.testing.assert_close(w.reference, w.scores(f, logits, y))
    scaled = copy.deepcopy(w)
    scaled.solution = 1000 * scaled.solution
    scaled.reference = None  # as after a refresh
    torch.testing.assert_close(scaled.weights(f, logits, y, step=0), first)
    f2, logits2, y2 = batch(31)
    later = w.weights(f2, logits2, y2, step=1)  # same solve: the first batch's scale is kept
    expected = torch.sigmoid(-w.scores(f2, logits2, y2) / (robust_spread(w.scores(f, logits, y))))
    torch.testing.assert_close(later, expected)
    w.refresh(head(), *batch(100, n=64)[::2], batch(101, n=128)[0], 2)
    assert w.reference is None and w.previous is not None


def test_accumulation_averages_visits_and_restarts_on_a_new_target():
    cfg = InfluenceConfig(accumulate=True, accumulate_prior=1.0, renormalise=False)
    w = refreshed(cfg)
    f, logits, y = batch(40, n=4)
    idx = torch.tensor([7, 8, 9, 10])
    w.weights(f, logits, y, 0, idx)
    spread = robust_spread(w.reference)
    z1 = w.scores(f, logits, y) / spread
    torch.testing.assert_close(w.acc_sum[idx] / (w.acc_count[idx] + 1), z1 / 2)
    f2, logits2, _ = batch(41, n=4)
    y2 = y.clone()
    y2[0] = (y[0] + 1) % C  # example 7 gets a new pseudo-label: its running mean restarts
    out = w.weights(f2, logits2, y2, 1, idx)
    z2 = w.scores(f2, logits2, y2) / spread
    expected = torch.cat([z2[:1] / 2, (z1[1:] + z2[1:]) / 3])
    torch.testing.assert_close(out, torch.sigmoid(-expected / robust_spread(w.reference / spread)))
    assert w.acc_count[idx].tolist() == [1.0, 2.0, 2.0, 2.0]
    with pytest.raises(InfluenceError, match="pass idx"):
        w.weights(f2, logits2, y2, 1)


def test_tempered_soft_targets_are_scored():
    w = refreshed(InfluenceConfig(tau=4.0))
    f, logits, _ = batch(8)
    q = torch.softmax(torch.randn(B, C) / 4.0, dim=1)
    assert w.weights(f, logits, q, step=0).shape == (B,)


def test_errors_say_what_to_fix():
    with pytest.raises(ConfigError, match="schedule"):
        InfluenceConfig(schedule="sometimes")
    with pytest.raises(ConfigError, match="weight_map"):
        InfluenceConfig(weight_map="softmax")
    with pytest.raises(InfluenceError, match="before any refresh"):
        InfluenceWeighter().weights(*batch(9), step=0)
    w = refreshed(InfluenceConfig())
    f, logits, y = batch(9)
    with pytest.raises(InfluenceError, match="features have"):
        w.weights(f[:, :3], logits, y, step=0)


def test_an_index_repeated_in_a_batch_counts_as_several_visits():
    """Issue 16: an indexed assignment kept one of the duplicates (on CUDA an undefined one)."""
    w = refreshed(InfluenceConfig(accumulate=True, accumulate_prior=1.0, renormalise=False))
    f, logits, y = batch(42, n=4)
    y[1] = y[0]
    y[3] = (y[2] + 1) % C  # index 6's first occurrence is superseded by its last, with another target
    idx = torch.tensor([5, 5, 6, 6])
    out = w.weights(f, logits, y, 0, idx)
    z = w.scores(f, logits, y) / robust_spread(w.reference)
    assert w.acc_count[5] == 2 and w.acc_count[6] == 1
    expected = torch.stack([(z[0] + z[1]) / 3, (z[0] + z[1]) / 3, z[2] / 2, z[3] / 2])
    torch.testing.assert_close(out, torch.sigmoid(-expected / robust_spread(w.reference / robust_spread(w.reference))))
    assert w.acc_key[6] == y[3]

