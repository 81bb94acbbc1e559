"""Batched preconditioned conjugate gradient for SPD systems, and the implicit-differentiation autograd Function.

A *system* is one row of the right-hand side ``rhs [..., d]``; the operator applies ``A`` to every
row at once and the preconditioner applies an SPD ``M^{-1}`` row-wise. All systems iterate
together; each is frozen (takes zero steps from then on) once its residual meets the stopping rule,
so no division by zero ever happens and no epsilon is needed.

Stopping, in relative terms only (the map ``rhs -> x`` stays exactly homogeneous):

* ``||r|| <= tol * ||rhs||`` (the user's tolerance), or
* ``||r|| <= RESIDUAL_FLOOR_EPS * eps(dtype) * ||rhs||``: below this floor the recursively updated
  residual is rounding noise (the true residual cannot follow it), and iterating on noise in
  float32 drives ``||r||^2`` into the denormal range where the recursion diverges. The floor
  applies with ``tol = 0`` too, so surplus steps can never make an answer worse; or
* the curvature ``p^T A p`` or ``r^T M^{-1} r`` is not positive (exact convergence, or an operator
  that is not SPD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .numerics import autocast_off

#: The residual floor in units of the working precision's machine epsilon: a system whose relative
#: residual ``||r|| / ||rhs||`` is at most ``RESIDUAL_FLOOR_EPS * eps`` is frozen even with ``tol = 0``.
#: float32: 16 * 1.19e-7 = 1.9e-6; float64: 3.6e-15. The true residual of a float32 solve stalls at
#: ~eps * cond(A) anyway, so nothing attainable is given up.
RESIDUAL_FLOOR_EPS = 16.0

#: Convergence-test interval on CUDA (and other accelerators) when the caller does not choose one:
#: every test is one device-to-host synchronisation.
ACCELERATOR_CHECK_EVERY = 4


class SPDOperator(Protocol):
    """A batch of SPD matrices, applied row-wise: ``matvec(p)[..., :] = A p[..., :]``."""

    def matvec(self, p: Tensor) -> Tensor: ...


class Preconditioner(Protocol):
    """An SPD approximation ``M`` of the operator, applied as ``apply(r) = M^{-1} r`` row-wise."""

    def apply(self, r: Tensor) -> Tensor: ...


class IdentityPreconditioner:
    """``M = I``: plain CG (initial guess ``x0 = rhs``)."""

    def apply(self, r: Tensor) -> Tensor:
        return r.clone()

    def restrict(self, rows: slice) -> "IdentityPreconditioner":
        return self


class DiagonalPreconditioner:
    """``M = diag(A)`` (Jacobi): ``apply(r) = r / diag``, ``diag`` broadcastable to the rows."""

    def __init__(self, diagonal: Tensor):
        self.inverse = diagonal.reciprocal()

    def apply(self, r: Tensor) -> Tensor:
        return r * self.inverse

    def restrict(self, rows: slice) -> "DiagonalPreconditioner":
        out = DiagonalPreconditioner.__new__(DiagonalPreconditioner)
        out.inverse = self.inverse[rows]
        return out


@dataclass(frozen=True)
class CGOptions:
    """Stopping rule: at most ``max_iter`` steps; a system stops once ``||r|| <= tol * ||rhs||`` or at the
    residual floor (module docstring). ``check_every``: steps between tests of "has every system
    stopped?" (``None``: 1 on CPU, :data:`ACCELERATOR_CHECK_EVERY` elsewhere; never under ``torch.compile``,
    where the loop runs its ``max_iter`` steps with frozen systems masked)."""

    max_iter: int
    tol: float
    check_every: Optional[int] = None


@dataclass(frozen=True)
class CGResult:
    """Per-system diagnostics of one batched solve (leading shape of ``rhs``)."""

    iterations: Tensor  # int32: steps each system took before it was frozen
    relative_residual: Tensor  # ||r|| / ||rhs|| of the CG residual at exit; 0 where rhs = 0


def _check_interval(options: CGOptions, device: torch.device) -> Optional[int]:
    """Steps between early-exit tests, or ``None`` for no test (fixed step count)."""
    if torch.compiler.is_compiling():
        return None
    if options.check_every is not None:
        return options.check_every
    return 1 if device.type == "cpu" else ACCELERATOR_CHECK_EVERY


def conjugate_gradient(
    operator: SPDOperator, rhs: Tensor, options: CGOptions, preconditioner: Optional[Preconditioner] = None
) -> tuple[Tensor, CGResult]:
    """Solve ``A x = rhs`` for every row of ``rhs [..., d]`` by preconditioned CG.

    Initial guess ``x0 = M^{-1} rhs`` (with the Jacobi preconditioner this is the paper's
    Jacobi-scaled right-hand side). The reported residual is the recursively updated one.
    """
    precond = preconditioner if preconditioner is not None else IdentityPreconditioner()
    x = precond.apply(rhs)
    r = rhs - operator.matvec(x)
    z = precond.apply(r)
    p = z.clone()
    rz = torch.linalg.vecdot(r, z)  # [...] r^T M^{-1} r
    res_sq = torch.linalg.vecdot(r, r)
    rhs_sq = torch.linalg.vecdot(rhs, rhs)
    floor = RESIDUAL_FLOOR_EPS * torch.finfo(rhs.dtype).eps
    threshold = max(options.tol, floor) ** 2 * rhs_sq
    active = (res_sq > threshold) & (rz > 0)
    iterations = torch.zeros(res_sq.shape, dtype=torch.int32, device=rhs.device)
    interval = _check_interval(options, rhs.device)
    for step in range(options.max_iter):
        if interval is not None and step % interval == 0 and not bool(active.any()):
            break
        s = operator.matvec(p)
        curvature = torch.linalg.vecdot(p, s)
        active = active & (curvature > 0)
        alpha = torch.where(active, rz / torch.where(active, curvature, 1), 0).unsqueeze(-1)
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, s, value=-1)
        z = precond.apply(r)
        rz_new = torch.linalg.vecdot(r, z)
        ratio = torch.where(active, rz_new / torch.where(active, rz, 1), 0).unsqueeze(-1)
        p = torch.addcmul(z, p, ratio)  # p <- z + ratio * p
        iterations += active
        res_sq = torch.where(active, torch.linalg.vecdot(r, r), res_sq)
        rz = torch.where(active, rz_new, rz)
        active = active & (res_sq > threshold) & (rz > 0)
    relative = torch.where(rhs_sq > 0, (res_sq / torch.where(rhs_sq > 0, rhs_sq, 1)).sqrt(), 0)
    return x, CGResult(iterations=iterations, relative_residual=relative)


def solve(
    operator: SPDOperator, rhs: Tensor, options: CGOptions, preconditioner: Optional[Preconditioner] = None
) -> tuple[Tensor, CGResult]:
    """:func:`conjugate_gradient`, in blocks of rows along dim 0 when the operator offers them (CPU only).

    An operator with ``restrict(rows)`` and ``rows_per_block()`` declares its systems independent
    along dim 0; on a CPU, solving a cache-sized block at a time keeps the cost linear in the number
    of rows and each block stops as soon as its own systems have. On an accelerator blocks would
    only serialise the loop, so it runs once over all rows.
    """
    blocked = hasattr(operator, "restrict") and rhs.device.type == "cpu" and not torch.compiler.is_compiling()
    block = operator.rows_per_block() if blocked else rhs.shape[0]
    if block >= rhs.shape[0]:
        return conjugate_gradient(operator, rhs, options, preconditioner)
    parts = []
    for i in range(0, rhs.shape[0], block):
        rows = slice(i, i + block)
        part_precond = preconditioner.restrict(rows) if preconditioner is not None else None
        parts.append(conjugate_gradient(operator.restrict(rows), rhs[rows], options, part_precond))
    x = torch.cat([p[0] for p in parts])
    return x, CGResult(
        iterations=torch.cat([p[1].iterations for p in parts]),
        relative_residual=torch.cat([p[1].relative_residual for p in parts]),
    )


#: ``build(*params) -> (operator, preconditioner or None)``; only ``operator.matvec`` is differentiated.
Builder = Callable[..., "tuple[SPDOperator, Optional[Preconditioner]]"]


class _ImplicitSolve(torch.autograd.Function):
    """x = A(theta)^{-1} rhs with the implicit-function-theorem backward.

    Backward: one adjoint (preconditioned) CG solve ``y = A^{-1} dx`` (A is symmetric), then
    ``d rhs = y`` and ``d theta = VJP of theta -> A(theta) x`` with cotangent ``-y``: the operator's own
    ``vjp(x, u)`` when it has one (traceable by ``torch.compile``), else autograd through ``matvec``. No
    backpropagation through the CG iterations; exact when the forward solve converged. The
    preconditioner only changes how fast CG converges, never what it converges to, so it is not
    differentiated.
    """

    @staticmethod
    def forward(ctx, build: Builder, options: CGOptions, rhs: Tensor, *params: Tensor):
        operator, preconditioner = build(*params)
        x, result = solve(operator, rhs, options, preconditioner)
        ctx.build, ctx.options, ctx.operator, ctx.preconditioner = build, options, operator, preconditioner
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
        y, _ = solve(ctx.operator, dx.to(x.dtype), ctx.options, ctx.preconditioner)
        needs = ctx.needs_input_grad[3:]
        param_grads: list[Tensor | None] = [None] * len(params)
        if any(needs) and hasattr(ctx.operator, "vjp"):  # a hand-written VJP: no autograd inside a backward
            grads = ctx.operator.vjp(x, -y)
            param_grads = [g if n else None for g, n in zip(grads, needs)]
        elif any(needs):
            with torch.enable_grad():
                leaves = [p.detach().requires_grad_(n) for p, n in zip(params, needs)]
                ax = ctx.build(*leaves, preconditioned=False)[0].matvec(x)
                wanted = [leaf for leaf in leaves if leaf.requires_grad]
                grads = iter(torch.autograd.grad(ax, wanted, grad_outputs=-y, allow_unused=True))
                param_grads = [next(grads) if n else None for n in needs]
        d_rhs = y if ctx.needs_input_grad[2] else None
        return (None, None, d_rhs, *param_grads)


def implicit_solve(build: Builder, rhs: Tensor, params: Sequence[Tensor], options: CGOptions) -> tuple[Tensor, CGResult]:
    """Differentiable ``x = A(params)^{-1} rhs`` solved by preconditioned CG.

    ``build(*params, preconditioned=True)`` returns ``(operator, preconditioner or None)``; it is called
    again with ``preconditioned=False`` (and leaves that require grad) for the backward's VJP.
    Gradients reach ``rhs`` and every tensor in ``params`` (through ``operator.matvec``).
    """
    x, iterations, residual = _ImplicitSolve.apply(build, options, rhs, *params)
    return x, CGResult(iterations=iterations, relative_residual=residual)
