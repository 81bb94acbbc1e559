"""DeltaNet and Gated DeltaNet (``docs/design.md``, "Baseline recurrences"):
``S_t = gamma_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t``.

Chunkwise-parallel form by the WY / UT representation (Yang et al. 2024, "Parallelizing linear
transformers with the delta rule"; Gated DeltaNet, Yang et al. 2025). Writing one step as
``S_t = gamma_t S_{t-1} + k_t u_t^T`` with ``u_t = beta_t (v_t - gamma_t S_{t-1}^T k_t)`` and unrolling
inside a chunk entered with state ``S_0`` (``b`` the chunk-local cumulative log decay):

    u_t = beta_t v_t - beta_t exp(b_t) S_0^T k_t - sum_{i < t} beta_t exp(b_t - b_i) (k_t . k_i) u_i

i.e. ``(I + A) U = diag(beta) V - diag(beta exp(b)) K S_0`` with the strictly lower-triangular
``A[t, i] = beta_t exp(b_t - b_i) (k_t . k_i)``. So ``U = U_0 - W S_0`` with the pseudo-values
``U_0 = (I + A)^{-1} diag(beta) V`` and ``W = (I + A)^{-1} diag(beta exp(b)) K``, both from one unit
lower-triangular solve per chunk, batched over all chunks. Then, per chunk,

    o_t = exp(b_t) S_0^T q_t + sum_{i <= t} exp(b_t - b_i) (q_t . k_i) u_i
    S_C = exp(b_C) S_0 + K^T diag(exp(b_C - b)) U

which needs ``S_0``: only this ``O(C Dk Dv)``-per-chunk step is a Python loop over chunk positions.
Every exponent is ``<= 0`` (causal differences masked before ``exp``), so strong decay underflows.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .chunk_layout import ChunkLayout
from .chunk_recurrence import intra_chunk_decay, run_recurrent_op
from .inputs import LINEAR, prepare_step
from .numerics import DEFAULT_CHUNK_SIZE, without_autocast
from .results import MesaOutput


def delta_rule_chunk_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial: Tensor,
    layout: ChunkLayout,
) -> tuple[Tensor, Tensor]:
    """Chunked (gated) delta rule: ``q, k [NC, H, C, Dk]``, ``v [NC, H, C, Dv]``, ``g, beta [NC, H, C]``,
    ``initial [N, H, Dk, Dv]`` -> ``(o [NC, H, C, Dv], final [N, H, Dk, Dv])``.

    Padding slots (``k = v = 0``, ``beta = g = 0``) leave the state unchanged.
    """
    c, dk, dv = k.shape[-2], k.shape[-1], v.shape[-1]
    b = g.cumsum(-1)  # [NC, H, C]
    decay = intra_chunk_decay(b, torch.ones_like(b))  # [NC, H, C(t), C(i)]: exp(b_t - b_i), i <= t
    # A[t, i] = beta_t exp(b_t - b_i) (k_t . k_i), i < t; the solve reads only the strict lower part.
    a = (torch.matmul(k, k.mT) * decay * beta.unsqueeze(-1)).tril(-1)  # [NC, H, C, C]
    eye = torch.eye(c, dtype=k.dtype, device=k.device)
    rhs = torch.cat([v * beta.unsqueeze(-1), k * (beta * b.exp()).unsqueeze(-1)], dim=-1)  # [NC, H, C, Dv+Dk]
    u0, w = torch.linalg.solve_triangular(a + eye, rhs, upper=False, unitriangular=True).split([dv, dk], dim=-1)

    # Sequential over chunk positions, batched over sequences: [N, NCmax, ...] views, zero past each end
    # (zero U_0, W, K and b_C = 0 there, so the state just carries through).
    u0_s = layout.by_sequence(u0)  # [N, NCmax, H, C, Dv]
    w_s = layout.by_sequence(w)  # [N, NCmax, H, C, Dk]
    kd_s = layout.by_sequence(k * (b[..., -1:] - b).exp().unsqueeze(-1))  # [N, NCmax, H, C, Dk]: exp(b_C - b_i) k_i
    chunk_decay = layout.by_sequence(b[..., -1]).exp()[..., None, None]  # [N, NCmax, H, 1, 1]
    state, entering, pseudo = initial, [], []
    # unbind (one stack in the backward) rather than [:, j] (a full-size zero fill per chunk)
    for u0_j, w_j, kd_j, decay_j in zip(u0_s.unbind(1), w_s.unbind(1), kd_s.unbind(1), chunk_decay.unbind(1)):
        entering.append(state)
        u = u0_j - torch.matmul(w_j, state)  # [N, H, C, Dv]
        pseudo.append(u)
        state = decay_j * state + torch.matmul(kd_j.mT, u)  # [N, H, Dk, Dv]
    s_in = layout.by_chunk(torch.stack(entering, dim=1))  # [NC, H, Dk, Dv]
    u = layout.by_chunk(torch.stack(pseudo, dim=1))  # [NC, H, C, Dv]

    inter = torch.matmul(q, s_in) * b.exp().unsqueeze(-1)  # [NC, H, C, Dv]
    intra = torch.matmul(torch.matmul(q, k.mT) * decay, u)  # [NC, H, C, Dv]
    return inter + intra, state


@without_autocast
def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor],
    beta: Optional[Tensor],
    *,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    cu_seqlens: Optional[Tensor] = None,
    validate: bool = True,
) -> MesaOutput:
    """(Gated) DeltaNet, chunkwise-parallel: ``S_t = gamma_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``,
    ``o_t = S_t^T q_t``.

    Args:
        q, k: ``[B, T, H, Dk]``. The op does not normalise: the layer should L2-normalise ``k`` (then
            ``beta in [0, 2]`` keeps ``I - beta k k^T`` non-expansive) and scale ``q`` as it likes.
        v: ``[B, T, H, Dv]``.
        g: ``[B, T, H]`` log forget gate ``log gamma <= 0`` (Gated DeltaNet); ``None`` for DeltaNet
            (``gamma = 1``, identical to ``g = 0``).
        beta: ``[B, T, H]`` writing strength (any real; typically a sigmoid); ``None`` for ``beta = 1``.
        initial_state: ``S [N, H, Dk, Dv]``, ``N = B`` (or the number of packed sequences); zeros when
            omitted. Gradients flow into it.
        output_final_state: also return the state after the last token of every sequence.
        chunk_size: tokens per chunk ``C``; any ``T`` works (the last chunk is padded); capped at the
            longest sequence.
        cu_seqlens: ``[N + 1]`` int offsets of ``N`` sequences packed along ``T`` (``B`` must be 1);
            state never crosses a boundary.
        validate: check values (finite, ``g <= 0``) in one host synchronisation, and that the result is
            finite (an overflow of the compute dtype is an error, not a silent NaN); shapes, sizes (all
            ``>= 1``), dtypes and devices are always checked. Every failure raises ``ValueError``.

    Returns:
        :class:`MesaOutput` ``(output [B, T, H, Dv] in v.dtype, final_state, None)``. For this
        single-state op ``final_state`` is the tensor ``S [N, H, Dk, Dv]`` itself (not a tuple), in
        float32 (float64 if any input is float64), or ``None`` unless ``output_final_state``.

    Cost: ``O(T C (Dk + Dv) + T C^2 / 3 + T Dk Dv)`` per head (the ``C x C`` triangular solve per chunk
    included); the only Python loop is over chunk positions. Gradients by autograd through
    ``torch.linalg.solve_triangular``.
    """
    return run_recurrent_op(
        "delta_rule",
        delta_rule_chunk_forward,
        q,
        k,
        v,
        g,
        beta,
        initial_state,
        output_final_state,
        chunk_size,
        cu_seqlens,
        validate,
    )


@without_autocast
def delta_rule_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor],
    beta: Optional[Tensor],
    state: Optional[Tensor] = None,
    *,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """One decoding token of :func:`delta_rule`: ``q, k [B, H, Dk]``, ``v [B, H, Dv]``, ``g, beta [B, H]``
    (or ``None``), ``state S [B, H, Dk, Dv]`` (zeros when omitted) -> ``(o [B, H, Dv] in v.dtype, S')``,
    ``S'`` in float32 (float64 if any input is float64). Differentiable in every input. ``validate`` as in
    :func:`delta_rule` (read in one synchronisation after the step, with the finiteness of ``o`` and ``S'``)."""
    x = prepare_step("delta_rule_step", LINEAR, q, k, v, g, beta, None, state, validate)
    kb = x.k if x.beta is None else x.k * x.beta.unsqueeze(-1)  # beta k  [B, H, Dk]
    if x.state is None:
        new = kb.unsqueeze(-1) * x.v.unsqueeze(-2)
    else:
        # gamma (I - beta k k^T) S + beta k v^T = gamma S + beta k (v - (gamma S)^T k)^T
        decayed = x.decayed(x.state[0])  # gamma S  [B, H, Dk, Dv]
        recalled = torch.matmul(x.k.unsqueeze(-2), decayed).squeeze(-2)  # (gamma S)^T k  [B, H, Dv]
        new = decayed + kb.unsqueeze(-1) * (x.v - recalled).unsqueeze(-2)
    o = torch.matmul(x.q.unsqueeze(-2), new).squeeze(-2)  # S'^T q  [B, H, Dv]
    x.finish({"output": o, "new state": new})
    return o.to(x.out_dtype), new
