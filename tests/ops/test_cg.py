"""The batched CG solver and its implicit-differentiation Function on dense SPD systems."""

from __future__ import annotations

import pytest
import torch

from mesanet.ops import CGOptions, conjugate_gradient, implicit_solve
from mesanet.ops.cg import RESIDUAL_FLOOR_EPS, DiagonalPreconditioner

from helpers import rel_err
from tolerances import F32_SURPLUS_RTOL, F64_RTOL, GRADCHECK_ATOL, GRADCHECK_RTOL, HOMOGENEITY_RTOL


class DenseOperator:
    """``(H + diag(lam))`` with a materialised ``h [B, H, d, d]``, ``lam [H, d]``: independent of the ops' own."""

    def __init__(self, h, lam):
        self.h, self.lam = h, lam

    def matvec(self, p):
        return torch.einsum("bhij,bhj->bhi", self.h, p) + self.lam * p

    def diagonal(self):
        return self.h.diagonal(dim1=-2, dim2=-1) + self.lam


def jacobi(h, lam):
    return DiagonalPreconditioner(DenseOperator(h, lam).diagonal())


def dense_system(h, lam, preconditioned=True):
    """``build`` for :func:`implicit_solve`: the operator and its Jacobi preconditioner."""
    return DenseOperator(h, lam), (jacobi(h.detach(), lam.detach()) if preconditioned else None)


def spd_problem(batch=3, heads=2, d=7, seed=0, condition=50.0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, heads, d, d, generator=gen, dtype=torch.float64)
    h = a @ a.mT / d  # PSD key-covariance-like
    lam = 0.25 + torch.rand(heads, d, generator=gen, dtype=torch.float64)
    h = h * (condition / torch.linalg.eigvalsh(h).amax(-1, keepdim=True).unsqueeze(-1))
    rhs = torch.randn(batch, heads, d, generator=gen, dtype=torch.float64)
    return h, lam, rhs


def direct(h, lam, rhs):
    return torch.linalg.solve(h + torch.diag_embed(lam), rhs)


def test_converges_to_the_direct_solve():
    h, lam, rhs = spd_problem()
    x, result = conjugate_gradient(DenseOperator(h, lam), rhs, CGOptions(max_iter=30, tol=0.0))
    assert rel_err(x, direct(h, lam, rhs)) <= F64_RTOL
    assert result.iterations.shape == rhs.shape[:-1]
    assert float(result.relative_residual.max()) < 1e-12


def test_tolerance_freezes_each_system_on_its_own():
    h, lam, rhs = spd_problem(batch=8, condition=200.0)
    h[0] = 0  # H + Lambda diagonal: the Jacobi initial guess is exact, zero steps needed
    x, result = conjugate_gradient(DenseOperator(h, lam), rhs, CGOptions(max_iter=50, tol=1e-6), jacobi(h, lam))
    assert torch.all(result.iterations[0] == 0)
    assert int(result.iterations.max()) > 0
    assert float(result.relative_residual.max()) <= 1e-6
    true_residual = (rhs - DenseOperator(h, lam).matvec(x)).norm(dim=-1) / rhs.norm(dim=-1)
    assert float(true_residual.max()) <= 1e-5  # recursive and true residual agree in float64


def test_exactly_homogeneous_and_zero_rhs_is_safe():
    h, lam, rhs = spd_problem()
    rhs[0, 0] = 0
    op = DenseOperator(h, lam)
    x, result = conjugate_gradient(op, rhs, CGOptions(max_iter=10, tol=1e-3))
    assert torch.all(x[0, 0] == 0) and torch.all(result.relative_residual[0, 0] == 0)
    for scale in (1e-6, 1e3):
        xs, rs = conjugate_gradient(op, rhs * scale, CGOptions(max_iter=10, tol=1e-3))
        assert rel_err(xs, x * scale) <= HOMOGENEITY_RTOL
        assert torch.equal(rs.iterations, result.iterations)  # the stopping rule is scale-free


def test_implicit_gradients_match_differentiating_the_direct_solve():
    h, lam, rhs = spd_problem()
    h, lam, rhs = (t.requires_grad_() for t in (h, lam, rhs))
    x, _ = implicit_solve(dense_system, rhs, (h, lam), CGOptions(max_iter=40, tol=0.0))
    w = torch.randn_like(x)
    grads = torch.autograd.grad((x * w).sum(), (rhs, h, lam))
    ref = torch.autograd.grad((direct(h, lam, rhs) * w).sum(), (rhs, h, lam))
    for name, a, e in zip(("rhs", "H", "lam"), grads, ref):
        assert rel_err(a, e) <= F64_RTOL, name


def test_gradcheck_dense_implicit_solve():
    h, lam, rhs = spd_problem(batch=1, heads=1, d=4)
    a = h.clone().requires_grad_()  # symmetrised inside, so finite differences stay on SPD matrices
    lam, rhs = lam.requires_grad_(), rhs.requires_grad_()

    def solve(a, lam, rhs):
        return implicit_solve(dense_system, rhs, ((a + a.mT) / 2, lam), CGOptions(max_iter=20, tol=0.0))[0]

    assert torch.autograd.gradcheck(solve, (a, lam, rhs), atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


def test_not_positive_definite_systems_stop_instead_of_dividing_by_zero():
    h, lam, rhs = spd_problem(batch=1, heads=1, d=3)
    lam = torch.tensor([[1.0, -1.0, 1.0]], dtype=torch.float64)  # indefinite: curvature can be <= 0
    x, result = conjugate_gradient(DenseOperator(torch.zeros_like(h), lam), rhs, CGOptions(max_iter=5, tol=0.0))
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("preconditioned", [False, True])
def test_preconditioned_cg_converges_and_stays_homogeneous(preconditioned):
    h, lam, rhs = spd_problem(batch=4, d=9, condition=500.0)
    precond = jacobi(h, lam) if preconditioned else None
    x, _ = conjugate_gradient(DenseOperator(h, lam), rhs, CGOptions(max_iter=60, tol=0.0), precond)
    assert rel_err(x, direct(h, lam, rhs)) <= F64_RTOL
    for scale in (1e-8, 1e5):
        xs, _ = conjugate_gradient(DenseOperator(h, lam), rhs * scale, CGOptions(max_iter=60, tol=0.0), precond)
        assert rel_err(xs, x * scale) <= HOMOGENEITY_RTOL


def test_surplus_steps_in_float32_stop_at_the_residual_floor():
    """tol = 0 and 10x more steps than needed: systems freeze at the floor instead of iterating on rounding
    noise, so the answer with 10 d steps equals the one with 4 d steps and stays close to float64."""
    h, lam, rhs = spd_problem(batch=6, heads=2, d=32, condition=1e2)  # cond as in the op tests (F32_SURPLUS_RTOL)
    exact = direct(h, lam, rhs)
    h32, lam32, rhs32 = (t.float() for t in (h, lam, rhs))
    runs = {}
    for steps in (128, 320):
        runs[steps] = conjugate_gradient(DenseOperator(h32, lam32), rhs32, CGOptions(max_iter=steps, tol=0.0))
    x_short, x_long = runs[128][0], runs[320][0]
    assert torch.equal(x_long, x_short)
    assert int(runs[320][1].iterations.max()) < 128  # every system froze on its own before the budget
    floor = RESIDUAL_FLOOR_EPS * torch.finfo(torch.float32).eps
    assert float(runs[320][1].relative_residual.max()) <= floor
    assert rel_err(x_long.double(), exact) <= F32_SURPLUS_RTOL


@pytest.mark.parametrize("check_every", [1, 3, 7])
def test_convergence_check_interval_only_decides_when_the_loop_exits(check_every):
    """Frozen systems never change: testing for convergence every few steps gives the same answer."""
    h, lam, rhs = spd_problem(batch=5, condition=300.0)
    x1, r1 = conjugate_gradient(DenseOperator(h, lam), rhs, CGOptions(max_iter=40, tol=1e-7, check_every=1))
    xk, rk = conjugate_gradient(DenseOperator(h, lam), rhs, CGOptions(max_iter=40, tol=1e-7, check_every=check_every))
    assert torch.equal(x1, xk) and torch.equal(r1.iterations, rk.iterations)
