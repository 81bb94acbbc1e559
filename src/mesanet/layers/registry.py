"""Mixer registry: the ``mixer`` names used in model configs -> token-mixer classes.

Every class takes ``(hidden_size, num_heads, head_dim, **options)`` (``head_dim`` is the key/query head
size; options are class-specific keyword arguments, e.g. ``solver_training`` for ``"mesa"``) and follows
the contract of :mod:`mesanet.layers.base`. To add a mixer, add one ``"name": Class`` line to
:data:`MIXERS` (or call :func:`register_mixer`).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .attention import Attention, SlidingWindowAttention
from .delta_net import DeltaNet
from .gated_delta_net import GatedDeltaNet
from .gla_layer import GatedLinearAttention, Mamba2GLA
from .hawk import Hawk
from .mesa_layer import MesaLayer
from .sherman_morrison_layer import ShermanMorrisonMesa

#: ``name -> class`` with the uniform constructor ``(hidden_size, num_heads, head_dim, **options)``.
MIXERS: dict[str, Callable[..., nn.Module]] = {
    "mesa": MesaLayer,
    "gla": GatedLinearAttention,
    "mamba2": Mamba2GLA,
    "deltanet": DeltaNet,
    "gated_deltanet": GatedDeltaNet,
    "sherman_morrison": ShermanMorrisonMesa,
    "attention": Attention,
    "sliding_attention": SlidingWindowAttention,
    "hawk": Hawk,
}


def register_mixer(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Add ``name`` to :data:`MIXERS`; ``ValueError`` if it is taken by another constructor."""
    if name in MIXERS and MIXERS[name] is not constructor:
        raise ValueError(f"mixer {name!r} is already registered to {MIXERS[name]!r}")
    MIXERS[name] = constructor


def build_mixer(kind: str, hidden_size: int, num_heads: int, head_dim: int, **options) -> nn.Module:
    """Construct the mixer registered as ``kind``; ``ValueError`` (listing the valid kinds) if unknown."""
    try:
        constructor = MIXERS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown mixer kind {kind!r}; valid kinds: {', '.join(sorted(MIXERS))}") from None
    return constructor(hidden_size, num_heads, head_dim, **options)
