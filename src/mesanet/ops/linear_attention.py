"""Causal, unnormalised multi-head linear self-attention written in terms of per-head weight products.

For a head with query/key/value projections ``W_q, W_k [Dk, D]``, ``W_v [Dv, D]`` and output projection
``P [D, Dv]`` the layer output depends on the weights only through the products ``KQ = W_k^T W_q`` and
``PV = P W_v`` (both ``[D, D]``)::

    delta_t = sum_h PV_h sum_{t' <= t} x_{t'} (x_{t'}^T KQ_h x_t)

This is the form in which "Uncovering mesa-optimization algorithms in Transformers" states Propositions 1
and 2 and compresses / interpolates trained weights (the factorisation itself is not unique).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["linear_attention_from_products"]


def linear_attention_from_products(x: Tensor, kq: Tensor, pv: Tensor) -> Tensor:
    """``x [B, T, D]``, ``kq [H, D, D]`` (``W_k^T W_q``), ``pv [H, D, D]`` (``P W_v``) -> ``delta [B, T, D]``.

    ``delta_t = sum_h pv_h sum_{t' <= t} x_{t'} (x_{t'}^T kq_h x_t)`` (causal, no normalisation, no residual).
    """
    if x.dim() != 3:
        raise ValueError(f"linear_attention_from_products: x expected [B, T, D], got {tuple(x.shape)}")
    d = x.shape[-1]
    for name, m in (("kq", kq), ("pv", pv)):
        if m.dim() != 3 or m.shape[1:] != (d, d):
            raise ValueError(f"linear_attention_from_products: {name} expected [H, {d}, {d}], got {tuple(m.shape)}")
    if kq.shape[0] != pv.shape[0]:
        raise ValueError(
            f"linear_attention_from_products: kq and pv expected the same number of heads, got {kq.shape[0]} and {pv.shape[0]}"
        )
    t_len = x.shape[1]
    kq, pv = kq.to(x.dtype), pv.to(x.dtype)
    a = torch.einsum("hij,btj->bhti", kq, x)  # kq_h x_t                      [B, H, T, D]
    scores = torch.einsum("bhti,bsi->bhts", a, x)  # x_s^T kq_h x_t           [B, H, T(query), T(key)]
    mask = torch.ones(t_len, t_len, dtype=torch.bool, device=x.device).tril()
    scores = scores.masked_fill(~mask, 0.0)
    u = torch.einsum("bhts,bsd->bhtd", scores, x)  # sum_{s <= t} x_s (...)   [B, H, T, D]
    return torch.einsum("hij,bhtj->bti", pv, u)
