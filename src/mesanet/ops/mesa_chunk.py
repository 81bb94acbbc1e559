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
from .numerics import CG_BLOCK_BYTES, CG_VECTORS_PER_SYSTEM


class ChunkOperator:
    """``(H_t + Lambda)`` for every token row of every chunk (design section 2, first line).

    ``k [NC, H, C, Dk]``, ``decay [NC, H, C]`` (= ``exp(b)``), ``mix [NC, H, C, C]`` (= ``M``),
    ``lam [H, Dk]``, ``h_in [NC, H, Dk, Dk]`` (key state entering each chunk). Chunks are independent
    systems given ``h_in``, so CG may run on blocks of chunks (:meth:`restrict`).
    """

    def __init__(self, k: Tensor, decay: Tensor, mix: Tensor, lam: Tensor, h_in: Tensor):
        # contiguous once, so the per-step batched matmuls never copy
        self.k, self.decay, self.mix, self.h_in = k.contiguous(), decay.contiguous(), mix.contiguous(), h_in.contiguous()
        self.lam_raw = lam
        self.lam = lam.unsqueeze(-2)  # [H, 1, Dk]

    def matvec(self, p: Tensor) -> Tensor:
        """``p [NC, H, C, Dk] -> (H_t + Lambda) p_t`` per row: one GLA pass with v := k."""
        if torch.is_grad_enabled():  # differentiable path (the backward's VJP): no in-place ops
            inter = torch.matmul(p, self.h_in.mT) * self.decay.unsqueeze(-1)  # exp(b_t) H_c p_t
            intra = torch.matmul(torch.matmul(p, self.k.mT) * self.mix, self.k)  # sum_i M[t,i] k_i k_i^T p_t
            return inter + intra + p * self.lam
        nc, h, c, dk = p.shape
        p3, k3 = p.reshape(nc * h, c, dk), self.k.reshape(nc * h, c, dk)  # [NC*H, C, Dk]
        out = torch.bmm(p3, self.h_in.reshape(nc * h, dk, dk).mT)  # H_c p_t (h_in symmetric or not)
        out.mul_(self.decay.reshape(nc * h, c, 1))
        scores = torch.bmm(p3, k3.mT).mul_(self.mix.reshape(nc * h, c, c))  # M[t,i] k_i^T p_t  [NC*H, C, C]
        out.baddbmm_(scores, k3)
        return out.view(nc, h, c, dk).addcmul_(p, self.lam)

    def diagonal(self) -> Tensor:
        """``diag(H_t + Lambda)`` per row: ``[NC, H, C, Dk]``."""
        h_diag = self.h_in.diagonal(dim1=-2, dim2=-1).unsqueeze(-2)  # [NC, H, 1, Dk]
        return h_diag * self.decay.unsqueeze(-1) + torch.matmul(self.mix, self.k * self.k) + self.lam

    def restrict(self, rows: slice) -> "ChunkOperator":
        """The operator of chunks ``rows`` only."""
        return ChunkOperator(self.k[rows], self.decay[rows], self.mix[rows], self.lam_raw, self.h_in[rows])

    def rows_per_block(self) -> int:
        """Chunks per CG block: equal blocks whose working set stays cache-resident."""
        nc, h, c, dk = self.k.shape
        per_chunk = h * (CG_VECTORS_PER_SYSTEM * c * dk + dk * dk + 2 * c * c) * self.k.element_size()
        blocks = -(-nc * per_chunk // CG_BLOCK_BYTES)
        return -(-nc // blocks)


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
