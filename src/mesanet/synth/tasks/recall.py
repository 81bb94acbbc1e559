"""MAD in-context recall (CR) and noisy in-context recall (NR), multi-query mode.

Spec: ``synthetic-tasks.md`` §1.2. With ``ns = V - noise_vocab_size``: keys ``[0, ns/2)``, values
``[ns/2, ns)``, noise ``[ns, V)``. A sequence of ``L`` tokens is ``L/2`` two-token slots: pairs (a key
drawn with replacement, its value reused if the key was seen, else a fresh value) or, with probability
``frac_noise``, two noise tokens; one slot ``i*`` is never noise; the last slot is a probe of an
already-present key. Inputs are ``seq[:-1]`` (length ``L - 1``). Training targets are ``seq[1:]``;
test targets are the value at each key position whose key occurred earlier, -100 elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mesanet.utils.validation import check_int

from .base import IGNORE_INDEX, TokenBatch, check_even, check_fraction, make_rng, stack


@dataclass(frozen=True)
class InContextRecallConfig:
    """CR baseline: V=16, L=128, no noise (keys 0-7, values 8-15)."""

    vocab_size: int = 16
    seq_len: int = 128
    noise_vocab_size: int = 0
    frac_noise: float = 0.0

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, minimum=2)
        check_int("seq_len", self.seq_len, minimum=4)
        check_even("seq_len", self.seq_len)
        check_int("noise_vocab_size", self.noise_vocab_size, minimum=0)
        check_fraction("frac_noise", self.frac_noise)
        ns = self.vocab_size - self.noise_vocab_size
        if ns < 2:
            raise ValueError(f"vocab_size - noise_vocab_size: expected >= 2 (one key and one value), got {ns}")
        if self.frac_noise > 0 and self.noise_vocab_size == 0:
            raise ValueError(f"noise_vocab_size: expected >= 1 when frac_noise > 0, got {self.noise_vocab_size}")

    @property
    def input_len(self) -> int:
        return self.seq_len - 1

    @property
    def num_keys(self) -> int:
        return (self.vocab_size - self.noise_vocab_size) // 2


@dataclass(frozen=True)
class NoisyRecallConfig(InContextRecallConfig):
    """NR baseline: V=32 with a 16-token noise vocabulary (keys 0-7, values 8-15, noise 16-31), 20% noise."""

    vocab_size: int = 32
    seq_len: int = 128
    noise_vocab_size: int = 16
    frac_noise: float = 0.2


def _one_sequence(cfg: InContextRecallConfig, rng: np.random.Generator) -> tuple[list[int], list[bool]] | None:
    """Tokens (length L) and, per token, whether it is a key that occurred earlier (a scored key)."""
    ns = cfg.vocab_size - cfg.noise_vocab_size
    half = ns // 2
    slots = cfg.seq_len // 2
    forced = int(rng.integers(0, slots)) if cfg.frac_noise > 0 else -1
    seq: list[int] = []
    repeat: list[bool] = []
    kv: dict[int, int] = {}
    for slot in range(slots - 1):
        if cfg.frac_noise > 0 and slot != forced and rng.random() < cfg.frac_noise:
            seq += [int(t) for t in rng.integers(ns, cfg.vocab_size, size=2)]
            repeat += [False, False]
            continue
        key = int(rng.integers(0, half))
        seen = key in kv
        if not seen:
            kv[key] = int(rng.integers(half, ns))
        seq += [key, kv[key]]
        repeat += [seen, False]
    if not kv:  # every slot was noise (only possible when i* is the probe slot): redraw
        return None
    keys = sorted(kv)
    key = keys[int(rng.integers(0, len(keys)))]
    seq += [key, kv[key]]
    repeat += [True, False]
    return seq, repeat


def generate_recall(
    config: InContextRecallConfig,
    num_sequences: int,
    seed: int | np.random.Generator,
    *,
    is_training: bool = False,
) -> TokenBatch:
    """``num_sequences`` CR/NR sequences -> ``TokenBatch`` of shape ``[N, L - 1]``."""
    if not isinstance(config, InContextRecallConfig):
        raise ValueError(f"config: expected an InContextRecallConfig, got {type(config).__name__}")
    n = check_int("num_sequences", num_sequences, minimum=1)
    rng = make_rng(seed)
    rows_in, rows_tgt = [], []
    while len(rows_in) < n:
        out = _one_sequence(config, rng)
        if out is None:
            continue
        seq, repeat = out
        rows_in.append(seq[:-1])
        if is_training:
            rows_tgt.append(seq[1:])
        else:
            rows_tgt.append([seq[t + 1] if repeat[t] else IGNORE_INDEX for t in range(len(seq) - 1)])
    return stack(rows_in, rows_tgt)


def in_context_recall(
    num_sequences: int,
    seed: int | np.random.Generator,
    config: InContextRecallConfig | None = None,
    *,
    is_training: bool = False,
) -> TokenBatch:
    """CR at ``config`` (default: the MAD baseline)."""
    return generate_recall(config or InContextRecallConfig(), num_sequences, seed, is_training=is_training)


def noisy_recall(
    num_sequences: int,
    seed: int | np.random.Generator,
    config: NoisyRecallConfig | None = None,
    *,
    is_training: bool = False,
) -> TokenBatch:
    """NR at ``config`` (default: the MAD baseline)."""
    return generate_recall(config or NoisyRecallConfig(), num_sequences, seed, is_training=is_training)
