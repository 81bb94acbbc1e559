"""Chunkwise-parallel Mesa forward (design sections 2-3) on the chunked layout.

All tensors here are chunked: ``[NC, H, C, D]`` rows, ``[NC, H, C]`` gates, with the states
entering each chunk ``[NC, H, Dk, Dk + Dv]`` (``H_kk`` and ``S_kv`` side by side, since they share
their decay). Everything except the solve is ordinary differentiable tensor code; the solve is
the implicit-differentiation CG of :mod:`mesanet.ops.cg`. Memory is ``O(T d + (T / C) d^2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cg import CGOptions, CGResult, implicit_solve
from .chunk_layout import ChunkLayout
from .chunk_recurrence import intra_chunk_decay, linear_chunk_states


class ChunkOperator:
    """``(H_t + Lambda)`` for every token row of every chunk (design section 2, first line).

    ``k [NC, H, C, Dk]``, ``decay [NC, H, C]`` (= ``exp(b)``), ``mix [NC, H, C, C]`` (= ``M``),
    ``lam [H, Dk]``, ``h_in [NC, H, Dk, Dk]`` (key state entering each chunk).

    One matvec is two matmuls: ``Y = P [H_c^T | K^T]`` scaled by ``[exp(b) | M]``, then
    ``Y_1 + Y_2 K + Lambda P``.
    """

    def __init__(self, k: Tensor, decay: Tensor, mix: Tensor, lam: Tensor, h_in: Tensor):
        dk, c = k.shape[-1], k.shape[-2]
        self.k, self.h_in, self.decay, self.mix = k, h_in, decay.unsqueeze(-1), mix
        self.lam = lam.unsqueeze(-2)  # [H, 1, Dk]
        self.basis = torch.cat([h_in.mT, k.mT], dim=-1)  # [NC, H, Dk, Dk + C]
        self.scale = torch.cat([self.decay.expand(*decay.shape, dk), mix], dim=-1)  # [NC, H, C, Dk + C]
        self.dk = dk

    def matvec(self, p: Tensor) -> Tensor:
        """``p [NC, H, C, Dk] -> (H_t + Lambda) p_t`` per row: one GLA pass with v := k."""
        y = torch.matmul(p, self.basis)  # [NC, H, C, Dk + C]: (H_c p_t | k_i^T p_t)
        if torch.is_grad_enabled():  # differentiable path (the backward's VJP): no in-place ops
            y = y * self.scale
            return y[..., : self.dk] + torch.matmul(y[..., self.dk :], self.k) + p * self.lam
        y.mul_(self.scale)
        out = torch.matmul(y[..., self.dk :], self.k)  # sum_i M[t,i] k_i (k_i^T p_t)
        return out.add_(y[..., : self.dk]).addcmul_(p, self.lam)

    def diagonal(self) -> Tensor:
        """``diag(H_t + Lambda)`` per row: ``[NC, H, C, Dk]``."""
        h_diag = self.h_in.diagonal(dim1=-2, dim2=-1).unsqueeze(-2)  # [NC, H, 1, Dk]
        return h_diag * self.decay + torch.matmul(self.mix, self.k * self.k) + self.lam


def mesa_chunk_forward(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, lam: Tensor, initial: Tensor,
    layout: ChunkLayout, options: CGOptions,
) -> tuple[Tensor, Tensor, CGResult]:
    """Chunked Mesa layer: ``o [NC, H, C, Dv]``, final states ``[N, H, Dk, Dk+Dv]``, CG diagnostics ``[NC, H, C]``."""
    dk = k.shape[-1]
    b = g.cumsum(-1)  # [NC, H, C] chunk-local cumulative log decay
    decay = b.exp()
    mix = intra_chunk_decay(b, beta)  # [NC, H, C, C]
    # H_kk and S_kv share their decay: one scan over [K | V]  -> [NC, H, Dk, Dk+Dv]
    entering, final = linear_chunk_states(k, torch.cat([k, v], dim=-1), b, beta, initial, layout)
    h_in, s_in = entering.split([dk, entering.shape[-1] - dk], dim=-1)
    x, result = implicit_solve(ChunkOperator, q, (k, decay, mix, lam, h_in), options)  # x = q* [NC, H, C, Dk]
    o = torch.matmul(x, s_in) * decay.unsqueeze(-1) + torch.matmul(torch.matmul(x, k.mT) * mix, v)
    return o, final, result
