"""Shared plumbing of the synthetic task generators: the batch type, seeding and argument checks.

Every token task returns a ``TokenBatch(inputs, targets)`` of int64 tensors ``[N, T]``; a target of
``IGNORE_INDEX`` (-100) carries no loss and no accuracy. Randomness comes only from a
``numpy.random.Generator`` (``make_rng``), so a seed fixes the data exactly.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from mesanet.utils.validation import check_float, is_int

#: Target value ignored by the loss and the accuracy (PyTorch's ``cross_entropy`` default).
IGNORE_INDEX = -100

#: Seed of the reference MAD data stream (train set first, then the test set from the same stream).
MAD_DATA_SEED = 12345


class TokenBatch(NamedTuple):
    """``inputs`` int64 ``[N, T]`` token ids; ``targets`` int64 ``[N, T]``, ``IGNORE_INDEX`` where unscored."""

    inputs: Tensor
    targets: Tensor


def make_rng(seed: int | np.random.Generator) -> np.random.Generator:
    """A fresh ``default_rng(seed)`` for an int; a given ``Generator`` is used as is (its stream continues)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if not is_int(seed, 0):
        raise ValueError(f"seed: expected a non-negative int or numpy.random.Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def check_even(name: str, value: int) -> None:
    if value % 2:
        raise ValueError(f"{name}: expected an even number, got {value}")


def check_fraction(name: str, value: object, *, upper_inclusive: bool = False) -> float:
    """``value`` as a ``float`` in ``[0, 1)`` (``[0, 1]`` with ``upper_inclusive``), else one ``ValueError`` line."""
    return check_float(name, value, minimum=0.0, maximum=1.0, max_inclusive=upper_inclusive)


def stack(rows_in: Sequence[Sequence[int]], rows_tgt: Sequence[Sequence[int]]) -> TokenBatch:
    """Equal-length integer rows -> ``TokenBatch`` of int64 tensors."""
    inputs = torch.as_tensor(np.asarray(rows_in, dtype=np.int64))
    targets = torch.as_tensor(np.asarray(rows_tgt, dtype=np.int64))
    return TokenBatch(inputs, targets)
