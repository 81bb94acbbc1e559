"""Rotary position embedding (RoPE, Su et al. 2021), half-split ("rotate_half") convention.

Channel ``i < D/2`` is paired with channel ``i + D/2`` and the pair is rotated by the angle
``position * base^(-2i/D)``. Angles, cosines and the rotation itself run in float32 (positions of a
few thousand times a frequency near 1 lose their low bits in bf16), float64 for float64 modules;
the result comes back in the input dtype. Positions are arbitrary integers ``[B, T]``, so left-padded rows (positions
``cumsum(mask) - 1`` clamped at 0) and packed sequences (positions restarting at 0) work as they are.

The frequencies are recomputed at every call (``D/2`` numbers) rather than kept in a buffer: a
buffer would be cast by ``module.to(bfloat16)`` and left uninitialised by meta-device loading.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: The RoPE base of the Transformer baselines (Llama-2 convention).
DEFAULT_ROPE_BASE = 10000.0


def rope_inverse_frequencies(dim: int, base: float = DEFAULT_ROPE_BASE, device=None, dtype=torch.float32) -> Tensor:
    """``base^(-2i/dim)`` for ``i < dim/2`` -> ``[dim/2]`` (float32 unless asked otherwise)."""
    exponents = torch.arange(0, dim, 2, dtype=dtype, device=device) / dim  # [dim/2]
    return torch.pow(torch.tensor(float(base), dtype=dtype, device=device), -exponents)


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension (halves of size ``D/2``)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class RotaryEmbedding(nn.Module):
    """Cosines and sines of the rotation angles: ``position_ids [B, T] -> (cos, sin)`` float32 ``[B, T, D]``.

    No parameters; :meth:`apply` rotates ``[B, T, H, D]`` queries or keys at those positions.
    """

    def __init__(self, dim: int, base: float = DEFAULT_ROPE_BASE):
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"RotaryEmbedding: expected a positive even dim, got {dim}")
        if not base > 1.0:
            raise ValueError(f"RotaryEmbedding: expected base > 1, got {base}")
        self.dim, self.base = dim, float(base)

    def reset_parameters(self) -> None:
        """Nothing to reset (no parameters, no buffers)."""

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base:g}"

    def forward(self, position_ids: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``position_ids [B, T]`` -> ``(cos, sin) [B, T, D]`` in float32 (float64 when ``dtype`` is float64)."""
        if position_ids.dim() != 2 or position_ids.is_floating_point():
            raise ValueError(
                f"RotaryEmbedding: expected integer position_ids of shape [B, T], got "
                f"{position_ids.dtype} of shape {list(position_ids.shape)}"
            )
        compute = torch.promote_types(dtype, torch.float32)
        inv_freq = rope_inverse_frequencies(self.dim, self.base, position_ids.device, compute)  # [D/2]
        angles = position_ids.to(compute).unsqueeze(-1) * inv_freq  # [B, T, D/2]
        angles = torch.cat([angles, angles], dim=-1)  # [B, T, D]: channel i and i + D/2 share an angle
        return angles.cos(), angles.sin()

    @staticmethod
    def apply(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotate ``x [B, T, H, D]`` by ``cos, sin [B, T, D]`` (float32 math, result in ``x.dtype``)."""
        return apply_rotary(x, cos, sin)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x * cos + rotate_half(x) * sin`` for ``x [B, T, H, D]``, ``cos, sin [B or 1, T, D]``; computed in
    at least float32 (and the dtype of ``cos``), returned in ``x.dtype``."""
    xc = x.to(torch.promote_types(torch.promote_types(x.dtype, cos.dtype), torch.float32))
    cos, sin = cos.unsqueeze(2).to(xc.dtype), sin.unsqueeze(2).to(xc.dtype)  # [B, T, 1, D]: shared by every head
    return (xc * cos + rotate_half(xc) * sin).to(x.dtype)
