"""Projected multi-layer influence: exact against full.py when nothing is projected, close in rank
with a small projection, right in sign on a convex problem (leave-some-out retraining), and
resumable from its state."""
import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn
from torch.func import jacrev, vmap

from benchmarks.toy import TinyCNN, as_input, digits, fit
from ssl_kd.errors import ConfigError
from ssl_kd.influence import FullConfig, InfluenceError, flip_labels, full_influence
from ssl_kd.influence.full import FlatNetwork, eval_mode, per_example_grads
from ssl_kd.influence.head import HeadLoss
from ssl_kd.influence.projected import GradientProjection, ProjectedConfig, ProjectedInfluence, select_parameters
from ssl_kd.nets.base import Classifier
from ssl_kd.nets.small import cnn_small, digits_net
from ssl_kd.nets.wrn import wrn28_2
from tests.test_influence_full import one_thread  # noqa: F401  (autouse: one CPU thread in this module)
from tests.test_influence_loo import fit_head

TIGHT = FullConfig(cg_tol=1e-12, cg_max_iter=5000, batch_size=64)
MIN_SPEARMAN_SMALL = 0.75  # dim 128 of 394 parameters; measured 0.80-0.83 over projection seeds 0-4


@pytest.fixture(scope="module")
def problem():
    """A BatchNorm CNN (394 parameters in its last block and head) trained briefly, in float64."""
    torch.manual_seed(0)
    x, y = digits()
    x = as_input(x[:140]).double()
    model = fit(TinyCNN(width=4).double(), x[:100], y[:100], steps=60)
    return model, x[:100], y[:100], x[100:], y[100:140]


def exact_damping(model, names, x, fraction, loss):
    """fraction * tr(GGN) / P from dense per-example Jacobians."""
    net = FlatNetwork(model, names)
    with eval_mode(model):
        jac = vmap(jacrev(lambda th, xi: net.logits(th, xi[None])[0]), in_dims=(None, 0))(net.theta, x)
        p = torch.softmax(net.logits(net.theta, x) / loss.tau, 1)
    a = loss.hess_scale * (torch.diag_embed(p) - p[:, :, None] * p[:, None, :])
    return fraction * float(torch.einsum("ncd,ncp,ndp->", a, jac, jac)) / x.shape[0] / net.theta.numel()


@pytest.mark.parametrize("soft", [False, True])
def test_unprojected_equals_full_influence_restricted_to_the_same_parameters(problem, soft):
    model, xt, yt, xv, yv = problem
    loss = HeadLoss(tau=2.0) if soft else HeadLoss()
    targets = torch.softmax(torch.randn(xt.shape[0], 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), 1) if soft else yt
    est = ProjectedInfluence(model, ProjectedConfig(dim=10**6, tau=loss.tau))
    assert est.projection.exact and est.names == ["backbone.3.weight", "backbone.4.weight", "backbone.4.bias",
                                                   "head.weight", "head.bias"]
    est.refresh(xv, yv, xt, targets, step=7)
    assert est.damping == pytest.approx(exact_damping(model, est.names, xt, 0.1, loss), rel=1e-9)
    expected = full_influence(model, xt, targets, xv, yv, dataclasses.replace(TIGHT, damping=est.damping), loss, est.names)
    torch.testing.assert_close(est.scores(xt, targets), expected, rtol=1e-7, atol=1e-10)
    assert est.last_refresh == 7


def test_precomputed_gradients_give_the_same_scores(problem):
    """fit_gradients + scores_from_gradients (per-example gradients) against refresh + scores (JVP)."""
    model, xt, yt, xv, yv = problem
    cfg = ProjectedConfig(dim=96, damping=0.05)
    est, pre = ProjectedInfluence(model, cfg), ProjectedInfluence(model, cfg)
    est.refresh(xv, yv, xt, yt, 0)
    net = FlatNetwork(model, est.names)
    with eval_mode(model):
        jac = vmap(jacrev(lambda th, xi: net.logits(th, xi[None])[0]), in_dims=(None, 0))(net.theta, xt)
        g_ref = per_example_grads(net, xv, yv).mean(0)
        pre.fit_gradients(g_ref, jac, net.logits(net.theta, xt), yt)
        grads = per_example_grads(net, xt, yt)
    torch.testing.assert_close(pre.direction, est.direction, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(pre.scores_from_gradients(grads), est.scores(xt, yt), rtol=1e-7, atol=1e-10)


def test_fisher_curvature_is_the_empirical_fisher_of_the_targets(problem):
    model, xt, yt, xv, yv = problem
    est = ProjectedInfluence(model, ProjectedConfig(dim=10**6, curvature="fisher", damping=0.05))
    est.refresh(xv, yv, xt, yt, 0)
    net = FlatNetwork(model, est.names)
    with eval_mode(model):
        grads, g_ref = per_example_grads(net, xt, yt), per_example_grads(net, xv, yv).mean(0)
    fisher = grads.T @ grads / xt.shape[0]
    s = torch.linalg.solve(fisher + 0.05 * torch.eye(fisher.shape[0], dtype=fisher.dtype), g_ref)
    torch.testing.assert_close(est.scores(xt, yt), -(grads @ s), rtol=1e-7, atol=1e-10)
    with pytest.raises(ConfigError, match="curvature='hessian'"):
        ProjectedConfig(curvature="hessian")


def test_small_projection_ranks_like_the_exact_restricted_influence(problem):
    model, xt, yt, xv, yv = problem
    exact = ProjectedInfluence(model, ProjectedConfig(dim=10**6, damping=0.05))
    small = ProjectedInfluence(model, ProjectedConfig(dim=128, damping=0.05))
    assert small.projection.dim == 128 < small.num_params == 394
    for est in (exact, small):
        est.refresh(xv, yv, xt, yt, 0)
    rho = spearmanr(small.scores(xt, yt).numpy(), exact.scores(xt, yt).numpy())[0]
    print(f"Spearman(dim 128, exact) = {rho:.3f}")
    assert rho > MIN_SPEARMAN_SMALL


def test_projection_plan_and_adjoint():
    """Water-filling keeps small tensors whole, factors the large convolutions, and lift = R^T."""
    model = wrn28_2(10)
    names = select_parameters(model)
    shapes = [dict(model.named_parameters())[n].shape for n in names]
    proj = GradientProjection(shapes, 2048, seed=3)
    kinds = {n: (b.kind, b.out_dim) for n, b in zip(names, proj.blocks)}
    assert kinds["head.bias"] == ("identity", 10) and kinds["backbone.13.weight"] == ("identity", 128)
    # the rest (2048 - 778) is split equally: a proportional split would leave the head 5 dimensions
    assert kinds["head.weight"] == ("dense", 423)
    assert kinds["backbone.12.conv1.weight"][0] == kinds["backbone.12.conv2.weight"][0] == "kron"
    assert 2000 <= proj.dim <= 2048
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(2, proj.num_params, generator=gen, dtype=torch.float64)
    s = torch.randn(proj.dim, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(proj.project(g) @ s, g @ proj.lift(s))
    # E[R^T R] = I: squared norms are kept on average (Johnson-Lindenstrauss), here within 20%
    ratio = (proj.project(g).norm(dim=1) / g.norm(dim=1)) ** 2
    assert bool(((ratio > 0.8) & (ratio < 1.2)).all())


def test_default_parameters_per_network():
    assert select_parameters(digits_net(10)) == ["backbone.4.weight", "backbone.5.weight", "backbone.5.bias",
                                                 "head.weight", "head.bias"]
    assert select_parameters(cnn_small(10))[0] == "backbone.8.weight"
    names = select_parameters(wrn28_2(10))
    assert names[0] == "backbone.12.bn1.weight" and "backbone.13.bias" in names and names[-1] == "head.bias"
    assert len(select_parameters(digits_net(10), blocks=2)) == 8
    with pytest.raises(InfluenceError, match="no trainable parameter"):
        select_parameters(digits_net(10), ("layer4.",))


class Logistic(Classifier):
    """Multinomial logistic regression on pixels: convex in its only parameters, the head."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten())
        self.head = head

    def features(self, x):
        return self.backbone(x)


def test_sign_matches_leave_some_out_on_a_convex_problem():
    """Removing the examples scored most harmful (I > 0) lowers the validation loss, removing the
    most helpful raises it, by about -sum I / n; flipped labels mostly score I > 0."""
    n, wd = 60, 0.1
    x, y = digits()
    f = x.reshape(len(x), -1).double() / 255
    ft, fv, yv = f[:n], f[n:n + 200], y[n:n + 200]
    yt, flipped = flip_labels(y[:n], 0.1, 10, seed=1)
    model = Logistic(fit_head(ft, yt))
    est = ProjectedInfluence(model, ProjectedConfig(dim=256, damping=wd))  # 256 of 650 parameters
    assert not est.projection.exact
    est.refresh(fv, yv, ft, yt, 0)
    scores = est.scores(ft, yt)
    assert float((scores[flipped] > 0).double().mean()) >= 0.75
    with torch.no_grad():
        base = F.cross_entropy(model(fv)[0], yv)
    order = scores.argsort()
    for removed in (order[-3:], order[:3]):  # most harmful, most helpful
        keep = torch.ones(n, dtype=torch.bool)
        keep[removed] = False
        loo = fit_head(ft[keep], yt[keep], model.head.state_dict(), loss_scale=(n - 3) / n)
        with torch.no_grad():
            actual = float(F.cross_entropy(loo(fv), yv) - base)
        predicted = float(-scores[removed].sum() / n)
        assert actual * predicted > 0 and abs(predicted - actual) < 0.5 * abs(actual)


def test_state_round_trip_and_mode(problem):
    model, xt, yt, xv, yv = problem
    model.train()
    running = model.backbone[1].running_mean.clone()
    cfg = ProjectedConfig(dim=64)
    est = ProjectedInfluence(model, cfg)
    with pytest.raises(InfluenceError, match="before any refresh"):
        est.scores(xt, yt)
    est.refresh(xv, yv, xt, yt, 11)
    buffer = io.BytesIO()
    torch.save(est.state_dict(), buffer)
    resumed = ProjectedInfluence(model, cfg)
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert resumed.last_refresh == 11 and resumed.damping == est.damping
    torch.testing.assert_close(resumed.scores(xt, yt), est.scores(xt, yt), rtol=0, atol=0)
    assert model.training
    torch.testing.assert_close(model.backbone[1].running_mean, running)
    with pytest.raises(InfluenceError, match="same network, prefixes, dim and seed"):
        ProjectedInfluence(model, dataclasses.replace(cfg, seed=1)).load_state_dict(est.state_dict())
    model.eval()
