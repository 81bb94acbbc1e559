"""Hawk: the recurrent block of Griffin (De et al. 2024) with the Real-Gated Linear Recurrent Unit.

``x [B, T, D] -> y [B, T, D]``, recurrence width ``W = num_heads * round(expansion * head_dim)``::

    gate = GeLU(W_g x)                                  (tanh approximation, as Griffin's JAX code)
    z    = conv4(W_x x)                                 (causal depthwise, width 4, bias, no activation)
    r_t  = sigmoid(BlockDiag_r z_t + b_r)               (recurrence gate)
    i_t  = sigmoid(BlockDiag_i z_t + b_i)               (input gate)
    log a_t = -c softplus(Lambda) r_t,  c = 8            (a_t = sigmoid(-Lambda)^(c r_t))
    h_t  = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * z_t)
    y    = W_o (gate * h)

The gates are block-diagonal: one ``head_dim' x head_dim'`` matrix per head (Griffin's
``BlockDiagonalLinear``), so heads only group channels for the gates; the recurrence itself is
diagonal. ``Lambda`` is initialised so that ``a^c = exp(-c softplus(Lambda))`` is uniform in
``[0.9, 0.999]`` (the Griffin paper's statement; its reference code instead draws ``a^2``
uniform in ``[0.81, 0.998]`` for the base ``a``). Gate weights: normal, std ``1/sqrt(block width)``,
biases 0; projections fan-in normal. ``Lambda`` and the gate biases are marked no-weight-decay.

Two simplifications against Griffin's reference code, both documented deviations: the first token of
a sequence gets the same ``sqrt(1 - a^2)`` input normalisation as every other token (the code skips it
at document starts), and the projections have no bias (the convolution keeps its bias).

Numerics: the gates, ``a``, ``sqrt(1 - a^2)`` (as ``sqrt(-expm1(2 log a))``, with a derivative
bounded near ``a = 1``) and the recurrence run in float32 (float64 for float64 modules). The
parallel form is :func:`rg_lru_scan`: a two-level Hillis-Steele scan of the affine maps
``h -> a h + u`` (products of decays in ``[0, 1]`` only, no division, no exponentials of sums, so
strong decay is as exact as weak decay) inside chunks and over chunk ends, with a hand-written
backward that runs the same scan in reverse and stores only ``a`` and ``h``.

Padding (``attention_mask == 0``): conv input zeroed, ``a = 1`` and input 0 (``h`` passes through
unchanged), output 0. ``cu_seqlens``: the carried state is cut (``a = 0``) at every sequence start.
State: :class:`RecurrentState` with ``conv = {"x": tail [B, 3, W]}``, ``recurrent = (h [B, W],)``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mesanet.utils.validation import is_int

from ..ops import checks
from ..ops.numerics import DEFAULT_CHUNK_SIZE
from .base import RecurrentState, current_token_mask
from .gates import mark_no_weight_decay
from .short_conv import ShortConvolution

#: Griffin's fixed scalar ``c`` in ``a_t = a^(c r_t)``.
RG_LRU_C = 8.0

#: Range of ``a^c`` at initialisation (Griffin paper, section 2.4).
RG_LRU_INIT_RANGE = (0.9, 0.999)

#: Bound on ``d sqrt(x) / dx`` in the input normalisation ``sqrt(1 - a^2)`` (Griffin's reference code):
#: the true derivative is infinite at ``a = 1`` (padding, or ``r_t`` underflowing to 0).
MAX_SQRT_GRADIENT = 1000.0


class _SqrtBoundDerivative(torch.autograd.Function):
    """``sqrt(x)`` whose derivative is capped at :data:`MAX_SQRT_GRADIENT` (finite at ``x = 0``)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.sqrt(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad / torch.sqrt(torch.clamp(4.0 * x, min=1.0 / MAX_SQRT_GRADIENT**2))


def _shift(x: Tensor, d: int, fill: float) -> Tensor:
    """``x`` moved ``d`` steps later along dim -2, the first ``d`` rows set to ``fill``."""
    head = torch.full_like(x[..., :d, :], fill)
    return torch.cat([head, x[..., : x.shape[-2] - d, :]], dim=-2)


def _affine_scan(a: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan along dim -2 of the maps ``h -> a h + u`` (Hillis-Steele, ``log2 L`` steps).

    ``a, u [..., L, D] -> (A, H)``: ``A_t = prod_{s <= t} a_s`` and ``H_t`` the state after ``t`` from 0.
    """
    length, d = a.shape[-2], 1
    while d < length:
        u = u + a * _shift(u, d, 0.0)  # compose with the segment ending d steps earlier (old a)
        a = a * _shift(a, d, 1.0)
        d *= 2
    return a, u


def _chunked_scan(a: Tensor, u: Tensor, h0: Tensor, chunk_size: int) -> Tensor:
    """``h_t = a_t h_{t-1} + u_t`` from ``h0``: ``a, u [B, T, D]``, ``h0 [B, D]`` -> ``h [B, T, D]``.

    Scan inside chunks of ``C`` tokens, then over the chunk ends (``T / C`` maps), then one
    broadcast correction ``h = H_local + A_local * h_entering``.
    """
    length = a.shape[1]
    size = max(1, min(chunk_size, length))
    pad = (-length) % size
    a = F.pad(a, (0, 0, 0, pad), value=1.0)  # [B, NC*C, D]: padding tokens are the identity map
    u = F.pad(u, (0, 0, 0, pad))
    a = rearrange(a, "b (n c) d -> b n c d", c=size)  # [B, NC, C, D]
    u = rearrange(u, "b (n c) d -> b n c d", c=size)
    decay, local = _affine_scan(a, u)  # [B, NC, C, D] each
    end_decay, end_local = decay[:, :, -1], local[:, :, -1]  # [B, NC, D]: each chunk as one map
    first = end_local[:, :1] + end_decay[:, :1] * h0.unsqueeze(1)  # [B, 1, D]: chunk 0 starts from h0
    _, ends = _affine_scan(end_decay, torch.cat([first, end_local[:, 1:]], dim=1))  # [B, NC, D] after chunk n
    entering = torch.cat([h0.unsqueeze(1), ends[:, :-1]], dim=1)  # [B, NC, D] before chunk n
    h = local + decay * entering.unsqueeze(2)  # [B, NC, C, D]
    return rearrange(h, "b n c d -> b (n c) d")[:, :length]


class _LinearScan(torch.autograd.Function):
    """:func:`_chunked_scan` with the adjoint recurrence as backward (stores ``a``, ``h``, ``h0`` only):
    ``g_t = dh_t + a_{t+1} g_{t+1}``, ``du = g``, ``da_t = g_t h_{t-1}``, ``dh0 = a_1 g_1``."""

    @staticmethod
    def forward(ctx, a: Tensor, u: Tensor, h0: Tensor, chunk_size: int) -> Tensor:
        h = _chunked_scan(a, u, h0, chunk_size)
        ctx.save_for_backward(a, h, h0)
        ctx.chunk_size = chunk_size
        return h

    @staticmethod
    def backward(ctx, dh: Tensor):
        a, h, h0 = ctx.saved_tensors
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)  # [B, T, D]: a_{t+1}, 0 past the end
        g = _chunked_scan(a_next.flip(1), dh.flip(1), torch.zeros_like(h0), ctx.chunk_size).flip(1)  # [B, T, D]
        h_prev = torch.cat([h0.unsqueeze(1), h[:, :-1]], dim=1)  # [B, T, D]: h_{t-1}
        da = g * h_prev if ctx.needs_input_grad[0] else None
        dh0 = a[:, 0] * g[:, 0] if ctx.needs_input_grad[2] else None
        return da, g, dh0, None


def rg_lru_scan(a: Tensor, u: Tensor, h0: Optional[Tensor] = None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Parallel diagonal linear recurrence ``h_t = a_t h_{t-1} + u_t``.

    ``a [B, T, D]`` in ``[0, 1]``, ``u [B, T, D]``, ``h0 [B, D]`` (zeros when omitted) -> ``h [B, T, D]``
    in the dtype of ``a``. Cost ``O(T D log C)`` plus ``O((T / C) D log(T / C))``; differentiable in
    ``a``, ``u`` and ``h0`` (first order).
    """
    if a.shape != u.shape or a.dim() != 3:
        raise ValueError(f"rg_lru_scan: expected a and u of one shape [B, T, D], got {list(a.shape)} and {list(u.shape)}")
    if h0 is None:
        h0 = a.new_zeros((a.shape[0], a.shape[2]))
    elif tuple(h0.shape) != (a.shape[0], a.shape[2]):
        raise ValueError(f"rg_lru_scan: expected h0 of shape [B, D] = {[a.shape[0], a.shape[2]]}, got {list(h0.shape)}")
    return _LinearScan.apply(a, u.to(a.dtype), h0.to(a.dtype), chunk_size)


def rg_lru_step(a: Tensor, u: Tensor, h: Optional[Tensor] = None) -> Tensor:
    """One token of :func:`rg_lru_scan`: ``a, u, h [B, D] -> h' = a h + u``."""
    return u if h is None else a * h.to(a.dtype) + u


class BlockDiagonalLinear(nn.Module):
    """``y = x W + b`` with ``W`` block-diagonal: ``x [..., H * E] -> y [..., H * E]``, one ``E x E`` block per head."""

    def __init__(self, num_blocks: int, block_width: int, device=None, dtype=None):
        super().__init__()
        self.num_blocks, self.block_width = num_blocks, block_width
        self.weight = nn.Parameter(torch.empty(num_blocks, block_width, block_width, device=device, dtype=dtype))  # [H, in, out]
        self.bias = mark_no_weight_decay(nn.Parameter(torch.empty(num_blocks, block_width, device=device, dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fan-in normal weights (std ``1/sqrt(E)``), zero biases (Griffin)."""
        nn.init.normal_(self.weight, std=self.block_width**-0.5)
        nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"num_blocks={self.num_blocks}, block_width={self.block_width}"

    def forward(self, x: Tensor) -> Tensor:
        xh = rearrange(x, "... (h e) -> ... h e", h=self.num_blocks)  # [..., H, E]
        y = torch.einsum("...hi,hio->...ho", xh, self.weight) + self.bias  # [..., H, E]
        return rearrange(y, "... h e -> ... (h e)")


def rg_lru_lambda_init(
    width: int,
    c: float = RG_LRU_C,
    init_range: tuple[float, float] = RG_LRU_INIT_RANGE,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """``Lambda [width]`` (float64) with ``a^c = exp(-c softplus(Lambda))`` uniform in ``init_range``."""
    lo, hi = init_range
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"Hawk: expected 0 < a_min <= a_max < 1 for the decay init range, got {init_range}")
    a_c = lo + (hi - lo) * torch.rand(width, dtype=torch.float64, generator=generator)  # a^c  [W]
    softplus_value = -torch.log(a_c) / c  # softplus(Lambda) = -log(a) > 0
    return torch.log(torch.expm1(softplus_value))  # softplus^-1


class Hawk(nn.Module):
    """Griffin's recurrent (RG-LRU) block as a token mixer: ``x [B, T, hidden_size] -> y [B, T, hidden_size]``.

    Args:
        hidden_size: model width ``D``.
        num_heads: blocks of the block-diagonal gates.
        head_dim: per-head width before ``expansion``.
        expansion: recurrence width multiplier (the paper's Hawk uses 1.25 to match parameters); each
            head has ``round(expansion * head_dim)`` channels.
        conv_size: width of the causal depthwise convolution (4).
        c: Griffin's decay sharpness (8).
        decay_init_range: range of ``a^c`` at initialisation.
        chunk_size: chunk length of the parallel scan.

    Follows the mixer contract of :mod:`mesanet.layers.base`; ``position_ids`` is ignored.
    Unsupported combinations raise ``ValueError``: ``cu_seqlens`` with a state, with ``B > 1``, with a
    padding mask or with ``use_cache``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        *,
        expansion: float = 1.0,
        conv_size: int = 4,
        c: float = RG_LRU_C,
        decay_init_range: tuple[float, float] = RG_LRU_INIT_RANGE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, value in (
            ("hidden_size", hidden_size),
            ("num_heads", num_heads),
            ("head_dim", head_dim),
            ("conv_size", conv_size),
            ("chunk_size", chunk_size),
        ):
            if not is_int(value, 1):
                raise ValueError(f"Hawk: expected {name} to be a positive integer, got {value!r}")
        if not (isinstance(expansion, (int, float)) and expansion > 0 and round(expansion * head_dim) >= 1):
            raise ValueError(f"Hawk: expected expansion > 0 leaving at least one channel per head, got {expansion!r}")
        if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
            raise ValueError(f"Hawk: expected c > 0, got {c!r}")
        rg_lru_lambda_init(1, c, tuple(decay_init_range))  # validates the range now
        factory = dict(device=device, dtype=dtype)
        self.hidden_size, self.num_heads, self.expansion = hidden_size, num_heads, float(expansion)
        self.block_width = int(round(expansion * head_dim))
        self.width = num_heads * self.block_width
        self.conv_size, self.c, self.chunk_size = conv_size, float(c), chunk_size
        self.decay_init_range = tuple(float(v) for v in decay_init_range)
        self.gate_proj = nn.Linear(hidden_size, self.width, bias=False, **factory)  # GeLU branch
        self.x_proj = nn.Linear(hidden_size, self.width, bias=False, **factory)  # recurrent branch
        self.conv = ShortConvolution(self.width, conv_size, activation=None, bias=True, **factory)
        self.r_gate = BlockDiagonalLinear(num_heads, self.block_width, **factory)  # recurrence gate
        self.i_gate = BlockDiagonalLinear(num_heads, self.block_width, **factory)  # input gate
        self.a_param = mark_no_weight_decay(nn.Parameter(torch.empty(self.width, **factory)))  # Lambda
        self.o_proj = nn.Linear(self.width, hidden_size, bias=False, **factory)
        self.reset_parameters()

    def reset_special_parameters(self) -> None:
        """``Lambda`` only (the model initialises the Linear, conv and gate submodules itself)."""
        with torch.no_grad():
            self.a_param.copy_(rg_lru_lambda_init(self.width, self.c, self.decay_init_range))

    def reset_parameters(self) -> None:
        """Everything: fan-in normal projections, conv default, gates, ``Lambda``."""
        for proj in (self.gate_proj, self.x_proj, self.o_proj):
            nn.init.normal_(proj.weight, std=proj.in_features**-0.5)
        self.conv.reset_parameters()
        self.r_gate.reset_parameters()
        self.i_gate.reset_parameters()
        self.reset_special_parameters()

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, width={self.width}, "
            f"conv_size={self.conv_size}, c={self.c:g}"
        )

    def _check_call(self, x, state, attention_mask, cu_seqlens, use_cache) -> None:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.hidden_size or not x.is_floating_point():
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Hawk: expected a floating x of shape [B, T, {self.hidden_size}], got {shape}")
        batch, length, _ = x.shape
        if length < 1:
            raise ValueError("Hawk: expected at least one token (T >= 1)")
        if state is not None:
            if not isinstance(state, RecurrentState):
                raise ValueError(f"Hawk: expected state to be a RecurrentState (or None), got {type(state).__name__}")
            tail = state.conv.get("x")
            if tail is not None and tuple(tail.shape) != (batch, self.conv_size - 1, self.width):
                raise ValueError(
                    f"Hawk: expected conv tail 'x' of shape {[batch, self.conv_size - 1, self.width]}, got {list(tail.shape)}"
                )
            if len(state.recurrent) > 1 or (state.recurrent and tuple(state.recurrent[0].shape) != (batch, self.width)):
                raise ValueError(
                    f"Hawk: expected recurrent state (h [B, W],) with shape {[batch, self.width]}, "
                    f"got {[list(t.shape) for t in state.recurrent]}"
                )
        if attention_mask is not None and (not isinstance(attention_mask, Tensor) or attention_mask.shape[0] != batch):
            shape = list(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
            raise ValueError(f"Hawk: expected attention_mask of shape [B, T_past + T] with B = {batch}, got {shape}")
        if cu_seqlens is not None:
            if state is not None:
                raise ValueError("Hawk: cu_seqlens cannot be combined with a state (packed sequences start fresh)")
            if use_cache:
                raise ValueError("Hawk: use_cache is not supported with cu_seqlens (a state has one row per batch row)")
            if attention_mask is not None:
                raise ValueError("Hawk: cu_seqlens cannot be combined with attention_mask (packed sequences carry no padding)")
            checks.check_cu_seqlens("Hawk", cu_seqlens, batch, length, x.device)

    def forward(
        self,
        x: Tensor,
        state: Optional[RecurrentState] = None,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        cu_seqlens: Optional[Tensor] = None,
        use_cache: bool = False,
    ) -> tuple[Tensor, Optional[RecurrentState]]:
        """``x [B, T, D] -> (y [B, T, D], RecurrentState or None)``."""
        self._check_call(x, state, attention_mask, cu_seqlens, use_cache)
        batch, length, _ = x.shape
        mask = current_token_mask(attention_mask, length)  # bool [B, T] or None (no padding)
        compute = torch.promote_types(x.dtype, torch.float32)

        gate = F.gelu(self.gate_proj(x), approximate="tanh")  # [B, T, W]
        tail = state.conv.get("x") if state is not None else None
        z, new_tail = self.conv(self.x_proj(x), tail=tail, mask=mask, cu_seqlens=cu_seqlens)  # [B, T, W]
        r = torch.sigmoid(self.r_gate(z).to(compute))  # [B, T, W]
        i = torch.sigmoid(self.i_gate(z).to(compute))
        log_a = -self.c * F.softplus(self.a_param.to(compute)) * r  # [B, T, W], <= 0
        a = torch.exp(log_a)
        u = _SqrtBoundDerivative.apply(-torch.expm1(2.0 * log_a)) * i * z.to(compute)  # sqrt(1 - a^2) i z
        if mask is not None:  # padding: identity map (a = 1, no input)
            tokens = mask.unsqueeze(-1)  # [B, T, 1]
            a = torch.where(tokens, a, 1.0)
            u = torch.where(tokens, u, 0.0)
        if cu_seqlens is not None:  # nothing carried into the first token of a sequence
            starts = torch.zeros(length, dtype=torch.bool, device=x.device)
            starts[cu_seqlens[:-1].long()] = True
            a = torch.where(starts[None, :, None], 0.0, a)

        h0 = state.recurrent[0] if state is not None and state.recurrent else None
        if state is not None and length == 1:
            h = rg_lru_step(a[:, 0], u[:, 0], h0).unsqueeze(1)  # [B, 1, W]
        else:
            h = rg_lru_scan(a, u, h0, self.chunk_size)  # [B, T, W]
        y = self.o_proj(gate * h.to(x.dtype))  # [B, T, D]
        if mask is not None:
            y = y * mask.unsqueeze(-1).to(y.dtype)
        if not use_cache:
            return y, None
        seen = (state.seen if state is not None else 0) + length
        return y, RecurrentState({"x": new_tail}, (h[:, -1],), seen)
