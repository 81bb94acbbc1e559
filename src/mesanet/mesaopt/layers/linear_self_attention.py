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
from torch import Tensor

from mesanet.layers.head_projections import HeadProjections
from mesanet.ops.linear_attention import linear_attention_from_products

__all__ = ["LinearSelfAttention"]


class LinearSelfAttention(HeadProjections):
    """``LinearSelfAttention(dim, num_heads, key_size, value_size=None, init_std=0.05)``; ``value_size`` defaults
    to ``key_size`` (weights: :class:`HeadProjections`)."""

    def kq_products(self) -> Tensor:
        """``W_k^T W_q`` per head, ``[H, D, D]``."""
        return self.w_k.transpose(-1, -2) @ self.w_q

    def pv_products(self) -> Tensor:
        """``P W_v`` per head, ``[H, D, D]``."""
        return self.proj @ self.w_v

    def forward(self, x: Tensor, products: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """``x [B, T, D] -> delta [B, T, D]``; ``products=(kq [H', D, D], pv [H', D, D])`` replaces the weights."""
        self.check_input(x)
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
