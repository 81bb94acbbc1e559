"""The FLOP model of the chunkwise Mesa forward, stated once (checked against
``torch.utils.flop_counter.FlopCounterMode`` in ``tests/benchmarks/test_bench_flops.py``).

Per token and head, with key size ``d``, value size ``dv``, chunk ``C`` and ``s`` batched CG steps::

    states  = 2 d (d + dv)                  chunk state update K^T diag(w) [K | V]
    matvec  = 2 d^2 + 4 C d                 exp(b) (P H_c^T) + (M o (P K^T)) K: one operator application
    solve   = (s + 1) matvec                +1: the initial residual q - A x0
    precond = 0                             "none"
              2 C d                         "jacobi": the diagonal M (K o K) (applying it is element-wise)
              (s + 2) 2 d^2 + 2 d^2         "chunk": r P^{-1} for x0, z0 and once per step; the own keys K^T W K
              (s + 2)(2 d^2 + 4 n d)        "chunk-keys" with blocks of n tokens: r [P^{-1} | F^T], scores F
              + 2 d^2 + 2 n d                 and its setup F = W^{1/2} K P^{-1}, F K^T W^{1/2}
              + 2 d^2 if n < C              refreshed blocks ("chunk" or "chunk-keys"): the block updates K^T W K
    output  = 2 d dv + 2 C d + 2 C dv       exp(b) (X S_c) + (M o (X K^T)) V
    total   = states + solve + precond + output

With blocks of ``n`` tokens that do not divide ``C``, the preconditioner's terms count ``ceil(C / n) n`` rows per
chunk (the last block is padded), so the count per token is given per chunk divided by ``C``.

A multiply-add counts as 2 FLOPs; only matrix products are counted, as ``FlopCounterMode`` counts them:
element-wise work (gates, masks, CG vector updates and dot products), the chunk-boundary state
recurrence and the exponentials are left out, and so are the chunk preconditioner's factorisations
(the inverse of a ``d x d`` matrix per block and head, about ``4/3 d^3 / n`` per token: 5.5k of ~0.8M FLOPs at
d = C = n = 64; with "chunk-keys" also the Cholesky factor of an ``n x n`` matrix and a triangular solve). The intra-chunk ``C x C`` products are
counted dense, as computed (the causal mask halves the *useful* work). Tokens are counted after
padding ``T`` up to a multiple of the chunk (``min(C, T)``). ``s`` is the number of steps the batched
loop ran: ``stats.max_iterations`` (the loop stops once every system has; on a CPU the solve runs in
cache-sized blocks of chunks that stop separately, so this is an upper bound there). The peer's
``naive_mesa_net_CG`` computes the same products with ``s = max_CG_iteration`` and no preconditioner.
"""

from __future__ import annotations

import math

PRECONDITIONERS = ("none", "jacobi", "chunk", "chunk-keys")

FLOP_FORMULA = (
    "forward FLOPs per token per head = 2d(d+dv) [states] + (s+1)(2d^2 + 4Cd) [CG solve] "
    "+ {0 | 2Cd | (s+3) 2d^2 | (s+2)(2d^2 + 4nd) + 2d^2 + 2nd} [preconditioner none | jacobi | chunk | chunk-keys, "
    "blocks of n tokens, + 2d^2 where n < C] + 2d*dv + 2Cd + 2C*dv [output]; "
    "multiply-add = 2 FLOPs, matrix products only (no factorisations), intra-chunk CxC products counted dense, "
    "s = CG steps the batched loop ran (stats.max_iterations), tokens padded to a multiple of C"
)


def _chunk_flops(dk: int, dv: int, chunk: int, cg_steps: int, preconditioner: str, block: int | None) -> int:
    """Matrix-product FLOPs of the chunkwise forward per chunk and head (see the module docstring)."""
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(f"preconditioner: expected one of {PRECONDITIONERS}, got {preconditioner!r}")
    n = chunk if block is None else min(block, chunk)
    rows = -(-chunk // n) * n  # the preconditioner's rows: the last block padded
    states = 2 * dk * (dk + dv)
    matvec = 2 * dk * dk + 4 * chunk * dk
    solve = (cg_steps + 1) * matvec
    output = 2 * dk * dv + 2 * chunk * dk + 2 * chunk * dv
    diagonal = 2 * chunk * dk if preconditioner == "jacobi" else 0  # M (K o K), per token
    refresh = 2 * dk * dk if n < chunk and preconditioner in ("chunk", "chunk-keys") else 0
    block_rows = {  # per row of the preconditioner's blocks
        "none": 0,
        "jacobi": 0,
        "chunk": (cg_steps + 2) * 2 * dk * dk + 2 * dk * dk,  # + the block's own keys in P
        "chunk-keys": (cg_steps + 2) * (2 * dk * dk + 4 * n * dk) + 2 * dk * dk + 2 * n * dk,
    }[preconditioner]
    return chunk * (states + solve + output + diagonal) + rows * (block_rows + refresh)


def forward_flops_per_token_head(
    dk: int, dv: int, chunk: int, cg_steps: int, preconditioner: str = "none", block: int | None = None
) -> float:
    """Matrix-product FLOPs of the chunkwise forward per token and head (see the module docstring)."""
    return _chunk_flops(dk, dv, chunk, cg_steps, preconditioner, block) / chunk


def forward_flops(
    batch: int,
    heads: int,
    length: int,
    dk: int,
    dv: int,
    chunk: int,
    cg_steps: int,
    preconditioner: str = "none",
    block: int | None = None,
) -> int:
    """Forward FLOPs of one ``mesa`` call on ``[batch, length, heads, *]`` inputs (``block``: ``precondition_every``)."""
    chunk = min(chunk, length)
    chunks = math.ceil(length / chunk)
    return _chunk_flops(dk, dv, chunk, cg_steps, preconditioner, block) * chunks * batch * heads
