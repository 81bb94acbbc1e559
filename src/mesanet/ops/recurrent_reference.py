"""Exact sequential references of the baseline recurrences (``docs/design.md``, "Baseline recurrences"). For tests.

A plain Python loop over tokens with the textbook update, independent of the chunk forms (no
chunking, no WY representation, no triangular solve); gradients by plain autograd. Computes in
the inputs' dtype (no casting): pass float64 when comparing against the chunkwise operators.
Shapes as in the legend of :mod:`mesanet.ops` (``[B, T, H, D]``); ``g = None`` means ``gamma = 1``, ``beta = None`` means ``beta = 1``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _initial(q: Tensor, v: Tensor, initial_state: Optional[Tensor]) -> Tensor:
    batch, _, heads, dk = q.shape
    return q.new_zeros((batch, heads, dk, v.shape[-1])) if initial_state is None else initial_state


def _gates(g: Optional[Tensor], beta: Optional[Tensor], t: int) -> tuple[Tensor | float, Tensor | float]:
    """``(gamma_t, beta_t)`` as ``[B, H, 1, 1]`` (or the scalar 1)."""
    gamma = 1.0 if g is None else g[:, t].exp()[..., None, None]
    b = 1.0 if beta is None else beta[:, t][..., None, None]
    return gamma, b


def gla_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor],
    beta: Optional[Tensor],
    initial_state: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """``S_t = gamma_t S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t``.

    ``q, k [B, T, H, Dk]``, ``v [B, T, H, Dv]``, ``g, beta [B, T, H]``, ``initial_state [B, H, Dk, Dv]``
    -> ``(o [B, T, H, Dv], S [B, H, Dk, Dv])``.
    """
    s = _initial(q, v, initial_state)
    outputs = []
    for t in range(q.shape[1]):
        gamma, b = _gates(g, beta, t)
        s = gamma * s + b * k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)  # [B, H, Dk, Dv]
        outputs.append((s * q[:, t].unsqueeze(-1)).sum(-2))  # S^T q  [B, H, Dv]
    return torch.stack(outputs, dim=1), s


def delta_rule_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor],
    beta: Optional[Tensor],
    initial_state: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """``S_t = gamma_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t``.

    Shapes as :func:`gla_reference`. The transition matrix is materialised as written.
    """
    s = _initial(q, v, initial_state)
    dk = q.shape[-1]
    eye = torch.eye(dk, dtype=q.dtype, device=q.device)
    outputs = []
    for t in range(q.shape[1]):
        gamma, b = _gates(g, beta, t)
        k_t = k[:, t]  # [B, H, Dk]
        transition = gamma * (eye - b * k_t.unsqueeze(-1) * k_t.unsqueeze(-2))  # [B, H, Dk, Dk]
        s = transition @ s + b * k_t.unsqueeze(-1) * v[:, t].unsqueeze(-2)  # [B, H, Dk, Dv]
        outputs.append((s * q[:, t].unsqueeze(-1)).sum(-2))  # S^T q  [B, H, Dv]
    return torch.stack(outputs, dim=1), s
