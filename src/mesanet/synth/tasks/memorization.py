"""MAD memorization (M): a fixed key -> value map, shared by every sequence, recalled at insert tokens.

Spec: ``synthetic-tasks.md`` §1.6. Insert token ``V-1``; ``m = (V-1)//2`` keys ``[0, m)`` and values
``[m, V-1)``. The map comes from its own RNG (seed ``map_seed``, 12345 in MAD): shuffle keys, shuffle
values, pair by position. A sequence is ``L/2`` (key, insert) pairs with keys drawn uniformly with
replacement. No shift: -100 at key positions, the key's value at each insert position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mesanet.utils.validation import check_int

from .base import IGNORE_INDEX, MAD_DATA_SEED, TokenBatch, check_even, make_rng, stack


@dataclass(frozen=True)
class MemorizationConfig:
    """M baseline: V=256 (127 facts, values 127-254, insert 255), L=32; MAD trains on 256 sequences."""

    vocab_size: int = 256
    seq_len: int = 32
    map_seed: int = MAD_DATA_SEED

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, minimum=3)
        check_int("seq_len", self.seq_len, minimum=2)
        check_even("seq_len", self.seq_len)
        check_int("map_seed", self.map_seed, minimum=0)

    @property
    def insert_token(self) -> int:
        return self.vocab_size - 1

    @property
    def num_facts(self) -> int:
        return (self.vocab_size - 1) // 2


def memorization_map(config: MemorizationConfig | None = None) -> dict[int, int]:
    """The fixed key -> value map of ``config`` (independent of any sequence seed)."""
    cfg = config or MemorizationConfig()
    rng = np.random.default_rng(cfg.map_seed)
    m = cfg.num_facts
    keys = np.arange(0, m)
    values = np.arange(m, cfg.vocab_size - 1)
    rng.shuffle(keys)
    rng.shuffle(values)
    return {int(k): int(v) for k, v in zip(keys, values[:m])}


def memorization(
    num_sequences: int,
    seed: int | np.random.Generator,
    config: MemorizationConfig | None = None,
) -> TokenBatch:
    """``num_sequences`` M sequences -> ``TokenBatch`` of shape ``[N, L]``."""
    cfg = config or MemorizationConfig()
    if not isinstance(cfg, MemorizationConfig):
        raise ValueError(f"config: expected a MemorizationConfig, got {type(cfg).__name__}")
    n = check_int("num_sequences", num_sequences, minimum=1)
    rng = make_rng(seed)
    lookup = np.full(cfg.num_facts, IGNORE_INDEX, dtype=np.int64)
    for k, v in memorization_map(cfg).items():
        lookup[k] = v
    keys = rng.integers(0, cfg.num_facts, size=(n, cfg.seq_len // 2))
    inputs = np.empty((n, cfg.seq_len), dtype=np.int64)
    targets = np.full((n, cfg.seq_len), IGNORE_INDEX, dtype=np.int64)
    inputs[:, 0::2] = keys
    inputs[:, 1::2] = cfg.insert_token
    targets[:, 1::2] = lookup[keys]
    return stack(inputs, targets)
