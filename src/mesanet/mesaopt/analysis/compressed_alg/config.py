"""Settings of the CompressedAlg experiment (:func:`~mesanet.mesaopt.analysis.compressed_alg.run_compressed_alg`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mesanet.utils.validation import check_int, is_int

from ...data.dynamics import LDSConfig
from ..zoo import DEFAULT_ROOT

__all__ = ["CompressedAlgConfig"]


@dataclass
class CompressedAlgConfig:
    """Settings of ``run_compressed_alg`` (CPU-small defaults; ``--quick`` shrinks them)."""

    models: list[str] = field(default_factory=lambda: ["linear-1", "linear-2", "linear-4"])
    ks: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 8])
    fixed_extra_ks: list[int] = field(default_factory=lambda: [10, 20, 40, 80])
    train_steps: int = 600
    batch_size: int = 64
    lr: float = 2e-2
    warmup_steps: int = 30
    ridge_lams: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0])
    weights: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    eval_sequences: int = 2048
    eval_seed: int = 1
    val_sequences: int = 512
    val_seed: int = 2
    seed: int = 0
    zoo_root: str = str(DEFAULT_ROOT)
    zoo_steps: int | None = None  # None: the zoo recipes as they are; an int retrains them that short (quick runs)
    rel_tol: float = 0.1  # PASS threshold of the "close to" checks (relative loss gap; the paper gives no number)
    task: LDSConfig = field(default_factory=lambda: LDSConfig(state_dim=10, seq_len=50))

    def __post_init__(self) -> None:
        if not self.ks or any(not is_int(k, 1) for k in self.ks):
            raise ValueError(f"ks: expected a non-empty list of ints >= 1, got {self.ks!r}")
        if any(not is_int(k, 1) for k in self.fixed_extra_ks):
            raise ValueError(f"fixed_extra_ks: expected ints >= 1, got {self.fixed_extra_ks!r}")
        for name in ("train_steps", "batch_size", "eval_sequences", "val_sequences"):
            v = getattr(self, name)
            check_int(f"{name}", v, minimum=1)
        if not self.ridge_lams or any(not (math.isfinite(x) and x > 0) for x in self.ridge_lams):
            raise ValueError(f"ridge_lams: expected a non-empty list of floats > 0, got {self.ridge_lams!r}")
        if any(not math.isfinite(w) for w in self.weights):
            raise ValueError(f"weights: expected finite floats, got {self.weights!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: expected a float > 0, got {self.lr!r}")
        if self.zoo_steps is not None and (isinstance(self.zoo_steps, bool) or self.zoo_steps < 1):
            raise ValueError(f"zoo_steps: expected None or an int >= 1, got {self.zoo_steps!r}")
        if not isinstance(self.task, LDSConfig) or self.task.kind != "linear":
            raise ValueError("task: expected a fully observed LDSConfig (kind 'linear')")
