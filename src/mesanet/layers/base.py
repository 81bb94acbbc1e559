"""The contract every token mixer (``nn.Module``) follows, and the decoding states they carry.

A mixer maps ``x [B, T, D] -> y [B, T, D]``::

    y, state = mixer(x, state=None, attention_mask=None, position_ids=None, cu_seqlens=None, use_cache=False)

* ``state``: the mixer's decoding state from an earlier call (``None`` at the start). With a state,
  ``T == 1`` is a decode step and ``T > 1`` continues from it through the parallel (chunk) form.
* ``attention_mask``: ``[B, T_past + T]``, 1 for tokens, 0 for (left) padding, HF convention. A padded
  position never updates a state (recurrent mixers: gates neutral, conv input zeroed) and its
  output is 0 (recurrent mixers) or unspecified-but-finite (attention).
* ``position_ids``: ``[B, T]`` absolute positions (RoPE in attention layers; recurrent mixers ignore it).
* ``cu_seqlens``: ``[N + 1]`` offsets of sequences packed along ``T`` (``B == 1``); no state may be given
  and nothing crosses a boundary.
* ``use_cache``: return the new state (else ``None``). States are returned, never modified in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor


@dataclass
class RecurrentState:
    """Decoding state of a recurrent mixer, per batch row.

    ``conv``: stream name -> the last ``width - 1`` inputs of that short convolution ``[B, width - 1, C]``.
    ``recurrent``: the mixer's recurrent states, e.g. ``(H_kk, S_kv)`` for Mesa, ``(S,)`` for GLA.
    ``seen``: tokens consumed so far (padding included), for bookkeeping and ``get_seq_length``.
    """

    conv: dict[str, Tensor] = field(default_factory=dict)
    recurrent: tuple[Tensor, ...] = ()
    seen: int = 0

    def select(self, index: Tensor) -> "RecurrentState":
        """Rows ``index`` of every tensor (beam search reordering)."""
        return RecurrentState(
            {n: t.index_select(0, index) for n, t in self.conv.items()},
            tuple(t.index_select(0, index) for t in self.recurrent),
            self.seen,
        )


@dataclass
class KVState:
    """Key/value cache of an attention mixer: ``key, value [B, T_cache, H, D]`` (keys after RoPE)."""

    key: Tensor
    value: Tensor

    @property
    def seen(self) -> int:
        return self.key.shape[1]

    def select(self, index: Tensor) -> "KVState":
        return KVState(self.key.index_select(0, index), self.value.index_select(0, index))


MixerState = Optional[object]  # RecurrentState | KVState | None


def current_token_mask(attention_mask: Optional[Tensor], length: int) -> Optional[Tensor]:
    """The padding mask of the ``length`` tokens of this call: ``[B, T_past + T] -> bool [B, T]`` (or None)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[1] < length:
        raise ValueError(f"expected attention_mask of shape [B, T_past + T] with T = {length}, got {list(attention_mask.shape)}")
    mask = attention_mask[:, -length:].to(torch.bool)
    return None if bool(mask.all()) else mask
