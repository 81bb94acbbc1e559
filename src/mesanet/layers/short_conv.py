"""Causal depthwise short convolution over time (width 4 in MesaNet), with a decoding tail."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ShortConvolution(nn.Module):
    """``y_t = act(sum_{j < W} w_j * x_{t-j} (+ b))`` per channel. ``x [B, T, C] -> y [B, T, C]``.

    ``tail [B, W-1, C]``: the inputs before ``x`` (zeros when omitted); the new tail is returned so
    that token-by-token decoding equals one call over the whole sequence. ``mask [B, T]`` (bool,
    True = token) zeroes padded inputs first. ``cu_seqlens`` keeps packed sequences apart.
    """

    def __init__(
        self,
        channels: int,
        width: int = 4,
        activation: Optional[str] = "silu",
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        if activation not in (None, "silu"):
            raise ValueError(f"ShortConvolution: expected activation None or 'silu', got {activation!r}")
        self.channels, self.width, self.activation = channels, width, activation
        self.weight = nn.Parameter(torch.empty(channels, width, **factory))  # weight[:, j] multiplies x_{t-j}
        self.bias = nn.Parameter(torch.zeros(channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.width)  # nn.Conv1d's default for a depthwise kernel (fan_in = W)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(
        self,
        x: Tensor,
        *,
        tail: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
        cu_seqlens: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor]:
        batch, length, channels = x.shape
        lags = self.width - 1
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        if tail is None:
            tail = x.new_zeros((batch, lags, channels))
        elif cu_seqlens is not None:
            raise ValueError("ShortConvolution: a tail cannot be combined with cu_seqlens (packed sequences start fresh)")
        padded = torch.cat([tail.to(x.dtype), x], dim=1)  # [B, W-1+T, C]
        if cu_seqlens is not None:
            # position of every token inside its own sequence; lag j reaches back only if position >= j
            starts = torch.zeros(length, dtype=torch.long, device=x.device)
            starts[cu_seqlens[1:-1].long()] = 1
            seq = starts.cumsum(0)
            position = torch.arange(length, device=x.device) - cu_seqlens.long()[seq]
        y = x * self.weight[:, 0]
        for j in range(1, self.width):
            shifted = padded[:, lags - j : lags - j + length]  # x_{t-j}  [B, T, C]
            if cu_seqlens is not None:
                shifted = shifted * (position >= j).unsqueeze(-1).to(x.dtype)
            y = y + shifted * self.weight[:, j]
        if self.bias is not None:
            y = y + self.bias
        if self.activation == "silu":
            y = F.silu(y)
        return y, padded[:, -lags:] if lags > 0 else padded[:, :0]
