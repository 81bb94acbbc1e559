"""Chunkwise-parallel Mesa forward (``docs/design.md``, "Chunk form" and "Conjugate gradient") on the chunked layout.

All tensors here are chunked: ``[NC, H, C, D]`` rows, ``[NC, H, C]`` gates, with the states
entering each chunk ``[NC, H, Dk, Dk + Dv]`` (``H_kk`` and ``S_kv`` side by side, since they share
their decay). Everything except the solve is ordinary differentiable tensor code; the solve is
the implicit-differentiation CG of :mod:`mesanet.ops.cg`. Memory is ``O(T d + (T / C) d^2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cg import CGOptions, CGResult, DiagonalPreconditioner, implicit_solve
from .chunk_layout import ChunkLayout
from .chunk_recurrence import intra_chunk_decay, linear_chunk_states
from .numerics import CG_BLOCK_BYTES, CG_VECTORS_PER_SYSTEM
from .preconditioners import ChunkEntryPreconditioner


class ChunkOperator:
    """``(H_t + Lambda)`` for every token row of every chunk (``docs/design.md``, "Chunk form", first line).

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
        nc, h, c, dk = p.shape
        p3, k3 = p.reshape(nc * h, c, dk), self.k.reshape(nc * h, c, dk)  # [NC*H, C, Dk]
        out = torch.bmm(p3, self.h_in.reshape(nc * h, dk, dk).mT)  # H_c p_t (h_in symmetric or not)
        out.mul_(self.decay.reshape(nc * h, c, 1))
        scores = torch.bmm(p3, k3.mT).mul_(self.mix.reshape(nc * h, c, c))  # M[t,i] k_i^T p_t  [NC*H, C, C]
        out.baddbmm_(scores, k3)
        return out.view(nc, h, c, dk).addcmul_(p, self.lam)

    def vjp(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Gradients of ``<u, A(theta) x>`` w.r.t. ``theta = (k, decay, mix, lam, h_in)``, ``x, u [NC, H, C, Dk]``.

        ``A x = decay * (x H_c^T) + (M o (x K^T)) K + x Lambda``; with ``W = M o (x K^T)``:
        ``d H_c = (decay * u)^T x``, ``d decay = rowdot(u, x H_c^T)``, ``d M = (u K^T) o (x K^T)``,
        ``d K = W^T u + ((u K^T) o M)^T x``, ``d lam = sum over chunks and rows of u o x``.
        """
        hx = torch.matmul(x, self.h_in.mT)  # [NC, H, C, Dk]
        d_decay = (u * hx).sum(-1)
        d_h_in = torch.matmul((u * self.decay.unsqueeze(-1)).mT, x)  # [NC, H, Dk, Dk]
        scores = torch.matmul(x, self.k.mT)  # x_t . k_i  [NC, H, C, C]
        u_scores = torch.matmul(u, self.k.mT)  # u_t . k_i
        d_mix = u_scores * scores
        d_k = torch.matmul((scores * self.mix).mT, u) + torch.matmul((u_scores * self.mix).mT, x)
        d_lam = (u * x).sum((0, 2))  # [H, Dk]
        return d_k, d_decay, d_mix, d_lam, d_h_in

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
        # vectors, the entering state and a preconditioner inverse (d^2 each), the decay matrix and the scores
        per_chunk = h * (CG_VECTORS_PER_SYSTEM * c * dk + 2 * dk * dk + 2 * c * c) * self.k.element_size()
        blocks = -(-nc * per_chunk // CG_BLOCK_BYTES)
        return -(-nc // blocks)


class ChunkSystem:
    """``build`` of :func:`~mesanet.ops.cg.implicit_solve`: the chunk operator and the chosen preconditioner."""

    def __init__(self, preconditioner: str, b: Tensor, beta: Tensor, block: int):
        self.preconditioner, self.b, self.beta, self.block = preconditioner, b, beta, block

    def __call__(self, k: Tensor, decay: Tensor, mix: Tensor, lam: Tensor, h_in: Tensor, preconditioned: bool = True):
        operator = ChunkOperator(k, decay, mix, lam, h_in)
        if not preconditioned or self.preconditioner == "none":
            return operator, None
        if self.preconditioner == "jacobi":
            return operator, DiagonalPreconditioner(operator.diagonal())
        keys = self.preconditioner == "chunk-keys"
        return operator, ChunkEntryPreconditioner(h_in, k, self.b, self.beta, lam, self.block, keys=keys)


def mesa_chunk_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    lam: Tensor,
    initial: Tensor,
    layout: ChunkLayout,
    options: CGOptions,
    preconditioner: str = "chunk",
    precondition_block: int = 64,
) -> tuple[Tensor, Tensor, CGResult]:
    """Chunked Mesa layer: ``o [NC, H, C, Dv]``, final states ``[N, H, Dk, Dk+Dv]``, CG diagnostics ``[NC, H, C]``."""
    dk = k.shape[-1]
    b = g.cumsum(-1)  # [NC, H, C] chunk-local cumulative log decay
    decay = b.exp()
    mix = intra_chunk_decay(b, beta)  # [NC, H, C, C]
    # H_kk and S_kv share their decay: one scan over [K | V]  -> [NC, H, Dk, Dk+Dv]
    entering, final = linear_chunk_states(k, torch.cat([k, v], dim=-1), b, beta, initial, layout)
    h_in, s_in = entering.split([dk, entering.shape[-1] - dk], dim=-1)
    x, result = implicit_solve(
        ChunkSystem(preconditioner, b, beta, precondition_block), q, (k, decay, mix, lam, h_in), options
    )  # x = q* [NC, H, C, Dk]
    o = torch.matmul(x, s_in) * decay.unsqueeze(-1) + torch.matmul(torch.matmul(x, k.mT) * mix, v)
    return o, final, result
