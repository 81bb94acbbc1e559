"""The chunk-entry preconditioner of the chunkwise Mesa solve.

For token ``t`` of a chunk, ``H_t + Lambda = exp(b_t) H_c + Lambda + sum_{i<=t} M[t, i] k_i k_i^T``:
the decayed state that entered the chunk plus a low-rank in-chunk part. The preconditioner is the
first part with one representative decay per chunk, plus the chunk's keys at a representative weight,
``P = exp(b_bar) H_c + Lambda + s sum_i m_i k_i k_i^T``, inverted once per chunk and head (:func:`spd_inverse`,
about ``d^3`` flops) and applied as one batched matmul per CG step. CG is then left with the spread of the
tokens' matrices around ``P``: of ``exp(b_t)`` around ``exp(b_bar)`` and of each key's weight around
``s m_i``. With ``block`` (``precondition_every``) smaller than the chunk, each block of tokens gets its own ``P``
the same way, from the key state entering the block.

``exp(b_bar)`` is the mean of ``exp(b_t)`` over the chunk: for slowly forgetting heads (where
``H_c`` is large and ``cond(H_t + Lambda)`` grows) ``exp(b_t)`` hardly varies inside a chunk; for
fast-forgetting heads ``H_c`` is bounded by ``1 / (1 - gamma)`` and the system is well conditioned anyway.
The first chunk of a sequence has ``H_c = 0``: ``P`` is ``Lambda`` plus the chunk's keys.

``m_i`` is key ``i``'s mean weight over the block's tokens (``beta_i exp(b_t - b_i)`` where ``t >= i``, zero
before it arrives) and ``s`` is :data:`OWN_KEYS_SHARE` (half: its comment says why).

With ``keys=True`` (``"chunk-keys"``) each block's own keys join its ``P`` (then built without them) as they
arrive: token ``t`` of a block gets ``M_t = P + sum_{i<=t} w_i k_i k_i^T`` with ``w_i = beta_i exp(b_end - b_i)`` (key ``i`` decayed
to the block's end: never more than its true weight ``beta_i exp(b_t - b_i)``, since a preconditioner that
over-estimates ``H_t`` leaves CG eigenvalues near zero). Every ``M_t^{-1}`` comes from one Woodbury identity
per block: with ``F = W^{1/2} K P^{-1}`` and the Cholesky factor ``L`` of ``G = I + W^{1/2} K P^{-1} K^T W^{1/2}``,
the leading ``t x t`` block of ``G`` is ``L_t L_t^T``, so ``M_t^{-1} = P^{-1} - sum_{i<=t} f_i f_i^T`` with
``f_i`` the rows of ``L^{-1} F``: one causal "attention" pass per CG step.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .chunk_recurrence import intra_chunk_decay

#: Matrices of at most this order are inverted by LAPACK (Cholesky, then its inverse) in :func:`spd_inverse`;
#: larger ones by 2 x 2 block elimination on top of it. LAPACK handles a batch of small matrices one at a
#: time, on one thread, which costs more than the flops at d = 64 (measured on the 2-core CPU, 512 matrices of
#: order 64, one / two threads, fastest of 9: LAPACK alone 20.7 / 19.5 ms; by blocks with leaves of 32:
#: 17.3 / 11.0 ms, of 16: 15.4 / 8.6 ms, of 8: 15.0 / 9.1 ms: the blocks' batched matmuls use both cores).
SPD_INVERSE_LEAF = 16

#: Share of its mean weight over the block with which each key of a block enters the block's ``P`` (the
#: ``"chunk"`` preconditioner; ``"chunk-keys"`` adds the keys exactly as they arrive instead). A key is absent
#: from the block's systems before it arrives and present, decaying, after: in ``P`` at weight ``w``, the tokens
#: before it see ``M`` over-estimate ``H_t`` in its direction (CG eigenvalues down to ``lambda / (lambda + w)``),
#: the tokens after it an under-estimate; half of the mean presence balances the two while ``w`` is small
#: against ``Lambda``. Measured on the trained ``make run`` model (``benchmarks/bench_solver_steps.py``, tol 1e-4,
#: every 16 tokens): max CG steps per layer 5/6/6/7 without the keys, 5/6/6/6 at shares 0.3 to 0.7, 6/6/7/6 at
#: the full mean; once per chunk 8/10/10/10 without, 6/8/8/7 at 0.5.
OWN_KEYS_SHARE = 0.5


def spd_inverse(matrix: Tensor, out: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Inverse of a batch of symmetric positive definite matrices ``[..., n, n]`` and a flag per matrix
    ``[...]`` (bool): ``False`` where the matrix is not positive definite in the working precision (its
    inverse is then meaningless). The inverse is exactly symmetric (bit for bit), as CG needs of ``M^{-1}``;
    it is written into ``out`` (any strides) when given.

    ``P = [[A, B], [B^T, D]]`` is inverted through the Schur complement ``S = D - B^T A^{-1} B``
    (positive definite exactly when ``P`` is): with ``X = A^{-1} B`` and ``Y = X S^{-1}``,
    ``P^{-1} = [[A^{-1} + Y X^T, -Y], [-Y^T, S^{-1}]]``; ``A`` and ``S`` recursively, down to orders of
    at most :data:`SPD_INVERSE_LEAF`. This is block Cholesky elimination: as accurate as LAPACK's
    ``potri`` for SPD matrices (relative error ~ eps * cond(P)), in batched matmuls. The blocks are written
    into one output (no concatenation: on a CPU these small batches are bound by memory traffic).
    """
    n = matrix.shape[-1]
    if n <= SPD_INVERSE_LEAF:
        factor, info = torch.linalg.cholesky_ex(matrix)
        ok = info == 0
        if torch.compiler.is_compiling() or factor.device.type != "cpu" or not bool(ok.all()):
            # a failed factorisation leaves a zero on the factor's diagonal, on which cholesky_inverse raises:
            # invert the identity there instead (the flag says the result is meaningless; the caller falls back)
            factor = torch.where(ok[..., None, None], factor, torch.eye(n, dtype=factor.dtype, device=factor.device))
        inverse = torch.cholesky_inverse(factor)  # LAPACK's potri, filled in symmetrically
        return (inverse if out is None else out.copy_(inverse)), ok
    half = n // 2
    a, b, d = matrix[..., :half, :half], matrix[..., :half, half:], matrix[..., half:, half:]
    a_inv, a_ok = spd_inverse(a)
    x = torch.matmul(a_inv, b)  # A^{-1} B  [..., h, n-h]
    out = torch.empty_like(matrix) if out is None else out
    s_inv, s_ok = spd_inverse(torch.matmul(b.mT, x).neg_().add_(d), out=out[..., half:, half:])  # S = D - B^T X
    y = torch.matmul(x, s_inv)  # A^{-1} B S^{-1}
    top_left = torch.matmul(y, x.mT).add_(a_inv)  # symmetric up to rounding: average it with its transpose
    out[..., :half, :half] = top_left
    out[..., :half, :half].add_(top_left.mT).mul_(0.5)
    out[..., :half, half:] = y
    out[..., :half, half:].neg_()
    out[..., half:, :half] = out[..., :half, half:].mT
    return out, a_ok & s_ok


class ChunkEntryPreconditioner:
    """``M^{-1} = (exp(b_bar) H_e + Lambda + s sum_i m_i k_i k_i^T)^{-1}`` per block of ``block`` tokens, chunk and
    head (with ``keys``, ``(exp(b_bar) H_e + Lambda + sum_{i<=t} w_i k_i k_i^T)^{-1}`` per token: module docstring).

    ``H_e`` is the key state entering the block: the chunk's entering state ``h_in [NC, H, Dk, Dk]`` for the
    first block, and for a later block the state after the token before it (entering state decayed plus
    the chunk's earlier keys). ``k [NC, H, C, Dk]``, ``b [NC, H, C]`` chunk-local cumulative log decay,
    ``beta [NC, H, C]``, ``lam [H, Dk]``. ``apply(r [NC, H, C, Dk])`` multiplies each token's row by its
    block's ``P^{-1}`` (``P`` symmetric). A block whose ``P`` fails to factor (a key state that is not
    positive semi-definite in the working precision) falls back to ``diag(P)^{-1}``, with ``Lambda`` for any diagonal
    entry that is not positive (the key state's diagonal is then not that of a covariance): always SPD; a block
    whose Woodbury matrix ``G`` fails to factor keeps ``P^{-1}`` alone.
    """

    def __init__(self, h_in: Tensor, k: Tensor, b: Tensor, beta: Tensor, lam: Tensor, block: int, keys: bool = False):
        h_in, k, b, beta, lam = (t.detach() for t in (h_in, k, b, beta, lam))
        c = k.shape[-2]
        self.block, self.length = min(block, c), c
        # key i of a block reaches row t only for i <= t: the scores of later keys are masked out
        self.later = torch.ones(self.block, self.block, dtype=torch.bool, device=k.device).triu(1)
        b_blocks, k_blocks = self._blocks(b, pad_mode="replicate"), self._blocks(k)  # [NC, H, J, blk(, Dk)]
        beta_blocks = self._blocks(beta)  # [NC, H, J, blk]
        weight = (b_blocks[..., -1:] - b_blocks).exp() * beta_blocks  # [NC, H, J, blk] to the block's end
        # without the Woodbury rows the block's own keys enter P at a share of their mean weight over the block
        own = None if keys else self._mean_weights(b_blocks, beta_blocks) * OWN_KEYS_SHARE  # [NC, H, J, blk]
        matrix = self._block_matrices(h_in, b_blocks, k_blocks, weight, own)  # [NC, H, J, Dk, Dk]
        matrix.diagonal(dim1=-2, dim2=-1).add_(lam.unsqueeze(1))  # + Lambda
        dk = matrix.shape[-1]
        # with keys, [P^{-1} | F^T] side by side: one matmul per step gives both r P^{-1} and the Woodbury scores
        self.right = matrix.new_empty((*matrix.shape[:-1], dk + self.block)) if keys else None  # [NC, H, J, Dk, Dk+blk]
        inverse, ok = spd_inverse(matrix, out=self.right[..., :dk] if keys else None)  # exactly symmetric
        if not torch.compiler.is_compiling() and not bool(ok.all()):
            diagonal = matrix.diagonal(dim1=-2, dim2=-1)  # [NC, H, J, Dk]
            lam_rows = lam[:, None, :].expand_as(diagonal)  # [NC, H, J, Dk]
            fallback = torch.diag_embed(torch.where(diagonal > 0, diagonal, lam_rows).reciprocal())
            inverse.copy_(torch.where(ok[..., None, None], inverse, fallback))
        self.inverse = inverse  # [NC, H, J, Dk, Dk]
        self.keys = None
        if keys:
            self.keys = self._key_rows(inverse, k_blocks, weight)  # [NC, H, J, blk, Dk]
            self.right[..., dk:] = self.keys.mT

    def _blocks(self, x: Tensor, pad_mode: str = "constant") -> Tensor:
        """Per token ``[NC, H, C(, D)]`` -> per block ``[NC, H, J, blk(, D)]``; the tail is padded with zeros
        (no key, ``beta = 0``) or, for the cumulative log decay, its last value (no decay)."""
        pad = (-self.length) % self.block
        if x.dim() == 3:
            x = torch.nn.functional.pad(x, (0, pad), mode=pad_mode) if pad else x
            return x.unflatten(-1, (-1, self.block))
        return (torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x).unflatten(-2, (-1, self.block))

    def _key_rows(self, inverse: Tensor, k_blocks: Tensor, weight: Tensor) -> Tensor:
        """Rows ``f_i`` of ``L^{-1} F`` ``[NC, H, J, blk, Dk]``: the Woodbury correction of each block's keys."""
        scaled = k_blocks * weight.sqrt().unsqueeze(-1)  # W^{1/2} K
        f = torch.matmul(scaled, inverse)  # W^{1/2} K P^{-1}  (P symmetric)
        gram = torch.matmul(f, scaled.mT)  # W^{1/2} K P^{-1} K^T W^{1/2}  [NC, H, J, blk, blk]
        eye = torch.eye(self.block, dtype=f.dtype, device=f.device)
        factor, info = torch.linalg.cholesky_ex((gram + gram.mT) / 2 + eye)
        if not torch.compiler.is_compiling() and not bool(info.any()):  # every block factored (the usual case)
            return torch.linalg.solve_triangular(factor, f, upper=False)
        ok = (info == 0)[..., None, None]
        factor = torch.where(ok, factor, eye)  # a failed factor's zero pivot would poison the triangular solve
        return torch.where(ok, torch.linalg.solve_triangular(factor, f, upper=False), 0)

    def _valid(self, j: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``[J, blk]``: 1 for the chunk's tokens, 0 for the padded tail of the last block."""
        return (torch.arange(j * self.block, device=device) < self.length).view(j, self.block).to(dtype)

    def _mean_weights(self, b_blocks: Tensor, beta_blocks: Tensor) -> Tensor:
        """``[NC, H, J, blk]``: for key ``i``, the mean over the block's tokens ``t`` of its weight in their systems,
        ``M[t, i] = beta_i exp(b_t - b_i) [t >= i]`` (the in-chunk decay matrix, here of each block)."""
        valid = self._valid(b_blocks.shape[-2], b_blocks.device, b_blocks.dtype)  # [J, blk]
        presence = intra_chunk_decay(b_blocks, beta_blocks) * valid.unsqueeze(-1)  # [NC, H, J, blk(t), blk(i)]
        return presence.sum(-2) / valid.sum(-1, keepdim=True)

    def _block_matrices(self, h_in: Tensor, b_blocks: Tensor, k_blocks: Tensor, weight: Tensor, own: Optional[Tensor]) -> Tensor:
        """``exp(b_bar) H_e (+ sum_i own_i k_i k_i^T)`` of every block ``[NC, H, J, Dk, Dk]``: the key state entering
        the block times the block's mean decay relative to its entry (plus its own keys at weights ``own``), by a
        scan over the ``J`` blocks (``C d^2`` work per chunk in all)."""
        anchor = torch.nn.functional.pad(b_blocks[..., :-1, -1], (1, 0))  # [NC, H, J] log decay before each block
        step = (b_blocks[..., -1] - anchor).exp()[..., None, None]  # decay across each block
        rel = (b_blocks - anchor.unsqueeze(-1)).exp()  # [NC, H, J, blk]
        valid = self._valid(b_blocks.shape[-2], rel.device, rel.dtype)  # the mean decay skips the padded tail
        scale = ((rel * valid).sum(-1) / valid.sum(-1))[..., None, None]  # [NC, H, J, 1, 1]
        j_blocks, dk = b_blocks.shape[2], h_in.shape[-1]
        if own is None:
            out = h_in.new_zeros((*b_blocks.shape[:3], dk, dk))
        else:  # every block starts from its own keys' share
            out = torch.matmul((k_blocks * own.unsqueeze(-1)).mT, k_blocks)  # [NC, H, J, Dk, Dk]
        if j_blocks > 1:
            updates = torch.matmul((k_blocks * weight.unsqueeze(-1)).mT, k_blocks)  # [NC, H, J, Dk, Dk]
        state = h_in
        for j in range(j_blocks):
            out[:, :, j].addcmul_(state, scale[:, :, j])
            if j + 1 < j_blocks:
                state = torch.addcmul(updates[:, :, j], step[:, :, j], state)
        return out

    def apply(self, r: Tensor) -> Tensor:
        """``r [NC, H, C, Dk]`` -> ``M_t^{-1} r_t`` for every row, block by block."""
        if self.inverse.shape[2] == 1 and self.keys is None:
            return torch.matmul(r, self.inverse[:, :, 0])
        rows = self._blocks(r)  # [NC, H, J, blk, Dk]
        if self.keys is None:
            out = torch.matmul(rows, self.inverse)
        else:  # r P^{-1} and the scores f_i . r_t in one matmul, then minus sum_{i<=t} f_i (f_i . r_t)
            both = torch.matmul(rows, self.right)  # [NC, H, J, blk, Dk + blk]
            plain, scores = both.split([self.inverse.shape[-1], self.block], dim=-1)
            scores.masked_fill_(self.later, 0)  # [NC, H, J, blk(t), blk(i)]  (a view of the fresh `both`)
            out = torch.matmul(scores, self.keys)
            out = torch.sub(plain, out, out=out)  # r P^{-1} - sum_{i<=t} f_i (f_i . r_t), in place
        out = out.flatten(-3, -2)
        return out[..., : self.length, :] if out.shape[-2] != self.length else out

    def restrict(self, rows: slice) -> "ChunkEntryPreconditioner":
        out = ChunkEntryPreconditioner.__new__(ChunkEntryPreconditioner)
        out.inverse, out.block, out.length, out.later = self.inverse[rows], self.block, self.length, self.later
        out.keys = self.keys[rows] if self.keys is not None else None
        out.right = self.right[rows] if self.right is not None else None
        return out
