"""``mesa_step``: one-token Mesa decoding on the states ``(H_kk, S_kv)`` (``docs/design.md``, "Decoding").

Per token and head: ``H' = gamma H + beta k k^T``, ``S' = gamma S + beta k v^T``, then solve
``(H' + Lambda) x = q`` and read out ``o = S'^T x``. The cost is fixed by the head size (the states
are ``Dk x Dk`` and ``Dk x Dv`` whatever the context length), dominated by the solve: one Cholesky
factorisation (``Dk^3 / 3`` flops, exact) or ``<= max_iter`` CG steps of ``2 Dk^2`` flops each.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import checks
from .cg import CGOptions, DiagonalPreconditioner, implicit_solve
from .inputs import MESA, Step, prepare_step
from .numerics import without_autocast
from .results import MesaOutput, SolverStats
from .solver_settings import INFERENCE, SolverSettings, as_settings


class DenseOperator:
    """``(H + diag(lam))`` with a materialised key state ``h [B, H, Dk, Dk]``, ``lam [H, Dk]``."""

    def __init__(self, h: Tensor, lam: Tensor):
        self.h, self.lam = h, lam

    def matvec(self, p: Tensor) -> Tensor:
        """``p [B, H, Dk] -> (H + Lambda) p``."""
        return torch.matmul(self.h, p.unsqueeze(-1)).squeeze(-1).addcmul(p, self.lam)

    def diagonal(self) -> Tensor:
        return self.h.diagonal(dim1=-2, dim2=-1) + self.lam

    def vjp(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Gradients of ``<u, (H + Lambda) x>`` w.r.t. ``(h, lam)``: ``u x^T`` per system and ``sum_B u o x``."""
        d_lam = (u * x).sum_to_size(self.lam.shape)
        return u.unsqueeze(-1) * x.unsqueeze(-2), d_lam


class DenseSystem:
    """``build`` of :func:`~mesanet.ops.cg.implicit_solve` for the decode step: the dense operator and,
    unless the settings say ``"none"``, the Jacobi preconditioner, so CG starts from the Jacobi-scaled
    query as the chunk form does with ``preconditioner="jacobi"``. (The chunk form's ``"chunk"`` and
    ``"chunk-keys"`` preconditioners invert the whole entering state: for one token that is the direct solve,
    which is ``decode="cholesky"``; CG decoding uses Jacobi for them.)"""

    def __init__(self, preconditioner: str):
        self.preconditioner = preconditioner

    def __call__(self, h: Tensor, lam: Tensor, preconditioned: bool = True):
        operator = DenseOperator(h, lam)
        if not preconditioned or self.preconditioner == "none":
            return operator, None
        return operator, DiagonalPreconditioner(operator.diagonal())


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
    solver: Optional[SolverSettings] = None,
    return_stats: bool = False,
    validate: bool = True,
) -> MesaOutput:
    """Advance the Mesa states by one token and read out; constant time and memory in the context length.

    Args:
        q, k: ``[B, H, Dk]``; v: ``[B, H, Dv]``; g (log forget gate, ``<= 0``), beta (``>= 0``): ``[B, H]``;
        lam: ``[H, Dk]``, ``> 0``.
        state: ``(H_kk [B, H, Dk, Dk], S_kv [B, H, Dk, Dv])``, zeros when omitted.
        solver: :class:`~mesanet.ops.solver_settings.SolverSettings` (default
            :data:`~mesanet.ops.solver_settings.INFERENCE`). ``decode="cholesky"``: exact direct solve
            (one Cholesky factorisation per head). ``decode="cg"``: CG with the settings' ``max_iter``,
            ``tol`` and ``check_every``, the chunk form's stopping rule, from the Jacobi-scaled query
            (plain CG from ``q`` when ``preconditioner="none"``); implicit backward.
        return_stats: also return :class:`SolverStats` ``[B, H]`` (zeros for the exact Cholesky solve).
        validate: check values (finite, gate ranges, ``lam > 0``, a symmetric ``H_kk`` that leaves
            ``gamma H_kk + beta k k^T + diag(lam)`` positive definite, read off the solve's own Cholesky
            factorisation) and that the result is finite (finite inputs that overflow the solver dtype,
            e.g. keys of size 1e20, are an error, not a silent NaN). All checks are read in one host
            synchronisation after the step. Unlike :func:`~mesanet.ops.mesa`'s initial state, a slightly
            indefinite ``H_kk`` that ``lam`` still regularises passes: the full test costs a second
            factorisation per head, as much as the step itself. A key state returned by a validated step
            and passed back unchanged is not checked symmetric again (see
            :func:`~mesanet.ops.checks.mark_key_state_checked`). Shapes, sizes (all ``>= 1``), dtypes
            (one for ``q, k, v``) and devices are always checked. Each check raises ``ValueError``.

    Returns:
        :class:`MesaOutput` ``(o [B, H, Dv] in v.dtype, (H_kk, S_kv) in the solver dtype, stats or None)``.
        Differentiable in every input and in ``state``. With ``"cholesky"`` the gradient w.r.t. ``H_kk`` is
        the symmetric part of the CG path's (they agree on every symmetric perturbation of the state).
    """
    where = "mesa_step"
    settings = as_settings(solver, INFERENCE, f"{where}: solver")
    step = prepare_step(where, MESA, q, k, v, g, beta, lam, state, validate and not torch.compiler.is_compiling())
    q, k, v, lam = step.q, step.k, step.v, step.lam
    kb = k * step.beta.unsqueeze(-1)  # beta k  [B, H, Dk]
    if step.state is None:
        h = kb.unsqueeze(-1) * k.unsqueeze(-2)  # [B, H, Dk, Dk]
        s = kb.unsqueeze(-1) * v.unsqueeze(-2)  # [B, H, Dk, Dv]
    else:
        gamma = step.g.exp()[..., None, None]  # [B, H, 1, 1]
        h = torch.addcmul(gamma * step.state[0], kb.unsqueeze(-1), k.unsqueeze(-2))
        s = torch.addcmul(gamma * step.state[1], kb.unsqueeze(-1), v.unsqueeze(-2))

    system = None  # H' + Lambda, factored on the Cholesky path; its definiteness is a validation check
    if settings.decode == "cholesky":
        factor, info = torch.linalg.cholesky_ex(h + torch.diag_embed(lam))  # [B, H, Dk, Dk], [B, H]
        x = torch.cholesky_solve(q.unsqueeze(-1), factor)  # [B, H, Dk, 1]
        o = torch.matmul(x.mT, s).squeeze(-2)  # S'^T x  [B, H, Dv]
        system = info
        stats = SolverStats(q.new_zeros(info.shape, dtype=torch.int32), q.new_zeros(info.shape)) if return_stats else None
    else:
        options = CGOptions(settings.max_iter, settings.tol, settings.check_every)
        x, result = implicit_solve(DenseSystem(settings.preconditioner), q, (h, lam), options)
        o = torch.matmul(x.unsqueeze(-2), s).squeeze(-2)
        stats = SolverStats(result.iterations, result.relative_residual) if return_stats else None
        if validate:
            system = torch.linalg.cholesky_ex(h.detach() + torch.diag_embed(lam.detach())).info
    if validate:
        step.finish(
            dict(output=o, **{"new state[0] (H_kk)": h, "new state[1] (S_kv)": s}),
            system,
            lambda: _explain_indefinite(step, h, system),
        )
        if step.pending is not None:  # values were checked (not while compiling)
            checks.mark_key_state_checked(h)  # the next step, given h unchanged, need not check it symmetric again
    return MesaOutput(o.to(step.out_dtype), (h, s), stats)


def _explain_indefinite(step: Step, h: Tensor, info: Tensor) -> None:
    """Valid inputs whose ``H' + Lambda`` has no Cholesky factor: the key state is indefinite beyond
    what ``lam`` regularises. Name the state (or, without one, the system) and say by how much."""
    index = [int(i) for i in (info != 0).nonzero()[0]]
    at = f" at [batch, head] = {index}"
    state = step.raw[-1]
    if state is not None:
        checks.fail_indefinite(
            step.where,
            "state[0] (H_kk)",
            state[0][tuple(index)],
            "gamma * H_kk + beta k k^T + diag(lam) must have a Cholesky factor",
            at,
        )
    checks.fail_indefinite(
        step.where, "H_kk' + diag(lam)", h[tuple(index)] + torch.diag(step.lam[index[1]]), "positive definite", at
    )
