"""The chunk-entry preconditioner of the chunkwise Mesa solve.

For token ``t`` of a chunk, ``H_t + Lambda = exp(b_t) H_c + Lambda + sum_{i<=t} M[t, i] k_i k_i^T``:
the decayed state that entered the chunk plus a low-rank in-chunk part. The preconditioner is the
first part with one representative decay per chunk, ``P = exp(b_bar) H_c + Lambda``, inverted once
per chunk and head (:func:`spd_inverse`, about ``d^3`` flops) and applied as one batched matmul per CG step.
CG is then left with the in-chunk low-rank part and the spread of ``exp(b_t)`` around ``exp(b_bar)``.

``exp(b_bar)`` is the mean of ``exp(b_t)`` over the chunk: for slowly forgetting heads (where
``H_c`` is large and ``cond(H_t + Lambda)`` grows) ``exp(b_t)`` hardly varies inside a chunk; for
fast-forgetting heads ``H_c`` is bounded by ``1 / (1 - gamma)`` and the system is well conditioned anyway.
The first chunk of a sequence has ``H_c = 0``: ``P = Lambda``, the Jacobi preconditioner of ``Lambda``.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Matrices of at most this order are inverted by LAPACK (Cholesky, then its inverse) in :func:`spd_inverse`;
#: larger ones by 2 x 2 block elimination on top of it. LAPACK handles a batch of small matrices one at a
#: time, which costs more than the flops at d = 64 (measured on the 2-core CPU, 128 matrices of order 64:
#: 4.4 ms single-threaded for Cholesky + inverse, 2.7 ms by blocks with leaves of 32, and about 4x faster
#: with two threads, since the blocks' batched matmuls use both cores).
SPD_INVERSE_LEAF = 32


def spd_inverse(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of a batch of symmetric positive definite matrices ``[..., n, n]`` and a flag per matrix
    ``[...]`` (bool): ``False`` where the matrix is not positive definite in the working precision (its
    inverse is then meaningless).

    ``P = [[A, B], [B^T, D]]`` is inverted through the Schur complement ``S = D - B^T A^{-1} B``
    (positive definite exactly when ``P`` is): with ``X = A^{-1} B`` and ``Y = X S^{-1}``,
    ``P^{-1} = [[A^{-1} + Y X^T, -Y], [-Y^T, S^{-1}]]``; ``A`` and ``S`` recursively, down to orders of
    at most :data:`SPD_INVERSE_LEAF`. This is block Cholesky elimination: as accurate as LAPACK's
    ``potri`` for SPD matrices (relative error ~ eps * cond(P)), in batched matmuls.
    """
    n = matrix.shape[-1]
    if n <= SPD_INVERSE_LEAF:
        factor, info = torch.linalg.cholesky_ex(matrix)
        ok = info == 0
        # a failed factorisation leaves a zero on the factor's diagonal, on which cholesky_inverse raises: invert
        # the identity there instead (the flag says the result is meaningless; the caller falls back)
        factor = torch.where(ok[..., None, None], factor, torch.eye(n, dtype=factor.dtype, device=factor.device))
        return torch.cholesky_inverse(factor), ok
    half = n // 2
    a, b, d = matrix[..., :half, :half], matrix[..., :half, half:], matrix[..., half:, half:]
    a_inv, a_ok = spd_inverse(a)
    x = torch.matmul(a_inv, b)  # A^{-1} B  [..., h, n-h]
    s_inv, s_ok = spd_inverse(d - torch.matmul(b.mT, x))
    y = torch.matmul(x, s_inv)  # A^{-1} B S^{-1}
    top = torch.cat([a_inv + torch.matmul(y, x.mT), -y], dim=-1)
    bottom = torch.cat([-y.mT, s_inv], dim=-1)
    return torch.cat([top, bottom], dim=-2), a_ok & s_ok


class ChunkEntryPreconditioner:
    """``M^{-1} = (exp(b_bar) H_e + Lambda)^{-1}`` per block of ``block`` tokens, chunk and head.

    ``H_e`` is the key state entering the block: the chunk's entering state ``h_in [NC, H, Dk, Dk]`` for the
    first block, and for a later block the state after the token before it (entering state decayed plus
    the chunk's earlier keys). ``k [NC, H, C, Dk]``, ``b [NC, H, C]`` chunk-local cumulative log decay,
    ``beta [NC, H, C]``, ``lam [H, Dk]``. ``apply(r [NC, H, C, Dk])`` multiplies each token's row by its
    block's ``P^{-1}`` (``P`` symmetric). A block whose ``P`` fails to factor (a key state that is not
    positive semi-definite in the working precision) falls back to ``diag(P)^{-1}``, which is always SPD.
    """

    def __init__(self, h_in: Tensor, k: Tensor, b: Tensor, beta: Tensor, lam: Tensor, block: int):
        h_in, k, b, beta, lam = (t.detach() for t in (h_in, k, b, beta, lam))
        c = k.shape[-2]
        self.block, self.length = min(block, c), c
        if self.block == c:  # one block: the chunk's entering state, decayed by the chunk's mean exp(b)
            entering, scale = h_in.unsqueeze(2), b.exp().mean(-1)[..., None]  # [NC, H, 1, Dk, Dk], [NC, H, 1]
        else:
            entering, scale = self._block_states(h_in, k, b, beta)
        matrix = scale[..., None, None] * entering + torch.diag_embed(lam).unsqueeze(1)  # [NC, H, J, Dk, Dk]
        inverse, ok = spd_inverse(matrix)
        inverse = (inverse + inverse.mT) / 2  # symmetric to the last bit: CG needs an SPD M^{-1}
        if not torch.compiler.is_compiling() and not bool(ok.all()):
            fallback = torch.diag_embed(matrix.diagonal(dim1=-2, dim2=-1).reciprocal())
            inverse = torch.where(ok[..., None, None], inverse, fallback)
        self.inverse = inverse.contiguous()  # [NC, H, J, Dk, Dk]

    def _block_states(self, h_in: Tensor, k: Tensor, b: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
        """Key states entering each block ``[NC, H, J, Dk, Dk]`` and each block's mean decay relative to its
        entry ``[NC, H, J]``, by a scan over the ``J`` blocks (``C d^2`` work per chunk in all)."""
        c, blk = self.length, self.block
        pad = (-c) % blk
        # padded tail: no keys (beta = 0), no decay (b constant); only the mean decay must skip it
        b_blocks = torch.nn.functional.pad(b, (0, pad), mode="replicate").unflatten(-1, (-1, blk))  # [NC, H, J, blk]
        beta_blocks = torch.nn.functional.pad(beta, (0, pad)).unflatten(-1, (-1, blk))
        k_blocks = torch.nn.functional.pad(k, (0, 0, 0, pad)).unflatten(-2, (-1, blk))  # [NC, H, J, blk, Dk]
        anchor = torch.nn.functional.pad(b_blocks[..., :-1, -1], (1, 0))  # [NC, H, J] log decay before each block
        weight = (b_blocks[..., -1:] - b_blocks).exp() * beta_blocks  # [NC, H, J, blk] to the block's end
        updates = torch.matmul((k_blocks * weight.unsqueeze(-1)).mT, k_blocks)  # [NC, H, J, Dk, Dk]
        step = (b_blocks[..., -1] - anchor).exp()[..., None, None]  # decay across each block
        state, entering = h_in, []
        for j in range(updates.shape[2]):
            entering.append(state)
            state = step[:, :, j] * state + updates[:, :, j]
        rel = (b_blocks - anchor.unsqueeze(-1)).exp()  # [NC, H, J, blk]
        valid = (torch.arange(c + pad, device=k.device) < c).view(-1, blk).to(rel.dtype)  # [J, blk]
        scale = (rel * valid).sum(-1) / valid.sum(-1)
        return torch.stack(entering, dim=2), scale

    def apply(self, r: Tensor) -> Tensor:
        """``r [NC, H, C, Dk]`` -> ``r P^{-1}`` block by block."""
        if self.inverse.shape[2] == 1:
            return torch.matmul(r, self.inverse[:, :, 0])
        pad = (-self.length) % self.block
        rows = torch.nn.functional.pad(r, (0, 0, 0, pad)).unflatten(-2, (-1, self.block))  # [NC, H, J, blk, Dk]
        out = torch.matmul(rows, self.inverse).flatten(-3, -2)
        return out[..., : self.length, :] if pad else out

    def restrict(self, rows: slice) -> "ChunkEntryPreconditioner":
        out = ChunkEntryPreconditioner.__new__(ChunkEntryPreconditioner)
        out.inverse, out.block, out.length = self.inverse[rows], self.block, self.length
        return out
