"""``mesa``: the public chunkwise-parallel Mesa operator (training and prefill)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from einops import rearrange
from torch import Tensor

from . import checks
from .cg import CGOptions
from .chunk_layout import ChunkLayout
from .mesa_chunk import mesa_chunk_forward
from .numerics import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_ITER, solver_dtype, without_autocast
from .results import MesaOutput, SolverStats


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
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = 0.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    cu_seqlens: Optional[Tensor] = None,
    return_stats: bool = False,
    validate: bool = True,
) -> MesaOutput:
    """The Mesa layer, chunkwise-parallel: ``o_t = S_t^T (H_t + diag(lam))^{-1} q_t``.

    ``H_t = gamma_t H_{t-1} + beta_t k_t k_t^T`` and ``S_t = gamma_t S_{t-1} + beta_t k_t v_t^T`` with
    ``gamma_t = exp(g_t)``; the solve is conjugate gradient, batched over every (batch, head, token).

    Args:
        q, k: ``[B, T, H, Dk]`` queries and keys (the layer L2-normalises them; the op does not).
        v: ``[B, T, H, Dv]`` values.
        g: ``[B, T, H]`` log forget gate ``log gamma <= 0``.
        beta: ``[B, T, H]`` input gate ``>= 0``.
        lam: ``[H, Dk]`` diagonal ridge regulariser, ``> 0``.
        initial_state: ``(H_kk [N, H, Dk, Dk], S_kv [N, H, Dk, Dv])``, ``N = B`` (or the number of packed
            sequences); zeros when omitted. Gradients flow into both.
        output_final_state: also return the states after the last token of every sequence.
        max_iter: CG steps (paper: 30 in training). With ``tol = 0`` every system runs all of them.
        tol: stop a system once ``||q - (H_t + Lambda) x|| <= tol * ||q||`` (paper: 1e-4 at inference);
            the batched iteration ends when every system has stopped.
        chunk_size: tokens per chunk ``C``; any ``T`` works (the last chunk is padded).
        cu_seqlens: ``[N + 1]`` int offsets of ``N`` sequences packed along ``T`` (``B`` must be 1);
            state never crosses a boundary.
        return_stats: also return :class:`SolverStats` (iterations and final relative residual per token).
        validate: check values (finite, gate ranges, ``lam > 0``, symmetric initial key state). Shapes,
            dtypes and devices are always checked. Each check raises ``ValueError``.

    Returns:
        :class:`MesaOutput` ``(output [B, T, H, Dv], final_state or None, stats or None)``.

    Numerics: the solver and states run in float32 (float64 if any input is float64) whatever the
    activation dtype; the output is cast to ``v.dtype``. CG starts from the Jacobi-scaled query
    ``q / diag(H_t + Lambda)``, has no additive epsilons (``mesa`` is exactly homogeneous in ``q``) and
    freezes converged systems. The backward pass is implicit: one adjoint CG solve with the same
    options, no backpropagation through the iterations, so gradients are exact only when the forward
    solve converged; raise ``max_iter`` (or lower ``tol``) for ill-conditioned heads (gamma near 1).
    """
    where = "mesa"
    checks.check_solver_options(where, max_iter, tol, chunk_size)
    batch, length, heads, dk, dv = checks.check_sequence_inputs(where, q, k, v, g, beta, lam, initial_state)
    state_h, state_s = initial_state if initial_state is not None else (None, None)
    named = dict(q=q, k=k, v=v, g=g, beta=beta, lam=lam, initial_state_h=state_h, initial_state_s=state_s)
    checks.check_same_device(where, named)
    if cu_seqlens is not None:
        lengths = checks.check_cu_seqlens(where, cu_seqlens, batch, length, q.device)
    else:
        lengths = [length] * batch
    if initial_state is not None:
        n = len(lengths)
        checks.check_shape(where, "initial_state[0] (H_kk)", state_h, (n, heads, dk, dk), "N H Dk Dk")
        checks.check_shape(where, "initial_state[1] (S_kv)", state_s, (n, heads, dk, dv), "N H Dk Dv")
    if validate:
        checks.check_finite(where, named)
        checks.check_gates(where, g, beta)
        checks.check_lam(where, lam, heads, dk)
        if state_h is not None:
            checks.check_key_state(where, "initial_state[0] (H_kk)", state_h)

    dtype = solver_dtype(q, k, v, g, beta, lam, state_h, state_s)
    layout = ChunkLayout.from_lengths(lengths, chunk_size, q.device)

    def pack(x: Tensor) -> Tensor:  # [B, T, H(, D)] -> [NC, H, C(, D)]
        return layout.pack(rearrange(x.to(dtype), "b t ... -> (b t) ..."))

    if initial_state is None:
        initial = q.new_zeros((len(lengths), heads, dk, dk + dv), dtype=dtype)
    else:
        initial = torch.cat([state_h.to(dtype), state_s.to(dtype)], dim=-1)  # [N, H, Dk, Dk+Dv]
    o, final, result = mesa_chunk_forward(
        pack(q), pack(k), pack(v), pack(g), pack(beta), lam.to(dtype), initial, layout, CGOptions(max_iter, float(tol))
    )

    def unpack(y: Tensor) -> Tensor:  # [NC, H, C(, D)] -> [B, T, H(, D)]
        return layout.unpack(y).reshape(batch, length, *y.shape[1:2], *y.shape[3:])

    output = unpack(o).to(v.dtype)
    final_state = (final[..., :dk].contiguous(), final[..., dk:].contiguous()) if output_final_state else None
    stats = SolverStats(unpack(result.iterations), unpack(result.relative_residual)) if return_stats else None
    return MesaOutput(output, final_state, stats)

