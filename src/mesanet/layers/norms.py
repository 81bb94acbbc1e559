"""RMSNorm, computed in float32 whatever the activation dtype."""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Added to the mean square before the reciprocal square root (norm layers only; never inside CG).
RMS_NORM_EPS = 1e-6


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension; also the per-head norm (dim = head size)."""

    def __init__(self, dim: int, eps: float = RMS_NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)
