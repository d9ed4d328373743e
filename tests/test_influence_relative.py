"""`relative` scores: the gradient cosine and RelatIF's l-relative influence (issue 16)."""
import pytest
import torch
from torch import nn

from ssl_kd.errors import ConfigError
from ssl_kd.influence import InfluenceConfig, InfluenceError, InfluenceWeighter
from ssl_kd.influence.head import HeadCurvature, mean_grad, per_example_grads

D, C = 3, 3


def problem():
    gen = torch.Generator().manual_seed(0)
    head = nn.Linear(D, C)
    with torch.no_grad():
        head.weight.copy_(torch.randn(C, D, generator=gen))
        head.bias.copy_(torch.randn(C, generator=gen))
    val_f, train_f, f = (torch.randn(n, D, generator=gen) for n in (10, 20, 6))
    return head, val_f, torch.randint(0, C, (10,), generator=gen), train_f, f, torch.randint(0, C, (6,), generator=gen)


def test_relatif_divides_by_the_inverse_hessian_norm_of_the_gradient():
    head, val_f, val_y, train_f, f, y = problem()
    w = InfluenceWeighter(InfluenceConfig(relative="relatif", damping=0.05))
    w.refresh(head, val_f, val_y, train_f, 0)
    logits = head(f).detach()
    # brute force in float64: the dense damped Hessian, inverted
    dd = torch.float64
    hessian = HeadCurvature(train_f.to(dd), head(train_f).detach().to(dd)).dense() + 0.05 * torch.eye(C * (D + 1), dtype=dd)
    inverse = torch.linalg.inv(hessian)
    g_val = mean_grad(val_f.to(dd), head(val_f).detach().to(dd), val_y).reshape(-1)
    g = per_example_grads(f.to(dd), logits.to(dd), y).reshape(len(y), -1)
    expected = -(g @ inverse @ g_val) / torch.einsum("np,pq,nq->n", g, inverse, g).sqrt()
    torch.testing.assert_close(w.scores(f, logits, y).double(), expected, rtol=1e-4, atol=1e-6)
    cosine = InfluenceWeighter(InfluenceConfig(relative="cosine", damping=0.05))
    cosine.refresh(head, val_f, val_y, train_f, 0)
    torch.testing.assert_close(cosine.scores(f, logits, y).double(), -(g @ inverse @ g_val) / g.norm(dim=1),
                               rtol=1e-4, atol=1e-6)


def test_relatif_resumes_and_old_names_still_read():
    head, val_f, val_y, train_f, f, y = problem()
    w = InfluenceWeighter(InfluenceConfig(relative="relatif"))
    w.refresh(head, val_f, val_y, train_f, 0)
    resumed = InfluenceWeighter(InfluenceConfig(relative="relatif"))
    resumed.load_state_dict(w.state_dict())
    assert torch.equal(resumed.scores(f, head(f), y), w.scores(f, head(f), y))
    old = {k: v for k, v in InfluenceWeighter().state_dict().items() if k != "factor"}  # an older checkpoint
    InfluenceWeighter().load_state_dict(old)
    assert InfluenceConfig(relative=True).relative == "cosine" and InfluenceConfig(relative=False).relative == "none"


def test_relatif_needs_the_dense_solve():
    with pytest.raises(ConfigError, match="relative='relatif'.*solver=cholesky"):
        InfluenceConfig(relative="relatif", solver="cg")
    with pytest.raises(ConfigError, match="static"):
        InfluenceConfig(relative="relatif", schedule="static")
    with pytest.raises(ConfigError, match="relative='cosin'"):
        InfluenceConfig(relative="cosin")
    head, val_f, val_y, train_f, _, _ = problem()
    with pytest.raises(InfluenceError, match="dense_max_params=5"):
        InfluenceWeighter(InfluenceConfig(relative="relatif", dense_max_params=5)).refresh(head, val_f, val_y, train_f, 0)
