"""Zoology multi-query associative recall (MQAR): N key-value pairs, then each key queried once.

Spec: ``synthetic-tasks.md`` §2.1. Keys ``[1, V/2)``, values ``[V/2, V)``, 0 is the filler. Context
``k1 v1 ... kN vN`` (distinct keys, distinct values); key ``k_i`` is re-shown at ``2N + 2 g_i`` with
distinct gaps ``g_i`` drawn with ``p(g) ∝ a (g+1)^(a-1)``; the label there is ``v_i`` (never shown in
the input); -100 elsewhere. With ``random_non_queries`` every filler 0 becomes a uniform ``[0, V)`` token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mesanet.utils.validation import check_int, is_real

from .base import IGNORE_INDEX, TokenBatch, check_even, make_rng, stack


@dataclass(frozen=True)
class MQARConfig:
    """Defaults: Zoology's smallest Fig. 2 setting (V=8192, L=64, N=4), a=0.01, random filler."""

    vocab_size: int = 8192
    seq_len: int = 64
    num_kv_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self) -> None:
        check_int("seq_len", self.seq_len, minimum=4)
        check_even("seq_len", self.seq_len)
        n = check_int("num_kv_pairs", self.num_kv_pairs, minimum=1)
        check_int("vocab_size", self.vocab_size, minimum=4)
        if 4 * n > self.seq_len:
            raise ValueError(f"seq_len: expected >= 4 * num_kv_pairs = {4 * n}, got {self.seq_len}")
        if self.vocab_size <= self.seq_len:
            raise ValueError(f"vocab_size: expected > seq_len = {self.seq_len}, got {self.vocab_size}")
        if self.vocab_size // 2 - 1 < n:
            raise ValueError(f"vocab_size: expected V//2 - 1 >= num_kv_pairs = {n} distinct keys, got V={self.vocab_size}")
        if not is_real(self.power_a, finite=False) or not 0 < self.power_a <= 1:
            raise ValueError(f"power_a: expected a float in (0, 1], got {self.power_a!r}")


def mqar(num_sequences: int, seed: int | np.random.Generator, config: MQARConfig | None = None) -> TokenBatch:
    """``num_sequences`` MQAR sequences -> ``TokenBatch`` of shape ``[N, L]`` with exactly N labels each."""
    cfg = config or MQARConfig()
    if not isinstance(cfg, MQARConfig):
        raise ValueError(f"config: expected an MQARConfig, got {type(cfg).__name__}")
    count = check_int("num_sequences", num_sequences, minimum=1)
    rng = make_rng(seed)
    n, L, V = cfg.num_kv_pairs, cfg.seq_len, cfg.vocab_size
    ctx = 2 * n
    span = (L - ctx) // 2
    g = np.arange(span, dtype=np.float64)
    p = cfg.power_a * (g + 1) ** (cfg.power_a - 1)
    p /= p.sum()
    rows = np.arange(count)[:, None]
    keys = np.stack([rng.choice(np.arange(1, V // 2), size=n, replace=False) for _ in range(count)])
    values = np.stack([rng.choice(np.arange(V // 2, V), size=n, replace=False) for _ in range(count)])
    gaps = np.stack([rng.choice(span, size=n, replace=False, p=p) for _ in range(count)])
    full = np.zeros((count, L + 1), dtype=np.int64)
    labels = np.full((count, L + 1), IGNORE_INDEX, dtype=np.int64)
    full[:, 0:ctx:2] = keys
    full[:, 1:ctx:2] = values
    query = ctx + 2 * gaps
    full[rows, query] = keys
    labels[rows, query + 1] = values
    inputs, targets = full[:, :-1].copy(), labels[:, 1:].copy()
    if cfg.random_non_queries:
        filler = inputs == 0
        inputs[filler] = rng.integers(0, V, size=int(filler.sum()))
    return stack(inputs, targets)
