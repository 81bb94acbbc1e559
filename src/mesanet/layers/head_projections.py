"""Per-head projection weights shared by the paper-B attention layers (linear and softmax self-attention)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from mesanet.utils.validation import is_int

__all__ = ["HeadProjections"]


class HeadProjections(nn.Module):
    """Weights ``w_q, w_k [H, key, D]``, ``w_v [H, val, D]`` and ``proj [H, D, val]`` (the paper's ``P``), all
    ``N(0, init_std^2)``; ``value_size`` defaults to ``key_size``. Subclasses implement ``forward``."""

    def __init__(self, dim: int, num_heads: int, key_size: int, value_size: Optional[int] = None, init_std: float = 0.05) -> None:
        super().__init__()
        value_size = key_size if value_size is None else value_size
        name = type(self).__name__
        for field, val in (("dim", dim), ("num_heads", num_heads), ("key_size", key_size), ("value_size", value_size)):
            if not is_int(val, 1):
                raise ValueError(f"{name}: {field} expected an int >= 1, got {val!r}")
        if not init_std > 0:
            raise ValueError(f"{name}: init_std expected > 0, got {init_std!r}")
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

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__}: x expected [B, T, {self.dim}], got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, key_size={self.key_size}, value_size={self.value_size}"
