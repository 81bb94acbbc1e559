"""``TrainConfig``: everything one training run needs, as typed dataclasses (YAML via :mod:`mesanet.utils.config`).

The resolved config is written to ``<out_dir>/<name>/config.yaml`` with every run and stored in every checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional

from mesanet.data import DataConfig
from mesanet.models import MesaNetConfig, preset_config
from mesanet.utils.config import from_dict, to_dict
from mesanet.utils.validation import check_int, is_real

#: Fields that may differ between a checkpoint's config and the config that resumes it. Everything else
#: (model, data, batch_size, seed, optim, ...) decides the loss trace, so a change there is an error.
#: ``max_steps`` may grow or shrink (the cosine horizon then moves, with a warning); ``grad_accum`` only
#: changes how the same global batch is split; ``precision`` / ``device`` are execution options; dotted
#: names are single fields of a section.
RESUMABLE_CHANGES = frozenset(
    {
        "max_steps",
        "grad_accum",
        "precision",
        "device",
        "log_every",
        "eval_every",
        "eval_batches",
        "checkpoint_every",
        "keep_last",
        "resume",
        "out_dir",
        "data.cache_dir",
        "gradient_checkpointing",
        "compile",
        "compile_backend",
        "logging",
    }
)


def resumable_change(key: str) -> bool:
    """Whether the dotted config key ``key`` may differ on resume (a listed field or a field inside a listed section).
    ``data.cache_dir`` is only where the caches live: the data themselves are checked by their content hashes."""
    return key in RESUMABLE_CHANGES or key.split(".")[0] in RESUMABLE_CHANGES


#: Upper ends of the optimizer numbers: an AdamW step moves every weight by about ``lr`` (beyond 1 a model is
#: wrecked in one step, and far beyond it the update overflows float32); ``eps`` >= 1 swamps the second-moment
#: estimate, so the model silently stops learning.
MAX_LR = 1.0
MAX_EPS = 1.0


@dataclass
class ModelSection:
    """The model to train: a named preset (:data:`mesanet.models.PRESETS`), the mixer kind of every layer
    (one name, or a per-layer list) and ``MesaNetConfig`` fields on top of the preset. ``vocab_size`` is set
    from the tokenizer (an override must agree with it); ``eos_token_id`` / ``pad_token_id`` default to the data's
    end-of-document / padding ids."""

    preset: str = "cpu-small"
    mixer: str | list[str] = "mesa"
    overrides: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW with the paper's settings (App. G.3): linear warm-up from ~0 over ``warmup_steps``, then cosine
    decay to ``min_lr_ratio * lr`` at the last step; gradients clipped to global norm ``grad_clip``
    (``None`` / YAML ``null`` disables clipping; the norm is still computed and guarded). Every number must be
    finite and in range (:func:`check_optim`)."""

    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: Optional[float] = 1.0


@dataclass
class LoggingConfig:
    """Loggers besides ``metrics.csv`` and TensorBoard (which also gets the resolved config as text and hparams).
    ``wandb``: log the same metrics and the config to Weights & Biases (needs ``pip install wandb``; off by
    default) into project ``wandb_project`` (run name: the run's ``name``)."""

    wandb: bool = False
    wandb_project: str = "mesanet"


@dataclass
class TrainConfig:
    """One training run; the run directory is ``<out_dir>/<name>``.

    ``batch_size`` is the GLOBAL number of sequences per optimizer step: every one of ``world_size``
    processes runs ``grad_accum`` micro-batches of ``batch_size / (world_size * grad_accum)`` sequences.
    The global batch of a step is the same for any split, so the loss trace does not depend on it
    (up to floating-point reduction order). ``eval_every`` / ``checkpoint_every`` = 0 switch periodic
    evaluation / checkpoints off (the last step is always evaluated and checkpointed). ``eval_batches``
    batches of ``batch_size`` validation windows are used per evaluation. ``device``: ``auto`` = CUDA when
    available, else CPU. ``resume``: continue from the newest complete checkpoint of the run directory;
    with ``resume: false`` an existing run directory with results is an error (nothing is overwritten).
    ``gradient_checkpointing``: recompute every block in the backward pass (Hugging Face
    ``activation_checkpointing_enable()``; the same gradients for less activation memory). ``compile``:
    ``torch.compile`` the training forward with ``compile_backend`` (the first step then includes the compile time;
    compiled layers record no CG statistics, see :func:`mesanet.layers.solver_stats.active_collectors`).
    ``logging``: the optional Weights & Biases logger (TensorBoard is always written).
    """

    name: str = "mesanet"
    out_dir: str = "runs"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 200
    precision: Literal["fp32", "bf16"] = "fp32"
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 100
    keep_last: int = 2
    seed: int = 0
    resume: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def resolved_config(saved: dict) -> dict:
    """A saved config (a run's ``config.yaml``, a checkpoint's) as today's :class:`TrainConfig` reads it: fields
    added since it was written take their defaults, so comparing it with a new config shows real changes only.
    A config that no longer loads (a field since removed, a value now out of range) is returned as saved."""
    try:
        return to_dict(from_dict(TrainConfig, saved))
    except (ValueError, TypeError):
        return saved


def check_config(cfg: TrainConfig, world_size: int = 1) -> None:
    """Raise ``ValueError`` naming the field for anything that cannot run (before anything is written)."""
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"expected a TrainConfig, got {type(cfg).__name__}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.name or ""):
        raise ValueError(f"name: expected a directory name of letters, digits, '.', '_', '-', got {cfg.name!r}")
    positive = dict(
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        max_steps=cfg.max_steps,
        log_every=cfg.log_every,
        eval_batches=cfg.eval_batches,
        keep_last=cfg.keep_last,
    )
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"{key}: expected an integer >= 1, got {value}")
    for key in ("eval_every", "checkpoint_every"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key}: expected an integer >= 0 (0 = only at the last step), got {getattr(cfg, key)}")
    split = world_size * cfg.grad_accum
    if cfg.batch_size % split:
        raise ValueError(
            f"batch_size ({cfg.batch_size}, global sequences per step) must be divisible by world_size ({world_size}) "
            f"x grad_accum ({cfg.grad_accum}) = {split}: every process runs grad_accum micro-batches of "
            f"batch_size / (world_size x grad_accum) sequences"
        )
    if cfg.logging.wandb:
        from .wandb_logger import require_wandb

        require_wandb()  # installed? (one line before anything is written)
    if cfg.data.seq_len < 2:
        raise ValueError(f"data.seq_len: expected >= 2 (next-token prediction), got {cfg.data.seq_len}")
    check_optim(cfg.optim)


def check_optim(o: OptimConfig, where: str = "optim") -> None:
    """``ValueError`` naming the field for any optimizer number that is not finite or out of range (a NaN or inf
    learning rate, decay or epsilon would otherwise train to NaN weights or silently learn nothing)."""
    finite = dict(lr=o.lr, weight_decay=o.weight_decay, eps=o.eps, min_lr_ratio=o.min_lr_ratio)
    for key, value in finite.items():
        if not is_real(value):
            raise ValueError(f"{where}.{key}: expected a finite number, got {value!r}")
    if not 0 < o.lr <= MAX_LR:
        raise ValueError(f"{where}.lr: expected 0 < lr <= {MAX_LR:g}, got {o.lr}")
    if not 0 <= o.weight_decay * o.lr < 1:
        raise ValueError(
            f"{where}.weight_decay: expected >= 0 with lr x weight_decay < 1 (every step multiplies the "
            f"decayed weights by 1 - lr x weight_decay), got {o.weight_decay} (lr {o.lr})"
        )
    betas = tuple(o.betas) if isinstance(o.betas, (list, tuple)) else ()
    if len(betas) != 2 or not all(is_real(b) and 0 <= b < 1 for b in betas):
        raise ValueError(f"{where}.betas: expected two finite values in [0, 1), got {o.betas!r}")
    if not 0 < o.eps < MAX_EPS:
        raise ValueError(f"{where}.eps: expected 0 < eps < {MAX_EPS:g}, got {o.eps}")
    check_int(f"{where}.warmup_steps", o.warmup_steps, minimum=0)
    if not 0 <= o.min_lr_ratio <= 1:
        raise ValueError(f"{where}.min_lr_ratio: expected 0 <= min_lr_ratio <= 1, got {o.min_lr_ratio}")
    if o.grad_clip is not None and not (is_real(o.grad_clip) and o.grad_clip > 0):
        raise ValueError(f"{where}.grad_clip: expected a finite number > 0, or null for no clipping, got {o.grad_clip!r}")


def build_model_config(
    section: ModelSection,
    vocab_size: int,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> MesaNetConfig:
    """``MesaNetConfig`` of the preset + mixer + overrides, with ``vocab_size`` from the tokenizer and, unless
    overridden, ``eos_token_id`` / ``pad_token_id`` from the data (end-of-document and padding tokens)."""
    overrides = dict(section.overrides)
    if "vocab_size" in overrides and overrides["vocab_size"] != vocab_size:
        raise ValueError(
            f"model.overrides.vocab_size ({overrides['vocab_size']}) disagrees with the tokenizer ({vocab_size} tokens); "
            "leave it out: the vocabulary size comes from the tokenizer"
        )
    if "mixer_types" in overrides:
        raise ValueError("model.overrides.mixer_types: set the layer kinds with model.mixer (a name or a per-layer list)")
    overrides["vocab_size"] = vocab_size
    for key, value in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if value is not None:
            overrides.setdefault(key, value)
    try:
        return preset_config(section.preset, section.mixer, **overrides)
    except (ValueError, TypeError) as e:
        raise ValueError(f"model: {e}") from e


__all__ = [
    "LoggingConfig",
    "ModelSection",
    "OptimConfig",
    "RESUMABLE_CHANGES",
    "resolved_config",
    "TrainConfig",
    "build_model_config",
    "check_config",
    "check_optim",
    "resumable_change",
]
