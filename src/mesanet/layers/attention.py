"""Causal softmax multi-head attention with RoPE (the Transformer and sliding-window baselines).

``x [B, T, D] -> y [B, T, D]`` through ``torch.nn.functional.scaled_dot_product_attention``, following
the mixer contract of :mod:`mesanet.layers.base`:

* Full attention (``window=None``) or sliding-window attention (``window=W``: the token at index ``t``
  attends to the indices ``(t - W, t]``, itself included, so ``W = 1`` is "attend to self only").
  Distances are counted in stored tokens; with left padding (real tokens contiguous at the right)
  and packed sequences that is the distance in positions.
* Grouped-query attention with ``num_kv_heads`` dividing ``num_heads`` (query head ``h`` reads
  key/value head ``h // (num_heads / num_kv_heads)``, the Llama ``repeat_kv`` order).
* KV cache :class:`~mesanet.layers.base.KVState` ``key, value [B, T_cache, H_kv, D]`` with keys stored
  after RoPE. A sliding-window layer keeps only the last ``W - 1`` keys (all that any later query can
  reach) in a :class:`WindowKVState`, which also counts the dropped tokens so that ``seen`` stays the
  number of tokens consumed. Decode steps (``T = 1``) and multi-token continuations both work.
* ``attention_mask [B, T_past + T]`` (1 = token, 0 = left padding): padded keys are masked out. Every
  query may always attend to itself, so a padded query row (no valid key before it) stays finite;
  its output is then set to 0.
* ``cu_seqlens [N + 1]`` (``B = 1``): block-diagonal causal attention, positions restart at 0 in each
  sequence unless ``position_ids`` are given. Not with a state, a padding mask or ``use_cache``.
* ``return_weights=True`` computes the attention explicitly (softmax in float32, float64 for float64
  modules) and returns
  ``(y, state, weights [B, H, T, T_cache + T])`` for ``output_attentions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from mesanet.utils.validation import is_int

from ..ops import checks
from .base import KVState
from .rope import DEFAULT_ROPE_BASE, RotaryEmbedding, apply_rotary


@dataclass
class WindowKVState(KVState):
    """KV cache of a sliding-window layer: the last ``W - 1`` keys/values ``[B, T_cache, H_kv, D]`` and
    ``offset``, the number of earlier tokens already dropped (``seen = offset + T_cache``)."""

    offset: int = 0

    @property
    def seen(self) -> int:
        return self.offset + self.key.shape[1]

    def select(self, index: Tensor) -> "WindowKVState":
        return WindowKVState(self.key.index_select(0, index), self.value.index_select(0, index), self.offset)


class Attention(nn.Module):
    """Causal softmax attention with RoPE: ``x [B, T, hidden_size] -> y [B, T, hidden_size]``.

    Args:
        hidden_size: model width ``D``.
        num_heads: query heads ``H``.
        head_dim: size of every head (even, for RoPE); the attention width is ``H * head_dim``.
        num_kv_heads: key/value heads (GQA); ``None`` means ``num_heads``. Must divide ``num_heads``.
        window: sliding-window size ``W >= 1`` (``None``: full causal attention).
        rope_theta: RoPE base (10000 in the Llama-2 baselines).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        *,
        num_kv_heads: Optional[int] = None,
        window: Optional[int] = None,
        rope_theta: float = DEFAULT_ROPE_BASE,
        device=None,
        dtype=None,
    ):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        for name, value in (
            ("hidden_size", hidden_size),
            ("num_heads", num_heads),
            ("head_dim", head_dim),
            ("num_kv_heads", num_kv_heads),
        ):
            if not is_int(value, 1):
                raise ValueError(f"Attention: expected {name} to be a positive integer, got {value!r}")
        if num_heads % num_kv_heads:
            raise ValueError(f"Attention: expected num_kv_heads to divide num_heads, got {num_kv_heads} and {num_heads}")
        if head_dim % 2:
            raise ValueError(f"Attention: expected an even head_dim (RoPE rotates channel pairs), got {head_dim}")
        if window is not None and not is_int(window, 1):
            raise ValueError(f"Attention: expected window to be None or an integer >= 1, got {window!r}")
        factory = dict(device=device, dtype=dtype)
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.num_kv_heads, self.window = num_kv_heads, window
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False, **factory)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False, **factory)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False, **factory)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False, **factory)
        self.rotary = RotaryEmbedding(head_dim, rope_theta)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fan-in normal initialisation (std ``1/sqrt(fan_in)``) of every projection; the model may rescale
        ``o_proj`` (residual-branch scaling)."""
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            nn.init.normal_(proj.weight, std=proj.in_features**-0.5)

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
            f"head_dim={self.head_dim}, window={self.window}"
        )

    # ------------------------------------------------------------------ checks and masks

    def _check_state(self, state: object, batch: int) -> tuple[int, int]:
        """``(T_cache, seen)`` of a given cache (``(0, 0)`` without one)."""
        if state is None:
            return 0, 0
        if not isinstance(state, KVState):
            raise ValueError(f"Attention: expected state to be a KVState (or None), got {type(state).__name__}")
        expected = (batch, state.key.shape[1], self.num_kv_heads, self.head_dim) if state.key.dim() == 4 else None
        for name, t in (("key", state.key), ("value", state.value)):
            if t.dim() != 4 or tuple(t.shape) != expected:
                raise ValueError(
                    f"Attention: expected state.{name} of shape [B, T_cache, H_kv, head_dim] = "
                    f"[{batch}, T_cache, {self.num_kv_heads}, {self.head_dim}], got {list(t.shape)}"
                )
        return state.key.shape[1], state.seen

    def _key_validity(
        self, attention_mask: Optional[Tensor], batch: int, length: int, cached: int, seen: int
    ) -> Optional[Tensor]:
        """``attention_mask [B, seen + T]`` -> bool ``[B, T_cache + T]`` over the stored keys (None if all valid)."""
        if attention_mask is None:
            return None
        if (
            not isinstance(attention_mask, Tensor)
            or attention_mask.dim() != 2
            or tuple(attention_mask.shape) != (batch, seen + length)
        ):
            shape = list(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
            raise ValueError(
                f"Attention: expected attention_mask of shape [B, T_past + T] = [{batch}, {seen} + {length}], got {shape}"
            )
        valid = attention_mask[:, attention_mask.shape[1] - cached - length :].to(torch.bool)  # [B, T_cache + T]
        return None if bool(valid.all()) else valid

    def _positions(self, position_ids, attention_mask, segment_start, batch, length, seen, device) -> Tensor:
        if position_ids is not None:
            if (
                not isinstance(position_ids, Tensor)
                or position_ids.dim() != 2
                or position_ids.shape[0] not in (1, batch)
                or position_ids.shape[1] != length
                or position_ids.is_floating_point()
            ):
                shape = list(position_ids.shape) if isinstance(position_ids, Tensor) else type(position_ids).__name__
                raise ValueError(
                    f"Attention: expected integer position_ids of shape [B or 1, T] = [{batch}, {length}], got {shape}"
                )
            return position_ids
        if segment_start is not None:  # packed: positions restart in every sequence
            return (torch.arange(length, device=device) - segment_start).unsqueeze(0)  # [1, T]
        if attention_mask is not None:  # the model's convention for left padding
            return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]  # [B, T]
        return (seen + torch.arange(length, device=device)).expand(batch, length)  # [B, T]

    def _allowed(self, length: int, cached: int, key_valid: Optional[Tensor], segment: Optional[Tensor], device) -> Tensor:
        """bool ``[B or 1, 1, T, T_cache + T]``: causal, within the window, valid key, same packed sequence;
        the diagonal (a query and its own key) is always allowed."""
        i = torch.arange(length, device=device).unsqueeze(1) + cached  # [T, 1] query index in stored keys
        j = torch.arange(cached + length, device=device).unsqueeze(0)  # [1, S]
        allowed = j <= i  # [T, S]
        if self.window is not None:
            allowed = allowed & (j > i - self.window)
        allowed = allowed.unsqueeze(0)  # [1, T, S]
        if key_valid is not None:
            allowed = allowed & key_valid.unsqueeze(1)  # [B, T, S]
        if segment is not None:  # no cache with packed sequences: S == T
            allowed = allowed & (segment.unsqueeze(1) == segment.unsqueeze(0))
        allowed = allowed | (j == i)
        return allowed.unsqueeze(1)  # [B or 1, 1, T, S]: shared by every head

    def _blocked_window_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Causal sliding-window attention from the first key, with no padding or packing, in blocks of W
        queries that each see their own and the previous block of keys: ``[B, H, T, Dh] -> [B, H, T, Dh]``."""
        w, length = self.window, q.shape[2]
        blocks = -(-length // w)
        pad = blocks * w - length
        qb = rearrange(F.pad(q, (0, 0, 0, pad)), "b h (n w) d -> b h n w d", w=w)  # [B, H, nb, W, Dh]
        # keys of block n: tokens [(n - 1) W, (n + 1) W), W zero keys before the first token
        kb = F.pad(k, (0, 0, w, pad)).unfold(2, 2 * w, w).transpose(-1, -2)  # [B, H, nb, 2W, Dh]
        vb = F.pad(v, (0, 0, w, pad)).unfold(2, 2 * w, w).transpose(-1, -2)
        a = torch.arange(w, device=q.device).view(w, 1)  # query index in its block
        c = torch.arange(2 * w, device=q.device).view(1, 2 * w)  # key index in the block's key range
        allowed = (c > a) & (c <= a + w)  # key token in (i - W, i]; c = a + W is the query itself  [W, 2W]
        first = torch.arange(blocks, device=q.device).view(blocks, 1, 1) > 0
        allowed = allowed & (first | (c >= w))  # block 0 has no previous keys  [nb, W, 2W]
        o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=allowed)  # [B, H, nb, W, Dh]
        return rearrange(o, "b h n w d -> b h (n w) d")[:, :, :length]

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        x: Tensor,
        state: Optional[KVState] = None,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        cu_seqlens: Optional[Tensor] = None,
        use_cache: bool = False,
        return_weights: bool = False,
    ):
        """``x [B, T, D] -> (y [B, T, D], state or None)``, plus ``weights [B, H, T, T_cache + T]`` (float32
        or float64) when ``return_weights``. See the module docstring for the modes."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.hidden_size:
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Attention: expected x of shape [B, T, {self.hidden_size}], got {shape}")
        batch, length, _ = x.shape
        if length == 0:
            raise ValueError("Attention: expected at least one token (T >= 1)")
        cached, seen = self._check_state(state, batch)
        segment = segment_start = None
        if cu_seqlens is not None:
            if state is not None:
                raise ValueError("Attention: cu_seqlens cannot be combined with a state (packed sequences start fresh)")
            if attention_mask is not None:
                raise ValueError(
                    "Attention: cu_seqlens cannot be combined with attention_mask (packed sequences carry no padding)"
                )
            if use_cache:
                raise ValueError("Attention: use_cache is not supported with cu_seqlens (a cache has one row per batch row)")
            lengths = checks.check_cu_seqlens("Attention", cu_seqlens, batch, length, x.device)
            segment = torch.repeat_interleave(
                torch.arange(len(lengths), device=x.device), torch.tensor(lengths, device=x.device)
            )  # [T] sequence of each token
            segment_start = cu_seqlens.long()[segment]  # [T] first token of that sequence
        key_valid = self._key_validity(attention_mask, batch, length, cached, seen)
        positions = self._positions(position_ids, attention_mask, segment_start, batch, length, seen, x.device)

        q = rearrange(self.q_proj(x), "b t (h d) -> b t h d", d=self.head_dim)  # [B, T, H, Dh]
        k = rearrange(self.k_proj(x), "b t (h d) -> b t h d", d=self.head_dim)  # [B, T, Hkv, Dh]
        v = rearrange(self.v_proj(x), "b t (h d) -> b t h d", d=self.head_dim)  # [B, T, Hkv, Dh]
        cos, sin = self.rotary(positions, q.dtype)  # [B or 1, T, Dh], float32 (float64 for float64 modules)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if state is not None:
            k = torch.cat([state.key.to(k.dtype), k], dim=1)  # [B, T_cache + T, Hkv, Dh]
            v = torch.cat([state.value.to(v.dtype), v], dim=1)

        new_state = None
        if use_cache:
            if self.window is None:
                new_state = KVState(k, v)
            else:  # trim to the last W - 1 keys: all that any later query can reach
                keep = min(k.shape[1], self.window - 1)
                new_state = WindowKVState(k[:, k.shape[1] - keep :], v[:, v.shape[1] - keep :], seen + length - keep)

        groups = self.num_heads // self.num_kv_heads
        qh = rearrange(q, "b t h d -> b h t d")  # [B, H, T, Dh]
        kh = repeat(k, "b s h d -> b (h g) s d", g=groups)  # [B, H, S, Dh], S = T_cache + T
        vh = repeat(v, "b s h d -> b (h g) s d", g=groups)
        plain = key_valid is None and segment is None and not return_weights
        weights = None
        if plain and self.window is None and (cached == 0 or length == 1):
            # no mask needed: causal from the first key, or one query that sees the whole cache
            o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=cached == 0 and length > 1)
        elif plain and cached == 0 and self.window < length:
            o = self._blocked_window_attention(qh, kh, vh)  # O(T W), not O(T^2)
        else:
            allowed = self._allowed(length, cached, key_valid, segment, x.device)  # [B or 1, 1, T, S]
            if return_weights:
                compute = torch.promote_types(x.dtype, torch.float32)
                scores = torch.matmul(qh.to(compute), kh.to(compute).mT) * self.head_dim**-0.5  # [B, H, T, S]
                weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
                o = torch.matmul(weights, vh.to(compute)).to(x.dtype)  # [B, H, T, Dh]
            else:
                o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed)
        y = self.o_proj(rearrange(o, "b h t d -> b t (h d)"))  # [B, T, D]
        if key_valid is not None:  # padded query rows: finite (they attend to themselves); set to 0
            query_valid = key_valid[:, cached:]  # [B, T]
            y = y * query_valid.unsqueeze(-1).to(y.dtype)
            if weights is not None:
                weights = weights * query_valid[:, None, :, None].to(weights.dtype)
        if return_weights:
            return y, new_state, weights
        return y, new_state


class SlidingWindowAttention(Attention):
    """:class:`Attention` whose ``window`` is mandatory (the registry's ``"sliding_attention"``)."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, *, window: Optional[int] = None, **options):
        if window is None:
            raise ValueError("SlidingWindowAttention: expected a window size (option window=W >= 1)")
        super().__init__(hidden_size, num_heads, head_dim, window=window, **options)
