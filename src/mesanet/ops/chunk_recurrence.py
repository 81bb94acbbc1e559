"""Shared machinery of the chunkwise recurrences (Mesa, GLA, DeltaNet): design sections 2 and 8.

Every baseline keeps one state ``S [Dk, Dv]`` per head, reads out ``o_t = S_t^T q_t`` and has the
same public boundary as :func:`mesanet.ops.mesa`: ``[B, T, H, D]`` inputs, optional ``cu_seqlens``
packing, float32/float64 compute, output in ``v.dtype``. This module holds that boundary
(validation, casting, chunk packing) once, plus the in-chunk decay matrix and the cross-chunk scan
of a linear (GLA-type) state; the Mesa states ``(H_kk, S_kv)`` are its ``X = [K | V]`` instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from einops import rearrange
from torch import Tensor

from . import checks
from .chunk_layout import ChunkLayout
from .numerics import solver_dtype
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


def linear_chunk_states(k: Tensor, x: Tensor, b: Tensor, beta: Tensor, initial: Tensor, layout: ChunkLayout) -> tuple[Tensor, Tensor]:
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
    """Validate, cast, pack into chunks, run ``forward`` on the chunked layout and unpack.

    ``g = None`` means no forgetting (``gamma = 1``), ``beta = None`` means ``beta = 1``. Shapes, dtypes,
    devices and ``cu_seqlens`` are always checked; with ``validate`` also finiteness and ``g <= 0``.
    Returns ``MesaOutput(o [B, T, H, Dv] in v.dtype, S [N, H, Dk, Dv] in the compute dtype or None, None)``.
    """
    checks.check_chunk_size(where, chunk_size)
    batch, length, heads, dk, dv = checks.check_recurrent_inputs(where, q, k, v, g, beta)
    if initial_state is not None:
        checks.check_tensor(where, "initial_state", initial_state, "N H Dk Dv")
    named = dict(q=q, k=k, v=v, g=g, beta=beta, cu_seqlens=cu_seqlens, initial_state=initial_state)
    checks.check_same_device(where, named)
    if cu_seqlens is not None:
        lengths = checks.check_cu_seqlens(where, cu_seqlens, batch, length, q.device)
    else:
        lengths = [length] * batch
    n = len(lengths)
    if initial_state is not None:
        checks.check_shape(where, "initial_state", initial_state, (n, heads, dk, dv), "N H Dk Dv")
    if validate:
        del named["cu_seqlens"]
        checks.check_finite(where, named)
        checks.check_log_decay(where, g)

    dtype = solver_dtype(q, k, v, g, beta, initial_state)
    layout = ChunkLayout.from_lengths(lengths, chunk_size, q.device)
    if g is None:
        g = q.new_zeros((batch, length, heads), dtype=dtype)
    if beta is None:
        beta = q.new_ones((batch, length, heads), dtype=dtype)  # padding slots still pack to beta = 0

    def pack(x: Tensor) -> Tensor:  # [B, T, H(, D)] -> [NC, H, C(, D)]
        return layout.pack(rearrange(x.to(dtype), "b t ... -> (b t) ..."))

    if initial_state is None:
        initial = q.new_zeros((n, heads, dk, dv), dtype=dtype)
    else:
        initial = initial_state.to(dtype)
    o, final = forward(pack(q), pack(k), pack(v), pack(g), pack(beta), initial, layout)
    output = layout.unpack(o).reshape(batch, length, heads, dv).to(v.dtype)  # [B, T, H, Dv]
    return MesaOutput(output, final if output_final_state else None, None)


@dataclass(frozen=True)
class StepInputs:
    """One decoding token, cast to the compute dtype: ``q, k [B, H, Dk]``, ``v [B, H, Dv]``,
    ``gamma, beta [B, H, 1, 1]`` (ready to scale a state), ``state [B, H, Dk, Dv]``."""

    q: Tensor
    k: Tensor
    v: Tensor
    gamma: Tensor
    beta: Tensor
    state: Tensor


def prepare_step(where: str, q, k, v, g, beta, state, validate: bool) -> StepInputs:
    """Boundary of the ``*_step`` decoders: checks as :func:`run_recurrent_op`, zeros for a missing state."""
    batch, heads, dk, dv = checks.check_recurrent_step_inputs(where, q, k, v, g, beta, state)
    named = dict(q=q, k=k, v=v, g=g, beta=beta, state=state)
    checks.check_same_device(where, named)
    if validate:
        checks.check_finite(where, named)
        checks.check_log_decay(where, g)
    dtype = solver_dtype(q, k, v, g, beta, state)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    gamma = q.new_ones((batch, heads)) if g is None else g.to(dtype).exp()  # [B, H]
    beta = q.new_ones((batch, heads)) if beta is None else beta.to(dtype)  # [B, H]
    state = q.new_zeros((batch, heads, dk, dv)) if state is None else state.to(dtype)
    return StepInputs(q, k, v, gamma[..., None, None], beta[..., None, None], state)
