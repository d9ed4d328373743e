"""The sign convention and the ranking against leave-one-out retraining of a convex problem.

A multinomial logistic-regression head on digit pixels, fit by L-BFGS in float64 to
`(1/n) sum_j l_j + wd/2 |theta|^2`. Removing example i changes the validation loss by about
-I(i)/n, with I computed by the weighter (damping = wd, the L2 term's own curvature, so the
quadratic model is exact up to third-order terms).
"""
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from benchmarks.toy import digits
from ssl_kd.influence import InfluenceConfig, InfluenceWeighter, flip_labels

N_TRAIN, N_VAL, WD = 60, 200, 0.1
MIN_SPEARMAN = 0.98  # measured 0.9989


def fit_head(f, y, init=None, loss_scale=1.0):
    """Minimise loss_scale * mean CE + wd/2 |theta|^2 (loss_scale = (n-1)/n drops one term of n)."""
    head = nn.Linear(f.shape[1], 10).double()
    if init is None:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    else:
        head.load_state_dict(init)
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=500, tolerance_grad=1e-10,
                            tolerance_change=1e-12, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_scale * F.cross_entropy(head(f), y) + WD / 2 * sum((p**2).sum() for p in head.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return head


def test_influence_sign_and_ranking_match_leave_one_out():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = digits()
        f = x.reshape(len(x), -1).double() / 255
        ft, fv, yv = f[:N_TRAIN], f[N_TRAIN:N_TRAIN + N_VAL], y[N_TRAIN:N_TRAIN + N_VAL]
        yt, flipped = flip_labels(y[:N_TRAIN], 0.1, 10, seed=1)  # a few clearly harmful examples
        head = fit_head(ft, yt)
        with torch.no_grad():
            base_val = F.cross_entropy(head(fv), yv)
        weighter = InfluenceWeighter(InfluenceConfig(schedule="online", damping=WD, solver="cholesky"))
        weighter.refresh(head, fv, yv, ft, step=0)
        with torch.no_grad():
            scores = weighter.scores(ft, head(ft), yt).double()

        actual = torch.empty(N_TRAIN, dtype=torch.float64)
        keep = torch.ones(N_TRAIN, dtype=torch.bool)
        for i in range(N_TRAIN):
            keep[i] = False
            loo = fit_head(ft[keep], yt[keep], head.state_dict(), loss_scale=(N_TRAIN - 1) / N_TRAIN)
            with torch.no_grad():
                actual[i] = F.cross_entropy(loo(fv), yv) - base_val
            keep[i] = True
        predicted = -scores / N_TRAIN

        rho = spearmanr(predicted.numpy(), actual.numpy())[0]
        print(f"Spearman(-I/n, leave-one-out change) = {rho:.4f}")
        assert rho > MIN_SPEARMAN
        # sign and size: first order is within 30% of the actual changes (measured 18%)
        assert float((predicted - actual).norm() / actual.norm()) < 0.3
        big = actual.abs() > actual.abs().median()
        assert bool((torch.sign(predicted[big]) == torch.sign(actual[big])).all())
        # flipped labels hurt: I > 0, and removing them lowers the validation loss
        assert float((scores[flipped] > 0).double().mean()) >= 0.75
        assert float((actual[flipped] < 0).double().mean()) >= 0.75
    finally:
        torch.set_num_threads(threads)
