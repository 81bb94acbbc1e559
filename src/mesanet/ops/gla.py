"""Gated linear attention (GLA with a scalar gate per head, ``docs/design.md``, "Baseline recurrences"):
``S_t = gamma_t S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t``.

Linear attention is ``g = 0``; the Mamba2-style recurrence (``S_t = gamma_t S_{t-1} + k_t v_t^T``)
is ``beta = None`` (``beta = 1``). The chunkwise-parallel form is the Mesa chunk form without the
solve: one masked ``C x C`` attention per chunk plus the decayed state entering it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .chunk_layout import ChunkLayout
from .chunk_recurrence import intra_chunk_decay, linear_chunk_states, run_recurrent_op
from .inputs import LINEAR, prepare_step
from .numerics import DEFAULT_CHUNK_SIZE, without_autocast
from .results import MesaOutput


def gla_chunk_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial: Tensor,
    layout: ChunkLayout,
) -> tuple[Tensor, Tensor]:
    """Chunked GLA: ``q, k [NC, H, C, Dk]``, ``v [NC, H, C, Dv]``, ``g, beta [NC, H, C]``,
    ``initial [N, H, Dk, Dv]`` -> ``(o [NC, H, C, Dv], final [N, H, Dk, Dv])``.

    ``o_t = exp(b_t) S_in^T q_t + sum_{i <= t} exp(b_t - b_i) beta_i (q_t . k_i) v_i`` with ``b`` the
    chunk-local cumulative log decay.
    """
    b = g.cumsum(-1)  # [NC, H, C]
    mix = intra_chunk_decay(b, beta)  # [NC, H, C(t), C(i)]
    entering, final = linear_chunk_states(k, v, b, beta, initial, layout)  # [NC, H, Dk, Dv], [N, H, Dk, Dv]
    inter = torch.matmul(q, entering) * b.exp().unsqueeze(-1)  # [NC, H, C, Dv]
    intra = torch.matmul(torch.matmul(q, k.mT) * mix, v)  # [NC, H, C, Dv]
    return inter + intra, final


@without_autocast
def gla(
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
    """Gated linear attention, chunkwise-parallel: ``S_t = gamma_t S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t``.

    Args:
        q, k: ``[B, T, H, Dk]`` (no ``1/sqrt(Dk)`` scaling or normalisation is applied here).
        v: ``[B, T, H, Dv]``.
        g: ``[B, T, H]`` log forget gate ``log gamma <= 0``; ``None`` for no forgetting (linear attention).
        beta: ``[B, T, H]`` input gate (any real); ``None`` for ``beta = 1`` (Mamba2-style).
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

    Cost: ``O(T C (Dk + Dv) + (T / C) Dk Dv)`` per head; the only Python loop is over chunk positions.
    Gradients by autograd.
    """
    return run_recurrent_op(
        "gla", gla_chunk_forward, q, k, v, g, beta, initial_state, output_final_state, chunk_size, cu_seqlens, validate
    )


@without_autocast
def gla_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor],
    beta: Optional[Tensor],
    state: Optional[Tensor] = None,
    *,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """One decoding token of :func:`gla`: ``q, k [B, H, Dk]``, ``v [B, H, Dv]``, ``g, beta [B, H]`` (or
    ``None``), ``state S [B, H, Dk, Dv]`` (zeros when omitted) -> ``(o [B, H, Dv] in v.dtype, S')``,
    ``S'`` in float32 (float64 if any input is float64). Differentiable in every input. ``validate`` as in
    :func:`gla` (read in one synchronisation after the step, with the finiteness of ``o`` and ``S'``)."""
    x = prepare_step("gla_step", LINEAR, q, k, v, g, beta, None, state, validate)
    kb = x.k if x.beta is None else x.k * x.beta.unsqueeze(-1)  # beta k  [B, H, Dk]
    new = kb.unsqueeze(-1) * x.v.unsqueeze(-2)  # beta k v^T  [B, H, Dk, Dv]
    if x.state is not None:
        new = new + x.decayed(x.state[0])
    o = torch.matmul(x.q.unsqueeze(-2), new).squeeze(-2)  # S'^T q  [B, H, Dv]
    x.finish({"output": o, "new state": new})
    return o.to(x.out_dtype), new
