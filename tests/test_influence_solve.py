"""The damped solve: Cholesky against a dense solve, CG and K-FAC/EK-FAC against the exact path."""
import pytest
import torch
from scipy.stats import spearmanr

from benchmarks.toy import TinyMLP, as_input, digits, fit
from ssl_kd.influence import InfluenceError
from ssl_kd.influence.head import HeadCurvature, mean_grad, per_example_grads
from ssl_kd.influence.solve import SolveOptions, conjugate_gradient, default_damping, solve_head

# Stated tolerances. CG is exact up to its residual tolerance. K-FAC and EK-FAC are exact when every
# example has the same softmax output; on a trained head (softmax strongly correlated with the
# features) they are rough: measured cosine ~0.79 to the exact solution and score Spearman ~0.5.
CG_REL_ERROR = 1e-5
KFAC_MIN_COSINE = 0.6
KFAC_MIN_SPEARMAN = 0.3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: thread start-up costs more than it saves
    yield
    torch.set_num_threads(threads)


def random_problem(seed=0, n=40, d=6, c=5, constant_softmax=False):
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d, generator=gen, dtype=torch.float64).relu()
    w = torch.zeros(c, d, dtype=torch.float64) if constant_softmax else torch.randn(c, d, generator=gen, dtype=torch.float64)
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    curv = HeadCurvature(f, f @ w.T + b)
    g = torch.randn(c, d + 1, generator=gen, dtype=torch.float64)
    return curv, g


def dense_solution(curv, g, damping):
    h = curv.dense() + damping * torch.eye(curv.num_params, dtype=torch.float64)
    return torch.linalg.solve(h, g.reshape(-1)).reshape(g.shape)


def rel_error(a, b):
    return float((a - b).norm() / b.norm())


def test_cholesky_matches_dense_solve():
    curv, g = random_problem()
    exact = dense_solution(curv, g, 1e-3)
    assert rel_error(solve_head(curv, g, 1e-3, SolveOptions("cholesky")), exact) < 1e-10


def test_cg_matches_exact():
    curv, g = random_problem()
    exact = dense_solution(curv, g, 1e-2)
    x = solve_head(curv, g, 1e-2, SolveOptions("cg", cg_tol=1e-8))
    assert rel_error(x, exact) < CG_REL_ERROR


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_kronecker_solvers_exact_when_softmax_is_shared(method):
    """With one softmax output for every example, H = A (x) E[f f^T] exactly."""
    curv, g = random_problem(constant_softmax=True)
    assert rel_error(solve_head(curv, g, 1e-2, SolveOptions(method)), dense_solution(curv, g, 1e-2)) < 1e-9


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_kronecker_solvers_agree_roughly_on_a_trained_head(method):
    x, y = digits()
    x = as_input(x)
    torch.manual_seed(0)
    model = fit(TinyMLP(), x[:400], y[:400], steps=150)
    with torch.no_grad():
        (lt, ft), (lv, fv) = model(x[:400]), model(x[400:600])
    curv = HeadCurvature(ft, lt)
    g = mean_grad(fv.double(), lv.double(), y[400:600])
    damping = default_damping(curv.trace() / curv.num_params, 0.1, 0.0)
    exact = solve_head(curv, g, damping, SolveOptions("cholesky"))
    approx = solve_head(curv, g, damping, SolveOptions(method))
    cosine = torch.nn.functional.cosine_similarity(approx.reshape(-1), exact.reshape(-1), dim=0)
    grads = per_example_grads(ft.double(), lt.double(), y[:400]).reshape(400, -1)
    rho = spearmanr(-(grads @ approx.reshape(-1)), -(grads @ exact.reshape(-1)))[0]
    assert cosine > KFAC_MIN_COSINE and rho > KFAC_MIN_SPEARMAN, (float(cosine), rho)


def test_auto_picks_cholesky_then_cg():
    assert SolveOptions("auto", dense_max_params=100).resolve(100) == "cholesky"
    assert SolveOptions("auto", dense_max_params=100).resolve(101) == "cg"


def test_default_damping_is_fraction_of_mean_eigenvalue_plus_weight_decay():
    curv, _ = random_problem()
    mean_eig = float(torch.linalg.eigvalsh(curv.dense()).mean())
    assert curv.trace() / curv.num_params == pytest.approx(mean_eig, rel=1e-10)
    assert default_damping(mean_eig, 0.1, 5e-4) == pytest.approx(0.1 * mean_eig + 5e-4)


def test_singular_problems_are_reported():
    curv, g = random_problem()
    with pytest.raises(InfluenceError, match="damping must be > 0"):
        solve_head(curv, g, 0.0)
    with pytest.raises(InfluenceError, match="not positive definite"):
        conjugate_gradient(lambda v: -v, torch.ones(3))


def test_cg_warns_when_not_converged():
    curv, g = random_problem()
    with pytest.warns(UserWarning, match="max_iter=2"):
        solve_head(curv, g, 1e-6, SolveOptions("cg", cg_max_iter=2))
