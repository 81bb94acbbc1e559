"""The batched CG solver and its implicit-differentiation Function on dense SPD systems."""

from __future__ import annotations

import pytest
import torch

from helpers import rel_err
from mesanet.ops import CGOptions, conjugate_gradient, implicit_solve
from mesanet.ops.mesa_decode import DenseOperator
from tolerances import F64_RTOL, GRADCHECK_ATOL, GRADCHECK_RTOL, HOMOGENEITY_RTOL


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
    x, result = conjugate_gradient(DenseOperator(h, lam), rhs, CGOptions(max_iter=50, tol=1e-6))
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
    x, _ = implicit_solve(DenseOperator, rhs, (h, lam), CGOptions(max_iter=40, tol=0.0))
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
        return implicit_solve(DenseOperator, rhs, ((a + a.mT) / 2, lam), CGOptions(max_iter=20, tol=0.0))[0]

    assert torch.autograd.gradcheck(solve, (a, lam, rhs), atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


def test_not_positive_definite_systems_stop_instead_of_dividing_by_zero():
    h, lam, rhs = spd_problem(batch=1, heads=1, d=3)
    lam = torch.tensor([[1.0, -1.0, 1.0]], dtype=torch.float64)  # indefinite: curvature can be <= 0
    x, result = conjugate_gradient(DenseOperator(torch.zeros_like(h), lam), rhs, CGOptions(max_iter=5, tol=0.0))
    assert torch.isfinite(x).all()
