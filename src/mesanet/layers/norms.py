"""RMSNorm, computed in (at least) float32 whatever the activation dtype."""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Added to the mean square before the reciprocal square root (norm layers only; never inside CG).
RMS_NORM_EPS = 1e-6


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension; also the per-head norm (dim = head size)."""

    def __init__(self, dim: int, eps: float = RMS_NORM_EPS, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)  # float32 at least; float64 stays float64
        x32 = x.to(compute)
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.to(compute)).to(x.dtype)
