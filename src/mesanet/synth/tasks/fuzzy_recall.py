"""MAD fuzzy in-context recall (FR): keys and values are motifs (runs of distinct tokens).

Spec: ``synthetic-tasks.md`` §1.3. Pad ``V-1``; key tokens ``[0, (V-1)//2)``, value tokens
``[(V-1)//2, V-1)``. A probe pair is inserted at a random offset and repeated at the end; other pairs
draw motif sizes in ``1..k_motif`` / ``1..v_motif`` (test keys always have size ``k_motif``), reusing a
key's stored value. The sequence is left-padded to ``L + 1`` and shifted: inputs and targets have
length ``L``. Training targets are the full shifted sequence; test targets are the value tokens of
pairs whose key occurred earlier, plus the final probe's value tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mesanet.utils.validation import check_int

from .base import IGNORE_INDEX, TokenBatch, make_rng, stack


@dataclass(frozen=True)
class FuzzyRecallConfig:
    """FR baseline: V=16 (keys 0-6, values 7-14, pad 15), L=128, key motifs <= 3, value motifs <= 3."""

    vocab_size: int = 16
    seq_len: int = 128
    k_motif_size: int = 3
    v_motif_size: int = 3

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, minimum=3)
        check_int("k_motif_size", self.k_motif_size, minimum=1)
        check_int("v_motif_size", self.v_motif_size, minimum=1)
        if self.num_key_tokens < self.k_motif_size:
            raise ValueError(
                f"vocab_size: expected (V-1)//2 >= k_motif_size={self.k_motif_size} key tokens, "
                f"got {self.num_key_tokens} (V={self.vocab_size})"
            )
        if self.num_value_tokens < self.v_motif_size:
            raise ValueError(
                f"vocab_size: expected (V-1) - (V-1)//2 >= v_motif_size={self.v_motif_size} value tokens, "
                f"got {self.num_value_tokens} (V={self.vocab_size})"
            )
        min_len = 3 * (self.k_motif_size + self.v_motif_size)
        check_int("seq_len", self.seq_len, minimum=min_len)

    @property
    def pad_token(self) -> int:
        return self.vocab_size - 1

    @property
    def num_key_tokens(self) -> int:
        return (self.vocab_size - 1) // 2

    @property
    def num_value_tokens(self) -> int:
        return self.vocab_size - 1 - self.num_key_tokens


def _motif(rng: np.random.Generator, lo: int, hi: int, size: int) -> tuple[int, ...]:
    """A uniform ordered tuple of ``size`` distinct tokens from ``[lo, hi)``."""
    return tuple(int(t) for t in rng.choice(np.arange(lo, hi), size=size, replace=False))


def _one_sequence(cfg: FuzzyRecallConfig, rng: np.random.Generator, is_training: bool) -> tuple[list[int], list[bool]]:
    """Unpadded tokens and, per token, whether it is a scored value token (test rule)."""
    kh = cfg.num_key_tokens
    vlo, vhi = kh, cfg.vocab_size - 1

    def draw_pair() -> tuple[tuple[int, ...], int]:
        ks = cfg.k_motif_size if not is_training else int(rng.integers(1, cfg.k_motif_size + 1))
        vs = int(rng.integers(1, cfg.v_motif_size + 1))
        return _motif(rng, 0, kh, ks), vs

    k_p, vs_p = draw_pair()
    v_p = _motif(rng, vlo, vhi, vs_p)
    probe_len = len(k_p) + len(v_p)
    probe_idx = int(rng.integers(0, cfg.seq_len - 2 * probe_len))
    limit = cfg.seq_len - probe_len - (cfg.k_motif_size + cfg.v_motif_size)
    seq: list[int] = []
    scored: list[bool] = []
    kv: dict[tuple[int, ...], tuple[int, ...]] = {}
    placed = False

    def append(key: tuple[int, ...], value: tuple[int, ...], score: bool) -> None:
        seq.extend(key + value)
        scored.extend([False] * len(key) + [score] * len(value))

    while len(seq) < limit:
        if len(seq) >= probe_idx and not placed:
            key, value = k_p, v_p
            placed = True
        else:
            key, vs = draw_pair()
            if key == k_p:
                value = v_p
            elif key in kv:
                value = kv[key]
            else:
                value = _motif(rng, vlo, vhi, vs)
        append(key, value, key in kv)
        kv[key] = value
    append(k_p, v_p, True)
    return seq, scored


def fuzzy_recall(
    num_sequences: int,
    seed: int | np.random.Generator,
    config: FuzzyRecallConfig | None = None,
    *,
    is_training: bool = False,
) -> TokenBatch:
    """``num_sequences`` FR sequences -> ``TokenBatch`` of shape ``[N, L]``."""
    cfg = config or FuzzyRecallConfig()
    if not isinstance(cfg, FuzzyRecallConfig):
        raise ValueError(f"config: expected a FuzzyRecallConfig, got {type(cfg).__name__}")
    n = check_int("num_sequences", num_sequences, minimum=1)
    rng = make_rng(seed)
    rows_in, rows_tgt = [], []
    for _ in range(n):
        seq, scored = _one_sequence(cfg, rng, is_training)
        pad = cfg.seq_len + 1 - len(seq)
        seq = [cfg.pad_token] * pad + seq
        scored = [False] * pad + scored
        rows_in.append(seq[:-1])
        if is_training:
            rows_tgt.append(seq[1:])
        else:
            rows_tgt.append([seq[t] if scored[t] else IGNORE_INDEX for t in range(1, len(seq))])
    return stack(rows_in, rows_tgt)
