"""``mesa``: the public chunkwise-parallel Mesa operator (training and prefill)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .cg import CGOptions
from .inputs import MESA, prepare_sequences
from .mesa_chunk import mesa_chunk_forward
from .numerics import DEFAULT_CHUNK_SIZE, without_autocast
from .results import MesaOutput, SolverStats
from .solver_settings import INFERENCE, SolverSettings, as_settings


@without_autocast
def mesa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    lam: Tensor,
    *,
    initial_state: Optional[Tuple[Tensor, Tensor]] = None,
    output_final_state: bool = False,
    solver: Optional[SolverSettings] = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    cu_seqlens: Optional[Tensor] = None,
    return_stats: bool = False,
    validate: bool = True,
) -> MesaOutput:
    """The Mesa layer, chunkwise-parallel: ``o_t = S_t^T (H_t + diag(lam))^{-1} q_t``.

    ``H_t = gamma_t H_{t-1} + beta_t k_t k_t^T`` and ``S_t = gamma_t S_{t-1} + beta_t k_t v_t^T`` with
    ``gamma_t = exp(g_t)``; the solve is preconditioned conjugate gradient, batched over every (batch,
    head, token). The whole algorithm in one page: :func:`mesanet.ops.mesa_minimal.mesa_minimal`
    (``src/mesanet/ops/mesa_minimal.py``); the design: ``docs/design.md``.

    Args:
        q, k: ``[B, T, H, Dk]`` queries and keys (the layer L2-normalises them; the op does not).
        v: ``[B, T, H, Dv]`` values.
        g: ``[B, T, H]`` log forget gate ``log gamma <= 0``.
        beta: ``[B, T, H]`` input gate ``>= 0``.
        lam: ``[H, Dk]`` diagonal ridge regulariser, ``> 0``.
        initial_state: ``(H_kk [N, H, Dk, Dk], S_kv [N, H, Dk, Dv])``, ``N = B`` (or the number of packed
            sequences); zeros when omitted. Gradients flow into both.
        output_final_state: also return the states after the last token of every sequence.
        solver: :class:`~mesanet.ops.solver_settings.SolverSettings` (default
            :data:`~mesanet.ops.solver_settings.INFERENCE`: chunk-preconditioned CG, ``tol = 1e-5``, at
            most 30 steps). A system stops once ``||q - (H_t + Lambda) x|| <= tol * ||q||`` or at the
            working precision's residual floor; the batched iteration ends when every system has stopped.
        chunk_size: tokens per chunk ``C``; any ``T`` works (the last chunk is padded); capped at the
            longest sequence.
        cu_seqlens: ``[N + 1]`` int offsets of ``N`` sequences packed along ``T`` (``B`` must be 1);
            state never crosses a boundary.
        return_stats: also return :class:`SolverStats` (iterations and final relative residual per token).
        validate: check values (finite, gate ranges, ``lam > 0``, an initial key state that is symmetric
            and positive semi-definite, see :data:`~mesanet.ops.numerics.KEY_STATE_PSD_RTOL`) in one host
            synchronisation, and that the result is finite (finite inputs that overflow the solver dtype,
            e.g. keys of size 1e20, are an error, not a silent NaN). Shapes, sizes (all ``>= 1``), dtypes
            and devices are always checked. Each check raises ``ValueError``. Under ``torch.compile`` the
            value checks are skipped (they read a tensor back to the host, a graph break).

    Returns:
        :class:`MesaOutput` ``(output [B, T, H, Dv], final_state or None, stats or None)``.

    Numerics: the solver and states run in float32 (float64 if any input is float64) whatever the
    activation dtype; the output is cast to ``v.dtype``. CG starts from the preconditioned query
    ``M^{-1} q`` (``"jacobi"``: ``q / diag(H_t + Lambda)``), has no additive epsilons (``mesa`` is exactly
    homogeneous in ``q``), and freezes a system at the tolerance or at the residual floor of the working
    precision, so surplus steps never make an answer worse. The backward pass is implicit: one adjoint CG solve with the same
    options, no backpropagation through the iterations, so gradients are exact only when the forward
    solve converged; raise ``max_iter`` (or lower ``tol``) for ill-conditioned heads (gamma near 1).
    """
    where = "mesa"
    settings = as_settings(solver, INFERENCE, f"{where}: solver")
    validate = validate and not torch.compiler.is_compiling()
    x = prepare_sequences(
        where, MESA, q, k, v, g, beta, lam, initial_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size, validate=validate
    )
    dk = x.dk
    layout = x.layout(chunk_size)  # chunk_size = min(chunk_size, max(lengths)): a longer chunk is pure padding
    initial = torch.cat(x.initial_state(), dim=-1)  # H_kk and S_kv side by side  [N, H, Dk, Dk+Dv]
    o, final, result = mesa_chunk_forward(
        x.pack(layout, x.q),
        x.pack(layout, x.k),
        x.pack(layout, x.v),
        x.pack(layout, x.g),
        x.pack(layout, x.beta),
        x.lam,
        initial,
        layout,
        CGOptions(settings.max_iter, settings.tol, settings.check_every),
        settings.preconditioner,
        settings.precondition_every or layout.chunk_size,  # None: refresh the preconditioner once per chunk
    )
    output = x.unpack(layout, o)
    final_state = (final[..., :dk].contiguous(), final[..., dk:].contiguous()) if output_final_state else None
    # the final states too, returned or not: an overflowing key state can leave the output finite but
    # meaningless (CG stops at the first non-finite curvature)
    x.check_results(output=output, **{"final state (H_kk | S_kv)": final})
    stats = SolverStats(x.unpack(layout, result.iterations), x.unpack(layout, result.relative_residual)) if return_stats else None
    return MesaOutput(output.to(x.out_dtype), final_state, stats)
