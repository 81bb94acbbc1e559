"""Causal unnormalised multi-head linear self-attention (the Linear-SA layers of the mesa-optimization paper).

``x [B, T, D] -> delta [B, T, D]`` with per-head ``W_q, W_k [H, Dk, D]``, ``W_v [H, Dv, D]``, ``P [H, D, Dv]``::

    delta_t = sum_h P_h sum_{t' <= t} (W_v,h x_{t'}) (W_k,h x_{t'})^T (W_q,h x_t)

No softmax, no normalisation, no biases (paper: biases fixed at zero). The layer returns only the update;
the model adds the residual. ``forward(x, products=(kq, pv))`` runs the same layer with the per-head
products ``W_k^T W_q`` and ``P W_v`` overridden (compression / interpolation experiments).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..ops.linear_attention import linear_attention_from_products

__all__ = ["LinearSelfAttention"]


class LinearSelfAttention(nn.Module):
    """``LinearSelfAttention(dim, num_heads, key_size, value_size=None)``; ``value_size`` defaults to ``key_size``."""

    def __init__(self, dim: int, num_heads: int, key_size: int, value_size: Optional[int] = None,
                 init_std: float = 0.05) -> None:
        super().__init__()
        value_size = key_size if value_size is None else value_size
        for name, val in (("dim", dim), ("num_heads", num_heads), ("key_size", key_size), ("value_size", value_size)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"LinearSelfAttention: {name} expected an int >= 1, got {val!r}")
        if not init_std > 0:
            raise ValueError(f"LinearSelfAttention: init_std expected > 0, got {init_std!r}")
        self.dim, self.num_heads, self.key_size, self.value_size = dim, num_heads, key_size, value_size
        self.init_std = float(init_std)
        self.w_q = nn.Parameter(torch.empty(num_heads, key_size, dim))
        self.w_k = nn.Parameter(torch.empty(num_heads, key_size, dim))
        self.w_v = nn.Parameter(torch.empty(num_heads, value_size, dim))
        self.proj = nn.Parameter(torch.empty(num_heads, dim, value_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.w_q, self.w_k, self.w_v, self.proj):
            nn.init.normal_(p, mean=0.0, std=self.init_std)

    def kq_products(self) -> Tensor:
        """``W_k^T W_q`` per head, ``[H, D, D]``."""
        return self.w_k.transpose(-1, -2) @ self.w_q

    def pv_products(self) -> Tensor:
        """``P W_v`` per head, ``[H, D, D]``."""
        return self.proj @ self.w_v

    def forward(self, x: Tensor, products: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """``x [B, T, D] -> delta [B, T, D]``; ``products=(kq [H', D, D], pv [H', D, D])`` replaces the weights."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"LinearSelfAttention: x expected [B, T, {self.dim}], got {tuple(x.shape)}")
        if products is not None:
            kq, pv = products
            return linear_attention_from_products(x, kq, pv)
        q = torch.einsum("hkd,btd->bhtk", self.w_q, x)
        k = torch.einsum("hkd,btd->bhtk", self.w_k, x)
        v = torch.einsum("hvd,btd->bhtv", self.w_v, x)
        t_len = x.shape[1]
        scores = q @ k.transpose(-1, -2)  # [B, H, T(query), T(key)]
        mask = torch.ones(t_len, t_len, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~mask, 0.0)
        out = scores @ v  # [B, H, T, Dv]
        return torch.einsum("hdv,bhtv->btd", self.proj, out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, key_size={self.key_size}, value_size={self.value_size}"
