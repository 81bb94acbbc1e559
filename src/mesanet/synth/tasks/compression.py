"""MAD compression (C): reproduce the whole sequence (to be read from a pooled last hidden state).

Spec: ``synthetic-tasks.md`` §1.5. Content ``[0, V-1)``, compression token ``V-1``: ``L-1`` i.i.d.
tokens then the compression token; targets equal the inputs at every position (train and test).
The auto-encoder head the reference pairs with this task is a model concern, not a generator one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mesanet.utils.validation import check_int

from .base import TokenBatch, make_rng, stack


@dataclass(frozen=True)
class CompressionConfig:
    """C baseline: V=16, L=32."""

    vocab_size: int = 16
    seq_len: int = 32

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, minimum=2)
        check_int("seq_len", self.seq_len, minimum=2)

    @property
    def compression_token(self) -> int:
        return self.vocab_size - 1


def compression(
    num_sequences: int,
    seed: int | np.random.Generator,
    config: CompressionConfig | None = None,
) -> TokenBatch:
    """``num_sequences`` C sequences -> ``TokenBatch`` of shape ``[N, L]`` with targets == inputs."""
    cfg = config or CompressionConfig()
    if not isinstance(cfg, CompressionConfig):
        raise ValueError(f"config: expected a CompressionConfig, got {type(cfg).__name__}")
    n = check_int("num_sequences", num_sequences, minimum=1)
    rng = make_rng(seed)
    body = rng.integers(0, cfg.vocab_size - 1, size=(n, cfg.seq_len - 1))
    seqs = np.concatenate([body, np.full((n, 1), cfg.compression_token)], axis=1)
    return stack(seqs, seqs.copy())
