"""Full-network influence: torch.func gradients and curvature products against dense matrices,
CG and LiSSA against exact solves, BatchNorm handling, and LiSSA divergence."""
import dataclasses

import pytest
import torch
from torch.func import hessian, jacrev

from benchmarks.toy import TinyCNN, TinyMLP, as_input, digits, fit
from ssl_kd.influence import FullConfig, InfluenceError, full_influence
from ssl_kd.influence.full import FlatNetwork, eval_mode, per_example_grads, per_example_losses
from ssl_kd.influence.head import HeadCurvature, mean_grad
from ssl_kd.influence.head import per_example_grads as head_per_example_grads
from ssl_kd.influence.solve import SolveOptions, solve_head

TIGHT = FullConfig(cg_tol=1e-10, cg_max_iter=2000, batch_size=64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def problem():
    """A small trained MLP in float64 (P = 460), 120 training and 60 validation digits."""
    torch.manual_seed(0)
    x, y = digits()
    x = as_input(x).double()
    model = fit(TinyMLP(hidden=6).double(), x[:120], y[:120], steps=200, lr=0.03)
    return model, x[:120], y[:120], x[120:180], y[120:180]


def dense_scores(model, xt, yt, xv, yv, damping, curvature):
    """Influence from dense matrices: torch.func Hessian or J^T A J, solved with torch.linalg."""
    net = FlatNetwork(model)
    mean_loss = lambda th: per_example_losses(net.logits(th, xt), yt).mean()
    if curvature == "hessian":
        h = hessian(mean_loss)(net.theta)
    else:
        jac = jacrev(lambda th: net.logits(th, xt))(net.theta)  # (N, C, P)
        p = torch.softmax(net.logits(net.theta, xt), dim=1)
        a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        h = torch.einsum("ncp,ncd,ndq->pq", jac, a, jac) / xt.shape[0]
    g_val = torch.func.grad(lambda th: per_example_losses(net.logits(th, xv), yv).mean())(net.theta)
    s = torch.linalg.solve(h + damping * torch.eye(h.shape[0], dtype=h.dtype), g_val)
    return -(per_example_grads(net, xt, yt) @ s), h


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_cg_matches_dense_solve(problem, curvature):
    model, xt, yt, xv, yv = problem
    with eval_mode(model):
        h = dense_scores(model, xt, yt, xv, yv, 1.0, curvature)[1]
    eigs = torch.linalg.eigvalsh(h)
    damping = float(max(0.0, -eigs.min()) + 0.1 * eigs.abs().mean())  # positive definite even if H is not
    with eval_mode(model):
        expected = dense_scores(model, xt, yt, xv, yv, damping, curvature)[0]
    cfg = dataclasses.replace(TIGHT, curvature=curvature, damping=damping)
    torch.testing.assert_close(full_influence(model, xt, yt, xv, yv, cfg), expected, rtol=1e-6, atol=1e-9)


def test_lissa_matches_cg_and_divergence_is_caught(problem):
    model, xt, yt, xv, yv = problem
    cfg = dataclasses.replace(TIGHT, damping=0.05)
    exact = full_influence(model, xt, yt, xv, yv, cfg)
    lissa = full_influence(model, xt, yt, xv, yv, dataclasses.replace(cfg, solver="lissa", lissa_tol=1e-9, lissa_iterations=20000))
    assert float((lissa - exact).norm() / exact.norm()) < 1e-4
    with pytest.raises(InfluenceError, match="LiSSA diverged"):
        full_influence(model, xt, yt, xv, yv, dataclasses.replace(cfg, solver="lissa", lissa_scale=1e-3))


def test_stochastic_lissa_agrees_roughly(problem):
    model, xt, yt, xv, yv = problem
    cfg = dataclasses.replace(TIGHT, damping=0.05)
    exact = full_influence(model, xt, yt, xv, yv, cfg)
    noisy = full_influence(model, xt, yt, xv, yv, dataclasses.replace(cfg, solver="lissa", lissa_batch_size=32, lissa_iterations=300))
    assert float(torch.corrcoef(torch.stack([noisy, exact]))[0, 1]) > 0.9


def test_head_restricted_full_equals_closed_form_on_batchnorm_cnn():
    """The same influence two ways: closed forms from features, and torch.func over the head
    parameters of a BatchNorm CNN left in train mode (its running statistics must not move)."""
    torch.manual_seed(0)
    x, y = digits()
    x = as_input(x[:90]).double()
    y = y[:90]
    model = TinyCNN().double().train()
    model(x)  # non-trivial running statistics
    running = model.backbone[1].running_var.clone()
    xt, yt, xv, yv = x[:60], y[:60], x[60:], y[60:]
    with eval_mode(model), torch.no_grad():
        (lt, ft), (lv, fv) = model(xt), model(xv)
    curv = HeadCurvature(ft, lt)
    damping = 0.1 * curv.trace() / curv.num_params
    s = solve_head(curv, mean_grad(fv, lv, yv), damping, SolveOptions("cholesky"))
    closed = -(head_per_example_grads(ft, lt, yt).reshape(60, -1) @ s.reshape(-1))
    for curvature in ("ggn", "hessian"):  # equal for the head, which is linear in its parameters
        cfg = dataclasses.replace(TIGHT, curvature=curvature, damping=damping)
        full = full_influence(model, xt, yt, xv, yv, cfg, names=["head.weight", "head.bias"])
        torch.testing.assert_close(full, closed, rtol=1e-6, atol=1e-10)
    assert model.training
    torch.testing.assert_close(model.backbone[1].running_var, running)


def test_unknown_parameter_names_are_reported(problem):
    model = problem[0]
    with pytest.raises(InfluenceError, match="not found"):
        FlatNetwork(model, ["head.weights"])
