"""``mesa_step``: one-token Mesa decoding on the states ``(H_kk, S_kv)`` (design section 5)."""

from __future__ import annotations

from typing import Literal, Optional, Tuple

import torch
from torch import Tensor

from . import checks
from .cg import CGOptions, implicit_solve
from .numerics import DEFAULT_MAX_ITER, solver_dtype, without_autocast
from .results import MesaOutput, SolverStats


class DenseOperator:
    """``(H + diag(lam))`` with a materialised key state ``h [B, H, Dk, Dk]``, ``lam [H, Dk]``."""

    def __init__(self, h: Tensor, lam: Tensor):
        self.h, self.lam = h, lam

    def matvec(self, p: Tensor) -> Tensor:
        """``p [B, H, Dk] -> (H + Lambda) p``."""
        return torch.einsum("bhij,bhj->bhi", self.h, p) + self.lam * p

    def diagonal(self) -> Tensor:
        return self.h.diagonal(dim1=-2, dim2=-1) + self.lam


@without_autocast
def mesa_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    lam: Tensor,
    state: Optional[Tuple[Tensor, Tensor]] = None,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = 0.0,
    solver: Literal["cg", "cholesky"] = "cg",
    return_stats: bool = False,
    validate: bool = True,
) -> MesaOutput:
    """Advance the Mesa states by one token and read out; constant memory in the context length.

    Args:
        q, k: ``[B, H, Dk]``; v: ``[B, H, Dv]``; g (log forget gate, ``<= 0``), beta (``>= 0``): ``[B, H]``;
        lam: ``[H, Dk]``, ``> 0``.
        state: ``(H_kk [B, H, Dk, Dk], S_kv [B, H, Dk, Dv])``, zeros when omitted.
        max_iter, tol: CG stopping rule, the same convention as :func:`mesanet.ops.mesa` (Jacobi initial
            guess, relative residual ``||r|| <= tol ||q||``, frozen once converged).
        solver: ``"cg"`` (matches the chunk form) or ``"cholesky"`` (exact direct solve, ~d^3/3 flops).
        return_stats, validate: as in :func:`mesanet.ops.mesa`.

    Returns:
        :class:`MesaOutput` ``(o [B, H, Dv] in v.dtype, (H_kk, S_kv) in the solver dtype, stats or None)``.
        Differentiable in every input and in ``state``. With ``"cholesky"`` the gradient w.r.t. ``H_kk`` is
        the symmetric part of the CG path's (they agree on every symmetric perturbation of the state).
    """
    where = "mesa_step"
    checks.check_solver_options(where, max_iter, tol)
    if solver not in ("cg", "cholesky"):
        checks.fail(where, f"expected solver 'cg' or 'cholesky', got {solver!r}")
    q = checks.check_tensor(where, "q", q, "B H Dk")
    batch, heads, dk = q.shape
    checks.check_shape(where, "k", checks.check_tensor(where, "k", k, "B H Dk"), q.shape, "B H Dk")
    v = checks.check_tensor(where, "v", v, "B H Dv")
    dv = v.shape[-1]
    checks.check_shape(where, "v", v, (batch, heads, dv), "B H Dv")
    for name, gate in (("g", g), ("beta", beta)):
        checks.check_shape(where, name, checks.check_tensor(where, name, gate, "B H"), (batch, heads), "B H")
    checks.check_shape(where, "lam", checks.check_tensor(where, "lam", lam, "H Dk"), (heads, dk), "H Dk")
    h, s = state if state is not None else (None, None)
    if state is not None:
        checks.check_shape(where, "state[0] (H_kk)", checks.check_tensor(where, "state[0] (H_kk)", h, "B H Dk Dk"), (batch, heads, dk, dk), "B H Dk Dk")
        checks.check_shape(where, "state[1] (S_kv)", checks.check_tensor(where, "state[1] (S_kv)", s, "B H Dk Dv"), (batch, heads, dk, dv), "B H Dk Dv")
    named = dict(q=q, k=k, v=v, g=g, beta=beta, lam=lam, state_h=h, state_s=s)
    checks.check_same_device(where, named)
    if validate:
        checks.check_finite(where, named)
        checks.check_gates(where, g, beta)
        checks.check_lam(where, lam, heads, dk)
        if h is not None:
            checks.check_key_state(where, "state[0] (H_kk)", h)

    dtype = solver_dtype(q, k, v, g, beta, lam, h, s)
    out_dtype = v.dtype
    q, k, v, g, beta, lam = (t.to(dtype) for t in (q, k, v, g, beta, lam))
    if state is None:
        h = q.new_zeros((batch, heads, dk, dk))
        s = q.new_zeros((batch, heads, dk, dv))
    gamma = g.exp()[..., None, None]  # [B, H, 1, 1]
    h = gamma * h.to(dtype) + beta[..., None, None] * k.unsqueeze(-1) * k.unsqueeze(-2)  # [B, H, Dk, Dk]
    s = gamma * s.to(dtype) + beta[..., None, None] * k.unsqueeze(-1) * v.unsqueeze(-2)  # [B, H, Dk, Dv]
    if solver == "cg":
        x, result = implicit_solve(DenseOperator, q, (h, lam), CGOptions(max_iter, float(tol)))
        stats = SolverStats(result.iterations, result.relative_residual)
    else:
        factor = torch.linalg.cholesky(h + torch.diag_embed(lam))  # [B, H, Dk, Dk]
        x = torch.cholesky_solve(q.unsqueeze(-1), factor).squeeze(-1)
        stats = SolverStats(torch.zeros((batch, heads), dtype=torch.int32, device=q.device), q.new_zeros((batch, heads)))
    o = torch.einsum("bhkv,bhk->bhv", s, x)
    return MesaOutput(o.to(out_dtype), (h, s), stats if return_stats else None)
