"""The model-level decoding cache: one mixer state per layer (recurrent states, conv tails, KV caches)."""

from __future__ import annotations

from torch import Tensor

from ..layers.base import MixerState


class MesaNetCache:
    """Per-layer decoding states of a :class:`~mesanet.models.modeling_mesanet.MesaNetModel`.

    Recurrent layers hold constant-size states (``(H_kk, S_kv)`` plus convolution tails for Mesa);
    attention layers hold their KV cache. ``seen`` counts the tokens consumed (padding included),
    which is what ``generate`` needs to slice new inputs. Layer states are replaced, never mutated,
    so a cache can be kept and reused.
    """

    def __init__(self, num_layers: int):
        self.states: list[MixerState] = [None] * num_layers
        self.seen = 0

    def __len__(self) -> int:
        return len(self.states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Select batch rows (beam search)."""
        self.states = [None if s is None else s.select(beam_idx) for s in self.states]

    def batch_select_indices(self, indices: Tensor) -> None:
        self.reorder_cache(indices)

    @property
    def is_compileable(self) -> bool:
        return False

    def __repr__(self) -> str:
        kinds = ", ".join(type(s).__name__ if s is not None else "empty" for s in self.states)
        return f"MesaNetCache(seen={self.seen}, layers=[{kinds}])"
