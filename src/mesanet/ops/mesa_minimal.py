"""The chunkwise Mesa layer in one page: read this first, then :mod:`mesanet.ops.mesa_chunk`.

Per head and token (``gamma_t = exp(g_t)``):

    H_t = gamma_t H_{t-1} + beta_t k_t k_t^T      S_t = gamma_t S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T (H_t + diag(lam))^{-1} q_t

Equal-length sequences with ``T`` a multiple of ``chunk_size``, zero initial state, a fixed number
of preconditioned CG steps, forward only (autograd differentiates through the steps). The fast
path :func:`mesanet.ops.mesa` adds packing, any ``T``, initial/final states, early stopping, cache
blocking and the implicit backward; the tests check both against :func:`mesanet.ops.mesa_reference`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor


def mesa_minimal(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, lam: Tensor, chunk_size: int = 64, steps: int = 30
) -> Tensor:
    """``q, k [B, T, H, Dk]``, ``v [B, T, H, Dv]``, ``g, beta [B, T, H]``, ``lam [H, Dk]`` -> ``o [B, T, H, Dv]``."""
    # 1. Chunks: [B, T, H, D] -> [B, H, N, C, D] and gates [B, T, H] -> [B, H, N, C].
    q, k, v = (rearrange(x, "b (n c) h d -> b h n c d", c=chunk_size) for x in (q, k, v))
    g, beta = (rearrange(x, "b (n c) h -> b h n c", c=chunk_size) for x in (g, beta))
    lam = lam[None, :, None, None, :]  # [1, H, 1, 1, Dk]

    # 2. Decay inside a chunk: b_t = sum_{j<=t} g_j; M[t, i] = exp(b_t - b_i) beta_i for i <= t.
    b = g.cumsum(-1)  # [B, H, N, C]
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    mix = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf")).exp() * beta[..., None, :]

    # 3. States entering each chunk: H_c [B, H, N, Dk, Dk], S_c [B, H, N, Dk, Dv] (a scan over chunks).
    weight = ((b[..., -1:] - b).exp() * beta)[..., None]  # exp(b_C - b_i) beta_i  [B, H, N, C, 1]
    h_state = q.new_zeros(*q.shape[:2], q.shape[-1], q.shape[-1])
    s_state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    h_in, s_in = [], []
    for n in range(q.shape[2]):
        h_in.append(h_state)
        s_in.append(s_state)
        chunk_decay = b[:, :, n, -1, None, None].exp()
        h_state = chunk_decay * h_state + (k[:, :, n] * weight[:, :, n]).mT @ k[:, :, n]
        s_state = chunk_decay * s_state + (k[:, :, n] * weight[:, :, n]).mT @ v[:, :, n]
    h_in, s_in = torch.stack(h_in, 2), torch.stack(s_in, 2)
    decay = b.exp()[..., None]  # exp(b_t)  [B, H, N, C, 1]

    # 4. The operator: (H_t + Lambda) p_t for every token of a chunk, all matmuls.
    def A(p: Tensor) -> Tensor:
        return decay * (p @ h_in) + ((p @ k.mT) * mix) @ k + p * lam

    # 5. Preconditioned CG. M^{-1} = (mean_t exp(b_t) H_c + Lambda)^{-1}: the state that entered the
    #    chunk, inverted once per chunk; CG is left with the in-chunk low-rank part. x0 = M^{-1} q.
    m_inv = torch.linalg.inv(decay.mean(-2, keepdim=True) * h_in + torch.diag_embed(lam[:, :, 0]))
    x = q @ m_inv
    r = q - A(x)
    z = r @ m_inv
    p, rz = z, (r * z).sum(-1, keepdim=True)
    for _ in range(steps):  # a system that has converged exactly (r = 0, so p = 0) stays frozen: no 0 / 0
        s = A(p)
        curvature = (p * s).sum(-1, keepdim=True)
        alpha = torch.where(curvature > 0, rz / torch.where(curvature > 0, curvature, 1.0), 0.0)
        x, r = x + alpha * p, r - alpha * s
        z = r @ m_inv
        rz_new = (r * z).sum(-1, keepdim=True)
        p, rz = z + torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1.0), 0.0) * p, rz_new

    # 6. Output: o_t = S_t^T x_t = exp(b_t) S_c^T x_t + sum_{i<=t} M[t, i] (k_i^T x_t) v_i.
    o = decay * (x @ s_in) + ((x @ k.mT) * mix) @ v
    return rearrange(o, "b h n c d -> b (n c) h d")
