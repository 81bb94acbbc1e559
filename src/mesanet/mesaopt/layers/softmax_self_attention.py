"""Plain causal softmax multi-head self-attention (no RoPE, no biases) for the mesa-optimization models.

``x [B, T, D] -> delta [B, T, D]``: per head ``q, k = W_q x, W_k x [.., Dk]``, ``v = W_v x [.., Dv]``,
``a = softmax(q k^T / sqrt(Dk) + causal mask)``, ``delta = sum_h P_h a_h v_h``. Positions come from the
model's (additive) positional encoding. With ``record_attention = True`` (or ``forward(x, record=True)``)
the probabilities of the last call are kept in ``last_attention [B, H, T(query), T(key)]`` (detached),
for attention maps.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from mesanet.layers.head_projections import HeadProjections

__all__ = ["SoftmaxSelfAttention"]


class SoftmaxSelfAttention(HeadProjections):
    """``SoftmaxSelfAttention(dim, num_heads, key_size, value_size=None, init_std=0.05)`` (weights:
    :class:`HeadProjections`)."""

    def __init__(self, dim: int, num_heads: int, key_size: int, value_size: Optional[int] = None, init_std: float = 0.05) -> None:
        super().__init__(dim, num_heads, key_size, value_size, init_std)
        self.record_attention = False
        self.last_attention: Optional[Tensor] = None

    def forward(self, x: Tensor, record: Optional[bool] = None) -> Tensor:
        """``x [B, T, D] -> delta [B, T, D]``; ``record`` (default ``self.record_attention``) keeps ``last_attention``."""
        self.check_input(x)
        q = torch.einsum("hkd,btd->bhtk", self.w_q, x)
        k = torch.einsum("hkd,btd->bhtk", self.w_k, x)
        v = torch.einsum("hvd,btd->bhtv", self.w_v, x)
        t_len = x.shape[1]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.key_size)
        mask = torch.ones(t_len, t_len, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1)  # [B, H, T, T]
        if self.record_attention if record is None else record:
            self.last_attention = attn.detach()
        return torch.einsum("hdv,bhtv->btd", self.proj, attn @ v)
