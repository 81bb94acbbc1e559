"""Batched conjugate gradient for SPD systems, and the implicit-differentiation autograd Function.

A *system* is one row of the right-hand side ``rhs [..., d]``; the operator applies ``A`` to
every row at once. All systems iterate together; each is frozen (takes zero steps) once its
residual meets the stopping rule, so no division by zero ever happens and no epsilon is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .numerics import autocast_off


class SPDOperator(Protocol):
    """A batch of SPD matrices, applied row-wise: ``matvec(p)[..., :] = A p[..., :]``."""

    def matvec(self, p: Tensor) -> Tensor: ...

    def diagonal(self) -> Tensor: ...


@dataclass(frozen=True)
class CGOptions:
    """Stopping rule: at most ``max_iter`` steps; a system stops once ``||r|| <= tol * ||rhs||``.

    With ``tol = 0`` every system runs ``max_iter`` steps (frozen only if its residual is exactly 0).
    """

    max_iter: int
    tol: float


@dataclass(frozen=True)
class CGResult:
    """Per-system diagnostics of one batched solve (leading shape of ``rhs``)."""

    iterations: Tensor  # int32: steps each system took before it was frozen
    relative_residual: Tensor  # ||r|| / ||rhs|| of the CG residual at exit; 0 where rhs = 0


def conjugate_gradient(operator: SPDOperator, rhs: Tensor, options: CGOptions) -> tuple[Tensor, CGResult]:
    """Solve ``A x = rhs`` for every row of ``rhs [..., d]``.

    Initial guess: the Jacobi-scaled right-hand side ``rhs / diag(A)`` (the paper's convention,
    used in training, decoding and the adjoint solve alike). The map rhs -> x is exactly
    homogeneous: ``solve(s * rhs) == s * solve(rhs)`` up to rounding.

    A system leaves the iteration when ``||r||^2 <= tol^2 ||rhs||^2`` or when its curvature
    ``p^T A p`` is not positive (exact convergence, or an operator that is not SPD); frozen
    systems keep their iterate. The reported residual is the recursively updated CG residual.
    """
    x = rhs / operator.diagonal()
    r = rhs - operator.matvec(x)
    p = r.clone()
    delta = torch.linalg.vecdot(r, r)  # [...]
    rhs_sq = torch.linalg.vecdot(rhs, rhs)
    threshold = (options.tol * options.tol) * rhs_sq
    active = delta > threshold
    iterations = torch.zeros(delta.shape, dtype=torch.int32, device=rhs.device)
    for _ in range(options.max_iter):
        if options.tol > 0 and not bool(active.any()):
            break
        s = operator.matvec(p)
        curvature = torch.linalg.vecdot(p, s)
        active = active & (curvature > 0)
        alpha = torch.where(active, delta / torch.where(active, curvature, 1), 0).unsqueeze(-1)
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, s, value=-1)
        delta_new = torch.linalg.vecdot(r, r)
        ratio = torch.where(active, delta_new / torch.where(active, delta, 1), 0).unsqueeze(-1)
        torch.addcmul(r, p, ratio, out=p)  # p <- r + ratio * p
        iterations += active
        delta = torch.where(active, delta_new, delta)
        active = active & (delta > threshold)
    relative = torch.where(rhs_sq > 0, (delta / torch.where(rhs_sq > 0, rhs_sq, 1)).sqrt(), 0)
    return x, CGResult(iterations=iterations, relative_residual=relative)


def solve(operator: SPDOperator, rhs: Tensor, options: CGOptions) -> tuple[Tensor, CGResult]:
    """:func:`conjugate_gradient`, in blocks of rows along dim 0 when the operator offers them.

    An operator with ``restrict(rows)`` and ``rows_per_block()`` declares its systems independent
    along dim 0; solving a cache-sized block at a time keeps the cost linear in the number of rows,
    and each block stops as soon as its own systems have (with ``tol > 0``).
    """
    block = operator.rows_per_block() if hasattr(operator, "restrict") else rhs.shape[0]
    if block >= rhs.shape[0]:
        return conjugate_gradient(operator, rhs, options)
    parts = [
        conjugate_gradient(operator.restrict(slice(i, i + block)), rhs[i : i + block], options)
        for i in range(0, rhs.shape[0], block)
    ]
    x = torch.cat([p[0] for p in parts])
    return x, CGResult(
        iterations=torch.cat([p[1].iterations for p in parts]),
        relative_residual=torch.cat([p[1].relative_residual for p in parts]),
    )


class _ImplicitSolve(torch.autograd.Function):
    """x = A(theta)^{-1} rhs with the implicit-function-theorem backward (design section 4).

    Backward: one adjoint CG solve ``y = A^{-1} dx`` (A is symmetric), then ``d rhs = y`` and
    ``d theta = VJP of theta -> A(theta) x`` with cotangent ``-y``. No backpropagation through the
    CG iterations; exact when the forward solve converged.
    """

    @staticmethod
    def forward(ctx, build: Callable[..., SPDOperator], options: CGOptions, rhs: Tensor, *params: Tensor):
        operator = build(*params)
        x, result = solve(operator, rhs, options)
        ctx.build, ctx.options, ctx.operator = build, options, operator
        ctx.save_for_backward(x, *params)
        ctx.mark_non_differentiable(result.iterations, result.relative_residual)
        return x, result.iterations, result.relative_residual

    @staticmethod
    @once_differentiable
    def backward(ctx, dx: Tensor, _iterations, _residual):
        x, *params = ctx.saved_tensors
        with autocast_off(x.device):
            return _ImplicitSolve._adjoint(ctx, x, params, dx)

    @staticmethod
    def _adjoint(ctx, x: Tensor, params: list[Tensor], dx: Tensor):
        y, _ = solve(ctx.operator, dx.to(x.dtype), ctx.options)
        needs = ctx.needs_input_grad[3:]
        param_grads: list[Tensor | None] = [None] * len(params)
        if any(needs):
            with torch.enable_grad():
                leaves = [p.detach().requires_grad_(n) for p, n in zip(params, needs)]
                ax = ctx.build(*leaves).matvec(x)
                wanted = [leaf for leaf in leaves if leaf.requires_grad]
                grads = iter(torch.autograd.grad(ax, wanted, grad_outputs=-y, allow_unused=True))
                param_grads = [next(grads) if n else None for n in needs]
        d_rhs = y if ctx.needs_input_grad[2] else None
        return (None, None, d_rhs, *param_grads)


def implicit_solve(
    build: Callable[..., SPDOperator], rhs: Tensor, params: Sequence[Tensor], options: CGOptions
) -> tuple[Tensor, CGResult]:
    """Differentiable ``x = A(params)^{-1} rhs`` solved by CG; ``build(*params)`` makes ``A``.

    Gradients reach ``rhs`` and every tensor in ``params`` (through ``build``'s ``matvec``).
    """
    x, iterations, residual = _ImplicitSolve.apply(build, options, rhs, *params)
    return x, CGResult(iterations=iterations, relative_residual=residual)
