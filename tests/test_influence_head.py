"""Closed-form head gradients, Hessian and its products against torch.func in float64."""
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian, vmap

from benchmarks.toy import TinyCNN
from ssl_kd.influence import InfluenceError
from ssl_kd.influence.full import FlatNetwork, eval_mode, per_example_grads as full_per_example_grads, per_example_losses
from ssl_kd.influence.head import HeadCurvature, HeadLoss, mean_grad, per_example_grads

N, D, C = 24, 5, 4
LOSSES = [HeadLoss(), HeadLoss(tau=3.0, tau_squared=True), HeadLoss(tau=3.0, tau_squared=False)]


def make_targets(kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "hard":
        return torch.randint(0, C, (N,), generator=gen)
    return torch.softmax(torch.randn(N, C, generator=gen, dtype=torch.float64) * 2, dim=1)


def head_problem(bias: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(D, C, bias=bias).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(C, D, generator=gen, dtype=torch.float64))
        if bias:
            head.bias.copy_(torch.randn(C, generator=gen, dtype=torch.float64))
    f = torch.randn(N, D, generator=gen, dtype=torch.float64)
    return head, f, gen


def theta_of(head: nn.Linear) -> torch.Tensor:
    """[W | b] as (C, D1), the layout of the closed forms."""
    w = head.weight.detach()
    return torch.cat([w, head.bias.detach()[:, None]], 1) if head.bias is not None else w.clone()


def loss_of_theta(head: nn.Linear, loss: HeadLoss):
    def per_example(theta, fi, ti):
        params = {"weight": theta[:, :D]} | ({"bias": theta[:, D]} if head.bias is not None else {})
        return per_example_losses(functional_call(head, params, (fi[None],)), ti[None], loss)[0]
    return per_example


@pytest.mark.parametrize("loss", LOSSES, ids=["ce", "tempered_tau2", "tempered"])
@pytest.mark.parametrize("target_kind", ["hard", "soft"])
@pytest.mark.parametrize("bias", [True, False])
def test_closed_forms_match_torch_func(loss, target_kind, bias):
    head, f, gen = head_problem(bias)
    targets = make_targets(target_kind, gen)
    theta = theta_of(head)
    per_example = loss_of_theta(head, loss)
    logits = head(f).detach()

    expected = vmap(grad(per_example), in_dims=(None, 0, 0))(theta, f, targets)
    torch.testing.assert_close(per_example_grads(f, logits, targets, loss, bias), expected, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(mean_grad(f, logits, targets, loss, bias), expected.mean(0), atol=1e-12, rtol=1e-10)

    p = theta.numel()
    mean_loss = lambda th: vmap(per_example, in_dims=(None, 0, 0))(th, f, targets).mean()
    h = hessian(mean_loss)(theta).reshape(p, p)
    curv = HeadCurvature(f, logits, loss, bias)
    torch.testing.assert_close(curv.dense(chunk=7), h, atol=1e-12, rtol=1e-10)
    v = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(curv.hvp(v).reshape(-1), h @ v.reshape(-1), atol=1e-12, rtol=1e-10)
    assert curv.trace() == pytest.approx(float(h.trace()), rel=1e-10)


def test_tempered_gradient_scales():
    """tau^2 * KL keeps the gradient at tau (p_tau - q); without the factor it is (p_tau - q) / tau."""
    head, f, gen = head_problem(True)
    q = make_targets("soft", gen)
    logits = head(f).detach()
    with_factor = per_example_grads(f, logits, q, HeadLoss(4.0, True))
    without = per_example_grads(f, logits, q, HeadLoss(4.0, False))
    torch.testing.assert_close(with_factor, 16 * without)


def test_kfac_factors_exact_for_one_example():
    """With one example H = A (x) f f^T exactly, so K-FAC's factors reproduce the dense Hessian."""
    head, f, _ = head_problem(True)
    curv = HeadCurvature(f[:1], head(f[:1]).detach())
    a, g = curv.kfac_factors()
    torch.testing.assert_close(torch.kron(a, g), curv.dense(), atol=1e-12, rtol=1e-10)


def test_closed_form_matches_head_of_a_batchnorm_network():
    """On a real Classifier (with BatchNorm, in train mode), the closed form from (features, logits)
    equals torch.func per-example gradients of the head parameters; the mode is restored."""
    torch.manual_seed(0)
    model = TinyCNN(num_classes=C).double()
    model.train()
    x = torch.randn(N, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, C, (N,))
    model(x)  # give BatchNorm non-trivial running statistics
    running = model.backbone[1].running_mean.clone()
    with eval_mode(model), torch.no_grad():
        logits, feats = model(x)
    closed = per_example_grads(feats, logits, y)
    with eval_mode(model):
        auto = full_per_example_grads(FlatNetwork(model, ["head.weight", "head.bias"]), x, y, batch_size=10)
    d1 = feats.shape[1] + 1
    auto = torch.cat([auto[:, : C * (d1 - 1)].reshape(N, C, d1 - 1), auto[:, C * (d1 - 1):, None]], dim=2)
    torch.testing.assert_close(closed, auto, atol=1e-12, rtol=1e-10)
    assert model.training
    torch.testing.assert_close(model.backbone[1].running_mean, running)


def test_bad_targets_are_reported():
    head, f, _ = head_problem(True)
    with pytest.raises(InfluenceError, match="integer labels"):
        per_example_grads(f, head(f).detach(), torch.rand(N, C + 1, dtype=torch.float64))


@pytest.mark.parametrize("margin", [5.0, 20.0, 30.0])
def test_float32_logit_gradient_is_exact_for_confident_examples(margin):
    """Issue 16: p - onehot in float32 rounded the true class's component to 0 above a margin of ~17
    (cosine 0.20 with the float64 direction at margin 20)."""
    logits = torch.tensor([[margin, 0.0, -1.0, 0.5], [0.0, margin, 1.0, -2.0]])
    for targets in (torch.tensor([0, 1]), torch.tensor([2, 1])):
        got = per_example_grads(torch.ones(2, 1), logits, targets).reshape(2, -1)
        want = per_example_grads(torch.ones(2, 1, dtype=torch.float64), logits.double(), targets).reshape(2, -1)
        cosine = (got.double() * want).sum(1) / (got.double().norm(dim=1) * want.norm(dim=1))  # no eps: tiny norms
        assert cosine.min() > 1 - 1e-6, cosine
    soft = torch.softmax(torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 9.0, 0.0, 0.0]]), dim=1)
    got = per_example_grads(torch.ones(2, 1), logits, soft).reshape(2, -1)
    want = per_example_grads(torch.ones(2, 1, dtype=torch.float64), logits.double(), soft.double()).reshape(2, -1)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
