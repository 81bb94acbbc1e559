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
from torch import Tensor, nn

__all__ = ["SoftmaxSelfAttention"]


class SoftmaxSelfAttention(nn.Module):
    """``SoftmaxSelfAttention(dim, num_heads, key_size, value_size=None, init_std=0.05)``."""

    def __init__(self, dim: int, num_heads: int, key_size: int, value_size: Optional[int] = None,
                 init_std: float = 0.05) -> None:
        super().__init__()
        value_size = key_size if value_size is None else value_size
        for name, val in (("dim", dim), ("num_heads", num_heads), ("key_size", key_size), ("value_size", value_size)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"SoftmaxSelfAttention: {name} expected an int >= 1, got {val!r}")
        if not init_std > 0:
            raise ValueError(f"SoftmaxSelfAttention: init_std expected > 0, got {init_std!r}")
        self.dim, self.num_heads, self.key_size, self.value_size = dim, num_heads, key_size, value_size
        self.init_std = float(init_std)
        self.w_q = nn.Parameter(torch.empty(num_heads, key_size, dim))
        self.w_k = nn.Parameter(torch.empty(num_heads, key_size, dim))
        self.w_v = nn.Parameter(torch.empty(num_heads, value_size, dim))
        self.proj = nn.Parameter(torch.empty(num_heads, dim, value_size))
        self.record_attention = False
        self.last_attention: Optional[Tensor] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.w_q, self.w_k, self.w_v, self.proj):
            nn.init.normal_(p, mean=0.0, std=self.init_std)

    def forward(self, x: Tensor, record: Optional[bool] = None) -> Tensor:
        """``x [B, T, D] -> delta [B, T, D]``; ``record`` (default ``self.record_attention``) keeps ``last_attention``."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"SoftmaxSelfAttention: x expected [B, T, {self.dim}], got {tuple(x.shape)}")
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

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, key_size={self.key_size}, value_size={self.value_size}"
