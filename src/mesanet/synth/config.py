"""``SynthConfig``: the task x mixer x lr x wd x seed grid of the synthetic suite and its training budget.

Strict typed dataclass (unknown keys are errors) loaded from YAML presets (``mesanet.presets``: ``synth*.yaml``) with
``key=value`` overrides; :func:`check_config` validates names and ranges (``ValueError``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from mesanet.models import MIXER_KINDS, MesaNetConfig
from mesanet.ops import INFERENCE, TRAINING
from mesanet.ops.solver_settings import as_settings
from mesanet.presets import PRESET_DIR
from mesanet.utils.config import ConfigError, from_dict, load, to_dict

from .tasks import MAD_TASKS

#: Tasks the runner knows: the six MAD tasks, MQAR, in-context linear regression and RegBench.
TASKS = (*MAD_TASKS, "mqar", "regression", "regbench")

#: Fields that only choose which cells run, or how: an existing output dir may be re-run with other values
#: (finished cells are reused, new ones are added). Every other field changes what a cell computes.
GRID_FIELDS = frozenset({"tasks", "mixers", "lrs", "weight_decays", "seeds", "workers", "progress", "out_dir"})

#: ``MesaNetConfig`` fields that the synth backbone sets from its own config (not allowed in ``model_options``).
BACKBONE_FIELDS = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_heads",
        "head_dim",
        "mixer_types",
        "mlp_expansion",
        "chunk_size",
        "solver_training",
        "solver_inference",
        "use_cache",
    }
)

#: The packaged presets (``mesanet.presets``; the ``--quick`` preset lives there).
CONFIG_DIR = PRESET_DIR


@dataclass
class TaskSize:
    """Per-task overrides. ``num_train`` caps the training set (MAD grid variants keep a smaller own value),
    ``num_test`` the test set, ``steps`` / ``batch_size`` the training budget, ``params`` generator config
    fields applied to every setting of the task (e.g. ``{seq_len: 64}``; a MAD grid variant keeps its own
    value of the field it varies). For ``regression`` the params are ``dim``, ``num_pairs``, ``noise_std``; for
    ``regbench`` the :class:`~mesanet.synth.tasks.RegBenchConfig` fields (``num_train`` is not allowed there:
    ``regbench_num_train`` lists the training-set sizes)."""

    num_train: int | None = None
    num_test: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    params: dict = field(default_factory=dict)


@dataclass
class SynthConfig:
    """One synthetic-suite run (``<out_dir>/config.yaml`` holds the resolved copy).

    Grid: ``tasks`` x settings (MAD baseline, or the full difficulty grid with ``mad_grid``; MQAR every valid
    ``(seq_len, num_pairs)`` with ``4 * num_pairs <= seq_len``; regression one setting; RegBench one setting per
    training-set size in ``regbench_num_train``, each with its own distinct automata) x ``mixers`` (a
    registry kind, or a hybrid ``"hawk+mesa"`` whose kinds alternate over the layers) x ``lrs`` x
    ``weight_decays`` x ``seeds``. Model: ``num_layers`` blocks of width ``hidden_size`` with ``num_heads``
    heads of ``head_dim``; Mesa solves with ``solver_training`` / ``solver_inference`` (SolverSettings fields, e.g.
    ``{max_iter: 30, tol: 0.0}``; empty: the defaults); ``model_options``: further ``MesaNetConfig`` fields for
    every cell's model (e.g. ``{gamma_cap: 1.0, use_output_gate: true}``; not the fields set from this config). Training: ``steps`` AdamW steps of ``batch_size`` sequences (``epochs > 0``
    instead sets steps = ceil(epochs * num_train / batch_size)), linear warm-up over
    ``min(warmup_steps, max_warmup_frac * steps)`` steps, cosine to ``min_lr``. The seed sets the model
    init and batch order; the data of a setting is fixed by ``data_seed`` (train set first, then test set).
    """

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    mad_grid: bool = False
    mixers: list[str] = field(default_factory=lambda: ["mesa", "gated_deltanet"])
    lrs: list[float] = field(default_factory=lambda: [3e-3, 1e-3, 5e-4, 1e-4])
    weight_decays: list[float] = field(default_factory=lambda: [0.01, 0.1])
    seeds: list[int] = field(default_factory=lambda: [0])
    # model
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 8
    head_dim: int = 16
    mlp_expansion: float = 3.0
    chunk_size: int = 32
    solver_training: dict = field(default_factory=dict)  # SolverSettings fields replacing mesanet.ops.TRAINING's
    solver_inference: dict = field(default_factory=dict)  # ... and mesanet.ops.INFERENCE's (evaluation)
    model_options: dict = field(default_factory=dict)  # further MesaNetConfig fields (e.g. {gamma_cap: 1.0})
    # optimisation
    steps: int = 1000
    epochs: float = 0.0
    batch_size: int = 32
    warmup_steps: int = 750
    max_warmup_frac: float = 0.1
    min_lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    grad_clip: float = 1.0
    # data and evaluation
    data_seed: int = 12345
    num_train: int | None = None
    num_test: int = 1280
    num_train_eval: int = 256
    eval_batch_size: int = 128
    mqar_seq_lens: list[int] = field(default_factory=lambda: [64, 128, 256])
    mqar_num_pairs: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    mqar_vocab_size: int = 8192
    mqar_fit_threshold: float = 0.9  # a model "fits" an MQAR setting when its best test accuracy reaches this
    regression_tolerance: float = 0.05  # target: Mesa MSE <= (1 + tol) * ridge MSE at the longest context
    regbench_num_train: list[int] = field(default_factory=lambda: [1000, 2500, 5000])  # sequences (= automata) per setting
    task_sizes: dict = field(default_factory=dict)
    # execution
    workers: int = 1
    progress: bool = True
    out_dir: str = "runs/synth"

    def __post_init__(self) -> None:
        sizes = {}
        for name, value in dict(self.task_sizes).items():
            sizes[name] = value if isinstance(value, TaskSize) else from_dict(TaskSize, value, f"task_sizes.{name}")
        self.task_sizes = sizes

    def size(self, task: str) -> TaskSize:
        return self.task_sizes.get(task, TaskSize())


def split_mixer(mixer: str, num_layers: int) -> list[str]:
    """``"hawk+mesa"`` -> per-layer kinds (alternating, repeated to ``num_layers``); ``ValueError`` if unknown."""
    if not isinstance(mixer, str) or not mixer:
        raise ValueError(f"mixers: expected a mixer name like 'mesa' or 'hawk+mesa', got {mixer!r}")
    kinds = mixer.split("+")
    bad = [k for k in kinds if k not in MIXER_KINDS]
    if bad:
        raise ValueError(f"mixers: unknown mixer kind(s) {bad} in {mixer!r}; valid kinds: {sorted(MIXER_KINDS)}")
    return [kinds[i % len(kinds)] for i in range(num_layers)]


def check_config(cfg: SynthConfig) -> SynthConfig:
    """Validate names, ranges and the grid; returns ``cfg`` (``ValueError`` saying what is wrong)."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"SynthConfig: {msg}")

    for list_name in ("tasks", "mixers", "lrs", "weight_decays", "seeds"):
        values = getattr(cfg, list_name)
        need(len(values) > 0, f"{list_name}: expected at least one value, got none")
        need(len(set(values)) == len(values), f"{list_name}: expected distinct values, got {values}")
    bad = [t for t in cfg.tasks if t not in TASKS]
    need(not bad, f"tasks: unknown task(s) {bad}; valid: {list(TASKS)}")
    for mixer in cfg.mixers:
        split_mixer(mixer, cfg.num_layers)
    need(all(lr > 0 for lr in cfg.lrs), f"lrs: expected positive values, got {cfg.lrs}")
    need(all(wd >= 0 for wd in cfg.weight_decays), f"weight_decays: expected values >= 0, got {cfg.weight_decays}")
    need(all(s >= 0 for s in cfg.seeds), f"seeds: expected values >= 0, got {cfg.seeds}")
    for name in (
        "hidden_size",
        "num_layers",
        "num_heads",
        "head_dim",
        "chunk_size",
        "steps",
        "batch_size",
        "num_test",
        "num_train_eval",
        "eval_batch_size",
        "mqar_vocab_size",
        "workers",
    ):
        need(getattr(cfg, name) >= 1, f"{name}: expected an int >= 1, got {getattr(cfg, name)}")
    need(cfg.num_train is None or cfg.num_train >= 1, f"num_train: expected None or >= 1, got {cfg.num_train}")
    need(cfg.epochs >= 0, f"epochs: expected >= 0, got {cfg.epochs}")
    need(cfg.warmup_steps >= 0 and 0 <= cfg.max_warmup_frac < 1, "warmup_steps >= 0 and 0 <= max_warmup_frac < 1 expected")
    need(cfg.min_lr >= 0, f"min_lr: expected >= 0, got {cfg.min_lr}")
    need(len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas), f"betas: expected two values in [0, 1), got {cfg.betas}")
    need(0 < cfg.mqar_fit_threshold <= 1, f"mqar_fit_threshold: expected (0, 1], got {cfg.mqar_fit_threshold}")
    need(cfg.regression_tolerance >= 0, f"regression_tolerance: expected >= 0, got {cfg.regression_tolerance}")
    bad = [t for t in cfg.task_sizes if t not in TASKS]
    need(not bad, f"task_sizes: unknown task(s) {bad}; valid: {list(TASKS)}")
    for task, size in cfg.task_sizes.items():
        for name in ("num_train", "num_test", "steps", "batch_size"):
            value = getattr(size, name)
            need(value is None or value >= 1, f"task_sizes.{task}.{name}: expected None or an int >= 1, got {value}")
    for name, default in (("solver_training", TRAINING), ("solver_inference", INFERENCE)):
        as_settings(getattr(cfg, name), default, f"SynthConfig: {name}")  # ValueError naming the field
    if "regbench" in cfg.tasks:
        sizes = cfg.regbench_num_train
        need(
            bool(sizes)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes)
            and len(set(sizes)) == len(sizes),
            f"regbench_num_train: expected distinct ints >= 1, got {sizes}",
        )
        need(
            cfg.size("regbench").num_train is None,
            "task_sizes.regbench.num_train: expected unset (regbench_num_train lists RegBench's training-set sizes), "
            f"got {cfg.size('regbench').num_train}",
        )
    need(
        isinstance(cfg.model_options, dict),
        f"model_options: expected a mapping of MesaNetConfig fields, got {cfg.model_options!r}",
    )
    taken = sorted(set(cfg.model_options) & BACKBONE_FIELDS)
    need(not taken, f"model_options: {taken} are set from the synth config itself (use its own fields)")
    try:
        MesaNetConfig(**cfg.model_options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"SynthConfig: model_options: {err}") from None
    if "mqar" in cfg.tasks:
        need(bool(cfg.mqar_seq_lens) and bool(cfg.mqar_num_pairs), "mqar_seq_lens and mqar_num_pairs: expected non-empty lists")
    return cfg


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> SynthConfig:
    """Config from a YAML preset (``None``: the dataclass defaults) plus ``key=value`` overrides, checked.
    Unknown keys and bad values raise ``ValueError`` (``ConfigError`` is one)."""
    return check_config(load(SynthConfig, path, overrides))


def config_dict(cfg: SynthConfig) -> dict:
    """Plain dict (``task_sizes`` as nested dicts) for YAML / JSON."""
    data = to_dict(cfg)
    data["task_sizes"] = {k: to_dict(v) if dataclasses.is_dataclass(v) else v for k, v in cfg.task_sizes.items()}
    return data


def fingerprint(cfg: SynthConfig) -> dict:
    """The fields that decide what a cell computes (everything but :data:`GRID_FIELDS`)."""
    return {k: v for k, v in config_dict(cfg).items() if k not in GRID_FIELDS}


__all__ = [
    "CONFIG_DIR",
    "ConfigError",
    "GRID_FIELDS",
    "SynthConfig",
    "TASKS",
    "TaskSize",
    "check_config",
    "config_dict",
    "fingerprint",
    "load_config",
    "split_mixer",
]
