"""MAD selective copying (SC): copy the content tokens, in order, after a copy token.

Spec: ``synthetic-tasks.md`` §1.4. Content ``[0, V-2)``, blank ``V-2``, copy ``V-1``. ``n_copy`` content
tokens (i.i.d., with replacement) get ``L - 2n - 1`` blanks inserted, each before a content token
chosen uniformly (so none follows the last content token, as in the reference code); then the copy
token and ``n`` blanks. No shift: the target at the j-th trailing blank is content token j; -100 on the
first ``L - n`` positions. Same targets at train and test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mesanet.utils.validation import check_int

from .base import IGNORE_INDEX, TokenBatch, make_rng, stack


@dataclass(frozen=True)
class SelectiveCopyingConfig:
    """SC baseline: V=16, L=256, 16 tokens to copy."""

    vocab_size: int = 16
    seq_len: int = 256
    num_tokens_to_copy: int = 16

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, minimum=3)
        n = check_int("num_tokens_to_copy", self.num_tokens_to_copy, minimum=1)
        check_int("seq_len", self.seq_len, minimum=1)
        if self.seq_len <= 2 * n + 1:
            raise ValueError(f"seq_len: expected > 2 * num_tokens_to_copy + 1 = {2 * n + 1}, got {self.seq_len}")

    @property
    def blank_token(self) -> int:
        return self.vocab_size - 2

    @property
    def copy_token(self) -> int:
        return self.vocab_size - 1


def selective_copying(
    num_sequences: int,
    seed: int | np.random.Generator,
    config: SelectiveCopyingConfig | None = None,
) -> TokenBatch:
    """``num_sequences`` SC sequences -> ``TokenBatch`` of shape ``[N, L]``."""
    cfg = config or SelectiveCopyingConfig()
    if not isinstance(cfg, SelectiveCopyingConfig):
        raise ValueError(f"config: expected a SelectiveCopyingConfig, got {type(cfg).__name__}")
    count = check_int("num_sequences", num_sequences, minimum=1)
    rng = make_rng(seed)
    n = cfg.num_tokens_to_copy
    blanks = cfg.seq_len - 2 * n - 1
    rows_in, rows_tgt = [], []
    for _ in range(count):
        content = rng.integers(0, cfg.vocab_size - 2, size=n)
        before = np.bincount(rng.integers(0, n, size=blanks), minlength=n)
        seq: list[int] = []
        for tok, nb in zip(content.tolist(), before.tolist()):
            seq += [cfg.blank_token] * nb + [tok]
        seq += [cfg.copy_token] + [cfg.blank_token] * n
        rows_in.append(seq)
        rows_tgt.append([IGNORE_INDEX] * (cfg.seq_len - n) + content.tolist())
    return stack(rows_in, rows_tgt)
