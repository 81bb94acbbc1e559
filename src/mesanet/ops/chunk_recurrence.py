"""Shared machinery of the chunkwise recurrences (Mesa, GLA, DeltaNet): ``docs/design.md``, "Chunk form" and "Baseline recurrences".

Every baseline keeps one state ``S [Dk, Dv]`` per head, reads out ``o_t = S_t^T q_t`` and has the
same public boundary as :func:`mesanet.ops.mesa` (:mod:`mesanet.ops.inputs`): ``[B, T, H, D]`` inputs,
optional ``cu_seqlens`` packing, float32/float64 compute, output in ``v.dtype``. This module holds the
in-chunk decay matrix and the cross-chunk scan of a linear (GLA-type) state (the Mesa states
``(H_kk, S_kv)`` are its ``X = [K | V]`` instance), and runs a single-state op on the chunked layout.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .chunk_layout import ChunkLayout
from .inputs import LINEAR, prepare_sequences
from .results import MesaOutput

#: ``(q, k, v [NC, H, C, D], g, beta [NC, H, C], initial [N, H, Dk, Dv], layout) -> (o [NC, H, C, Dv], final [N, H, Dk, Dv])``
ChunkForward = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, ChunkLayout], "tuple[Tensor, Tensor]"]


def intra_chunk_decay(b: Tensor, beta: Tensor) -> Tensor:
    """``M[t, i] = exp(b_t - b_i) * beta_i`` for ``i <= t``, else 0. ``b, beta [..., C] -> [..., C, C]``.

    Only differences of the chunk-local cumulative log decay are exponentiated (never ``exp(-b)``),
    so strong decay underflows to 0 instead of overflowing.
    """
    c = b.shape[-1]
    causal = torch.ones(c, c, dtype=torch.bool, device=b.device).tril()
    diff = (b.unsqueeze(-1) - b.unsqueeze(-2)).masked_fill(~causal, float("-inf"))  # [..., C(t), C(i)]
    return diff.exp() * beta.unsqueeze(-2)


def linear_chunk_states(
    k: Tensor, x: Tensor, b: Tensor, beta: Tensor, initial: Tensor, layout: ChunkLayout
) -> tuple[Tensor, Tensor]:
    """States entering every chunk ``[NC, H, Dk, Dx]`` and the final state per sequence ``[N, H, Dk, Dx]``
    of ``S_t = exp(g_t) S_{t-1} + beta_t k_t x_t^T``.

    ``k [NC, H, C, Dk]``, ``x [NC, H, C, Dx]``, ``b [NC, H, C]`` chunk-local cumulative log decay,
    ``beta [NC, H, C]``, ``initial [N, H, Dk, Dx]``. Per chunk:
    ``S' = exp(b_C) S + K^T diag(exp(b_C - b) beta) X`` (only non-positive exponents). The chunk
    updates are batched; only the ``NCmax``-step scan over chunk positions is a Python loop.
    """
    weight = (b[..., -1:] - b).exp() * beta  # [NC, H, C]
    update = torch.matmul((k * weight.unsqueeze(-1)).mT, x)  # [NC, H, Dk, Dx]
    update = layout.by_sequence(update)  # [N, NCmax, H, Dk, Dx], zero past each sequence's end
    decay = layout.by_sequence(b[..., -1]).exp()[..., None, None]  # [N, NCmax, H, 1, 1], 1 past the end
    state, entering = initial, []
    # unbind, not update[:, j]: the backward of one unbind is one stack, of NCmax selects NCmax full-size zero fills
    for decay_j, update_j in zip(decay.unbind(1), update.unbind(1)):
        entering.append(state)
        state = decay_j * state + update_j
    return layout.by_chunk(torch.stack(entering, dim=1)), state


def run_recurrent_op(
    where: str,
    forward: ChunkForward,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor],
    beta: Optional[Tensor],
    initial_state: Optional[Tensor],
    output_final_state: bool,
    chunk_size: int,
    cu_seqlens: Optional[Tensor],
    validate: bool,
) -> MesaOutput:
    """A single-state op on the shared input path: prepare (:func:`~mesanet.ops.inputs.prepare_sequences`),
    pack into chunks, run ``forward`` on the chunked layout, unpack and check the result.

    ``g = None`` means no forgetting (``gamma = 1``), ``beta = None`` means ``beta = 1``.
    Returns ``MesaOutput(o [B, T, H, Dv] in v.dtype, S [N, H, Dk, Dv] in the compute dtype or None, None)``.
    """
    x = prepare_sequences(
        where, LINEAR, q, k, v, g, beta, None, initial_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size, validate=validate
    )
    layout = x.layout(chunk_size)
    (initial,) = x.initial_state()
    o, final = forward(
        x.pack(layout, x.q),
        x.pack(layout, x.k),
        x.pack(layout, x.v),
        x.pack(layout, x.g),
        x.pack(layout, x.beta),
        initial,
        layout,
    )  # padding slots pack to beta = 0
    output = x.unpack(layout, o)  # [B, T, H, Dv]
    x.check_results(output=output, **{"final state": final})
    return MesaOutput(output.to(x.out_dtype), final if output_final_state else None, None)
