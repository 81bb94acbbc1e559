"""Proposition 1 of "Uncovering mesa-optimization algorithms in Transformers": one GD step as linear attention.

Constructed tokens ``e_t = [Phi0 s_t, s_t, s_{t-1}]`` (three blocks of width ``n``; ``Phi0 = 0`` gives the
``[0, s_t, s_{t-1}]`` tokens of ``mesanet.mesaopt.data.dynamics``). A single causal linear self-attention head

    Delta e_t = P W_V sum_{t' <= t} e_{t'} (W_K e_{t'})^T (W_Q e_t)

with ``W_Q = [0, I, 0]``, ``W_K = [0, 0, I]``, ``W_V = [0, I, -Phi0]`` and ``P = [eta I; 0; 0]`` gives
``W_K^T W_Q = [[0,0,0],[0,0,0],[0,I,0]]``, ``P W_V = [[0, eta I, -eta Phi0],[0,0,0],[0,0,0]]`` and

    (e_t + Delta e_t)[first block] = (Phi0 - eta grad L_t(Phi0)) s_t,
    L_t(Phi) = sum_{t' <= t} 1/2 || s_{t'} - Phi s_{t'-1} ||^2        (s_{-1} := 0 at the first position)

i.e. the prediction of ``s_{t+1}`` after one full-batch GD step on every prefix loss, in parallel.
``one_step_gd_prediction`` computes the same quantity directly from the gradient; ``optimal_eta`` fits the
step size in closed form (the prediction is affine in ``eta``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["GDConstruction", "linear_self_attention", "one_step_gd_prediction", "optimal_eta"]


def _split_tokens(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if tokens.dim() != 3 or tokens.shape[-1] % 3 != 0 or tokens.shape[-1] == 0:
        raise ValueError(f"tokens: expected constructed tokens of shape [B, T, 3n] (n >= 1), got {tuple(tokens.shape)}")
    n = tokens.shape[-1] // 3
    return tokens[..., :n], tokens[..., n : 2 * n], tokens[..., 2 * n :]


def _check_eta(eta: float) -> float:
    eta = float(eta)
    if not math.isfinite(eta):
        raise ValueError(f"eta: expected a finite float, got {eta}")
    return eta


def _check_phi0(phi0: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    if phi0 is None:
        return torch.zeros(n, n, dtype=like.dtype, device=like.device)
    if phi0.shape != (n, n):
        raise ValueError(f"phi0: expected shape ({n}, {n}), got {tuple(phi0.shape)}")
    return phi0.to(dtype=like.dtype, device=like.device)


def linear_self_attention(
    tokens: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor, proj: torch.Tensor
) -> torch.Tensor:
    """One causal, unnormalised linear self-attention head with residual: ``e + P W_V sum_{t'<=t} e_{t'} k_{t'}^T q_t``.

    ``tokens [B, T, d]``, ``w_q, w_k [d_k, d]``, ``w_v [d_v, d]``, ``proj [d, d_v]``; returns ``[B, T, d]``.
    """
    if tokens.dim() != 3:
        raise ValueError(f"tokens: expected shape [B, T, d], got {tuple(tokens.shape)}")
    d = tokens.shape[-1]
    if w_q.dim() != 2 or w_k.shape != w_q.shape or w_q.shape[1] != d:
        raise ValueError(f"w_q/w_k: expected equal shapes [d_k, {d}], got {tuple(w_q.shape)} and {tuple(w_k.shape)}")
    if w_v.dim() != 2 or w_v.shape[1] != d or proj.shape != (d, w_v.shape[0]):
        raise ValueError(f"w_v/proj: expected [d_v, {d}] and [{d}, d_v], got {tuple(w_v.shape)} and {tuple(proj.shape)}")
    q, k, v = tokens @ w_q.T, tokens @ w_k.T, tokens @ w_v.T
    scores = q @ k.transpose(-1, -2)  # [B, T(query), T(key)]
    t_len = tokens.shape[1]
    mask = torch.ones(t_len, t_len, dtype=torch.bool, device=tokens.device).tril()
    scores = scores.masked_fill(~mask, 0.0)
    return tokens + (scores @ v) @ proj.T


@dataclass(frozen=True)
class GDConstruction:
    """The Proposition-1 head for state dimension ``n``: weights ``w_q, w_k [n, 3n]``, ``w_v [n, 3n]``, ``proj [3n, n]``."""

    w_q: torch.Tensor
    w_k: torch.Tensor
    w_v: torch.Tensor
    proj: torch.Tensor

    @classmethod
    def build(
        cls, state_dim: int, eta: float, phi0: torch.Tensor | None = None, dtype: torch.dtype = torch.float64
    ) -> "GDConstruction":
        """Weights of the one-step-GD head with learning rate ``eta`` from initial weights ``phi0`` (default 0)."""
        if state_dim < 1:
            raise ValueError(f"state_dim: expected >= 1, got {state_dim}")
        eta = _check_eta(eta)
        n = state_dim
        phi = _check_phi0(phi0, n, torch.empty(0, dtype=dtype))
        eye, zero = torch.eye(n, dtype=dtype), torch.zeros(n, n, dtype=dtype)
        w_q = torch.cat([zero, eye, zero], dim=1)
        w_k = torch.cat([zero, zero, eye], dim=1)
        w_v = torch.cat([zero, eye, -phi], dim=1)
        proj = torch.cat([eta * eye, zero, zero], dim=0)
        return cls(w_q=w_q, w_k=w_k, w_v=w_v, proj=proj)

    @property
    def kq_product(self) -> torch.Tensor:
        """``W_K^T W_Q`` ``[3n, 3n]``."""
        return self.w_k.T @ self.w_q

    @property
    def pv_product(self) -> torch.Tensor:
        """``P W_V`` ``[3n, 3n]``."""
        return self.proj @ self.w_v

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Layer output ``e_t + Delta e_t`` ``[B, T, 3n]``."""
        _split_tokens(tokens)
        if tokens.shape[-1] != self.w_q.shape[1]:
            raise ValueError(f"tokens: expected last dim {self.w_q.shape[1]}, got {tokens.shape[-1]}")
        cast = lambda w: w.to(dtype=tokens.dtype, device=tokens.device)  # noqa: E731
        return linear_self_attention(tokens, cast(self.w_q), cast(self.w_k), cast(self.w_v), cast(self.proj))

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prediction of ``s_{t+1}`` at every position: the first block of the output, ``[B, T, n]``."""
        return self.forward(tokens)[..., : self.w_q.shape[0]]


def _gd_terms(tokens: torch.Tensor, phi0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Phi0 s_t, -grad L_t(Phi0) s_t)`` per position, each ``[B, T, n]``, computed from explicit gradients."""
    _, cur, prev = _split_tokens(tokens)
    phi = _check_phi0(phi0, cur.shape[-1], tokens)
    residual = cur - prev @ phi.T  # s_{t'} - Phi0 s_{t'-1}
    neg_grad = torch.cumsum(residual.unsqueeze(-1) * prev.unsqueeze(-2), dim=1)  # [B, T, n, n]
    return cur @ phi.T, torch.einsum("btij,btj->bti", neg_grad, cur)


def one_step_gd_prediction(tokens: torch.Tensor, eta: float, phi0: torch.Tensor | None = None) -> torch.Tensor:
    """Direct one-step GD: ``W_1,t = Phi0 - eta grad L_t(Phi0)`` on the pairs ``(s_{t'-1}, s_{t'})``, ``t' <= t``;
    returns the predictions ``W_1,t s_t`` of ``s_{t+1}``, ``[B, T, n]``. Only blocks 2 and 3 of ``tokens`` are read.
    """
    eta = _check_eta(eta)
    base, step = _gd_terms(tokens, phi0)
    return base + eta * step


def optimal_eta(tokens: torch.Tensor, targets: torch.Tensor, phi0: torch.Tensor | None = None) -> float:
    """Closed-form least-squares step size: ``argmin_eta sum_{b,t} ||targets - one_step_gd_prediction(tokens, eta)||^2``.

    ``targets`` are the next states for the first ``targets.shape[1]`` positions (``[B, T', n]``, ``T' <= T``;
    typically ``states[:, 1:]`` with ``T' = T - 1``).
    """
    base, step = _gd_terms(tokens, phi0)
    if (
        targets.dim() != 3
        or targets.shape[0] != base.shape[0]
        or targets.shape[2] != base.shape[2]
        or not 1 <= targets.shape[1] <= base.shape[1]
    ):
        raise ValueError(
            f"targets: expected shape [{base.shape[0]}, T' <= {base.shape[1]}, {base.shape[2]}], got {tuple(targets.shape)}"
        )
    t_len = targets.shape[1]
    base, step = base[:, :t_len], step[:, :t_len]
    denom = (step * step).sum()
    if denom <= 0:
        raise ValueError("optimal_eta: the GD step direction is identically zero (all-zero states?); eta is undefined")
    return float(((targets.to(step.dtype) - base) * step).sum() / denom)
