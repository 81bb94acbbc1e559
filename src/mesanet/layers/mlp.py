"""Gated SiLU MLP (the MesaNet / LLaMA block MLP)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class GatedMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))``; ``x [B, T, D] -> [B, T, D]``, hidden width ``expansion * D``."""

    def __init__(self, hidden_size: int, expansion: float = 3.0):
        super().__init__()
        inner = int(round(expansion * hidden_size))
        self.gate = nn.Linear(hidden_size, inner, bias=False)
        self.up = nn.Linear(hidden_size, inner, bias=False)
        self.down = nn.Linear(inner, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))
