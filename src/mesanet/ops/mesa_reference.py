"""Exact sequential Mesa reference: per-token state update and a direct solve. For tests.

Independent of the fast path: no chunking, no CG, gradients by plain autograd through
``torch.linalg.solve``. Run it in float64 when comparing against the chunkwise operator.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def mesa_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    lam: Tensor,
    initial_state: Optional[Tuple[Tensor, Tensor]] = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``q, k [B, T, H, Dk]``, ``v [B, T, H, Dv]``, ``g, beta [B, T, H]``, ``lam [H, Dk]``,
    ``initial_state = (H_kk [B, H, Dk, Dk], S_kv [B, H, Dk, Dv])`` -> ``(o [B, T, H, Dv], (H_kk, S_kv))``.

    Computes in the inputs' dtype (no casting): pass float64 for a reference.
    """
    batch, length, heads, dk = q.shape
    dv = v.shape[-1]
    if initial_state is None:
        h = q.new_zeros((batch, heads, dk, dk))
        s = q.new_zeros((batch, heads, dk, dv))
    else:
        h, s = initial_state
    regulariser = torch.diag_embed(lam)  # [H, Dk, Dk]
    outputs = []
    for t in range(length):
        gamma = g[:, t].exp()[..., None, None]  # [B, H, 1, 1]
        b = beta[:, t][..., None, None]
        k_t = k[:, t]  # [B, H, Dk]
        h = gamma * h + b * k_t.unsqueeze(-1) * k_t.unsqueeze(-2)
        s = gamma * s + b * k_t.unsqueeze(-1) * v[:, t].unsqueeze(-2)
        x = torch.linalg.solve(h + regulariser, q[:, t])  # (H_t + Lambda)^{-1} q_t  [B, H, Dk]
        outputs.append(torch.einsum("bhkv,bhk->bhv", s, x))
    return torch.stack(outputs, dim=1), (h, s)
