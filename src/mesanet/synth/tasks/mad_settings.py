"""The MAD difficulty grid: a baseline per task plus one-at-a-time variants (66 settings in all).

Spec: ``synthetic-tasks.md`` §1.1 table. ``mad_settings(task)`` lists ``MadSetting``s whose first entry
is the baseline; each variant changes exactly one field (a config field or ``num_train``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

from .compression import CompressionConfig
from .fuzzy_recall import FuzzyRecallConfig
from .memorization import MemorizationConfig
from .recall import InContextRecallConfig, NoisyRecallConfig
from .selective_copying import SelectiveCopyingConfig

MadConfig = Union[InContextRecallConfig, FuzzyRecallConfig, SelectiveCopyingConfig, CompressionConfig, MemorizationConfig]

#: MAD test-set size for every setting.
MAD_NUM_TEST = 1280


@dataclass(frozen=True)
class MadSetting:
    """One MAD setting: a name like ``"vocab_size=32"`` (``"baseline"``), the config and training-set size."""

    task: str
    name: str
    config: MadConfig
    num_train: int
    num_test: int = MAD_NUM_TEST


_N_TRAIN = (6400, 3200, 1600, 800)
_GRID: dict[str, tuple[MadConfig, int, dict[str, tuple]]] = {
    "in_context_recall": (
        InContextRecallConfig(),
        12800,
        {"vocab_size": (32, 64, 128), "seq_len": (256, 512, 1024), "num_train": _N_TRAIN},
    ),
    "noisy_recall": (
        NoisyRecallConfig(),
        12800,
        {"vocab_size": (48, 80, 144), "seq_len": (256, 512, 1024), "num_train": _N_TRAIN, "frac_noise": (0.4, 0.6, 0.8)},
    ),
    "fuzzy_recall": (
        FuzzyRecallConfig(),
        12800,
        {"vocab_size": (32, 64, 128), "seq_len": (256, 512, 1024), "num_train": _N_TRAIN},
    ),
    "selective_copying": (
        SelectiveCopyingConfig(),
        12800,
        {"vocab_size": (32, 64, 128), "seq_len": (512, 1024), "num_train": _N_TRAIN, "num_tokens_to_copy": (32, 64, 96)},
    ),
    "compression": (CompressionConfig(), 12800, {"vocab_size": (32, 64, 128), "seq_len": (64, 128, 256), "num_train": _N_TRAIN}),
    "memorization": (MemorizationConfig(), 256, {"vocab_size": (512, 1024, 2048, 4096, 8192)}),
}

MAD_TASKS = tuple(_GRID)


def mad_settings(task: str) -> list[MadSetting]:
    """Baseline first, then every one-field variant of ``task`` (one of ``MAD_TASKS``)."""
    if task not in _GRID:
        raise ValueError(f"task: expected one of {MAD_TASKS}, got {task!r}")
    base, n_train, variants = _GRID[task]
    out = [MadSetting(task, "baseline", base, n_train)]
    for field, values in variants.items():
        for value in values:
            if field == "num_train":
                out.append(MadSetting(task, f"num_train={value}", base, value))
            else:
                out.append(MadSetting(task, f"{field}={value}", replace(base, **{field: value}), n_train))
    return out
