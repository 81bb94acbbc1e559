"""Train several model configurations on the same data and token budget, evaluate each, write one report.

This is the one evaluation module that trains: it imports :mod:`mesanet.train` (and is therefore not imported
by ``mesanet.eval``'s ``__init__``). Every variant copies the ``base`` TrainConfig (same data, seq_len,
batch size, steps, seed, optimizer: the same tokens in the same order) and changes only the model: its mixer
kinds, preset and ``MesaNetConfig`` overrides. Runs live in ``<out_dir>/runs/<variant>``.

Resumable: a variant whose run has finished (``final/`` written, ``max_steps`` reached, same config) is not
trained again, and an evaluation whose ``eval.json`` has the same settings and is newer than the model is
reused; an interrupted run continues from its newest checkpoint (the trainer's resume).

YAML (``mesanet.utils.config.load(CompareConfig, path)``)::

    out_dir: runs/compare
    base: {data: {source: stdlib, seq_len: 256}, model: {preset: cpu-small}, max_steps: 300, batch_size: 8}
    variants:
      - {name: mesanet, mixer: mesa}
      - {name: gated-deltanet, mixer: gated_deltanet}
      - {name: transformer, mixer: attention}
      - {name: hawk-mesa, mixer: hawk+mesa}     # "a+b": the pattern repeated over the layers
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from ..models import PRESETS
from ..ops import INFERENCE
from ..train import TrainConfig, train
from ..train.config import RESUMABLE_CHANGES, ModelSection, check_optim, resolved_config
from ..utils.config import to_dict
from .checkpoint import resolve_device
from .compare_report import RunSummary, summarize_run, write_compare_report
from .run_eval import EVAL_JSON, eval_settings, evaluate_run, report_solver
from .run_files import FINAL, METRICS, MODEL_CONFIG, load_run_config, read_metrics


@dataclass
class CompareVariant:
    """One model to compare. ``mixer``: a kind for every layer, a per-layer list, or ``"a+b"`` (the pattern
    repeated over the layers, e.g. ``hawk+mesa`` for Hawk-Mesa); ``None`` keeps the base mixer. ``preset``:
    ``None`` keeps the base preset. ``overrides``: ``MesaNetConfig`` fields on top of the base overrides.
    ``lr``: this model's peak learning rate (each model at its own best lr from a sweep); ``None`` keeps the
    base's ``optim.lr``. Everything else of the recipe stays shared."""

    name: str
    mixer: Union[str, list[str], None] = None
    preset: Optional[str] = None
    overrides: dict = field(default_factory=dict)
    lr: Optional[float] = None


def default_variants() -> list[CompareVariant]:
    """The issue's comparison: MesaNet, Gated DeltaNet, a Transformer and Hawk-Mesa."""
    return [
        CompareVariant("mesanet", "mesa"),
        CompareVariant("gated-deltanet", "gated_deltanet"),
        CompareVariant("transformer", "attention"),
        CompareVariant("hawk-mesa", "hawk+mesa"),
    ]


@dataclass
class CompareConfig:
    """``base``: the shared TrainConfig (its ``name`` / ``out_dir`` are replaced per variant); ``out_dir``:
    where the runs (``runs/<variant>``) and the report go. Evaluation: Mesa CG report with each model's
    ``solver_inference``, fields replaced by ``eval_solver`` (e.g. ``{tol: 1.0e-6}``; empty: the model's own),
    perplexity at the ``extrapolation`` factors of the training length, ``max_windows`` windows per length.
    ``reuse``: skip finished runs / evaluations."""

    base: TrainConfig = field(default_factory=TrainConfig)
    variants: list[CompareVariant] = field(default_factory=default_variants)
    out_dir: str = "runs/compare"
    title: str = "Model comparison"
    eval_solver: dict = field(default_factory=dict)
    extrapolation: list[int] = field(default_factory=lambda: [2, 4])
    max_windows: int = 32
    solver_windows: int = 8
    reuse: bool = True


def _num_layers(preset: str, overrides: dict) -> int:
    if "num_hidden_layers" in overrides:
        return int(overrides["num_hidden_layers"])
    if preset not in PRESETS:
        raise ValueError(f"compare: unknown preset {preset!r}; valid: {sorted(PRESETS)}")
    return PRESETS[preset]["num_hidden_layers"]


def _resolve_mixer(mixer, layers: int, name: str):
    if isinstance(mixer, str) and "+" in mixer:
        pattern = [m.strip() for m in mixer.split("+")]
        if layers % len(pattern):
            raise ValueError(
                f"compare: variant {name!r}: the pattern {mixer!r} ({len(pattern)} kinds) does not divide {layers} layers"
            )
        return pattern * (layers // len(pattern))
    return mixer


def variant_configs(cfg: CompareConfig) -> list[TrainConfig]:
    """The TrainConfig of every variant: the base with the variant's model, named after it, under ``out_dir/runs``."""
    if not cfg.variants:
        raise ValueError("compare: expected at least one variant")
    names = [v.name for v in cfg.variants]
    if len(set(names)) != len(names):
        raise ValueError(f"compare: variant names must be unique, got {names}")
    configs = []
    for v in cfg.variants:
        base_model = cfg.base.model
        preset = v.preset or base_model.preset
        overrides = {**base_model.overrides, **v.overrides}
        mixer = base_model.mixer if v.mixer is None else v.mixer
        model = ModelSection(
            preset=preset, mixer=_resolve_mixer(mixer, _num_layers(preset, overrides), v.name), overrides=overrides
        )
        tc = dataclasses.replace(copy.deepcopy(cfg.base), name=v.name, out_dir=str(Path(cfg.out_dir) / "runs"), model=model)
        if v.lr is not None:
            tc.optim = dataclasses.replace(tc.optim, lr=v.lr)
            check_optim(tc.optim, where=f"compare: variant {v.name!r}: optim")
        configs.append(tc)
    return configs


def _trajectory_fields(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}


def run_finished(tc: TrainConfig) -> bool:
    """The run of ``tc`` exists, reached ``max_steps``, wrote ``final/``, and was trained with the same config."""
    run_dir = Path(tc.out_dir) / tc.name
    if not (run_dir / FINAL / MODEL_CONFIG).is_file() or not (run_dir / METRICS).is_file():
        return False
    try:
        saved = load_run_config(run_dir)
        steps = read_metrics(run_dir)["step"]
    except ValueError:
        return False
    return (
        len(steps) > 0
        and int(steps[-1]) >= tc.max_steps
        and _trajectory_fields(resolved_config(saved)) == _trajectory_fields(to_dict(tc))
    )


def _evaluation_current(run_dir: Path, settings: dict) -> bool:
    path = run_dir / EVAL_JSON
    if not path.is_file() or path.stat().st_mtime < (run_dir / FINAL / MODEL_CONFIG).stat().st_mtime:
        return False
    try:
        saved = json.loads(path.read_text()).get("settings", {})
    except json.JSONDecodeError:
        return False
    wanted = settings.get("solver") or {}  # overrides of the model's own settings: the saved (resolved) ones must agree
    if not isinstance(saved.get("solver"), dict) or any(saved["solver"].get(k) != v for k, v in wanted.items()):
        return False
    return all(saved.get(k) == settings[k] for k in settings if k != "solver")


def tokens_per_run(tc: TrainConfig) -> int:
    """The token budget of a run: ``max_steps x batch_size x seq_len``."""
    return tc.max_steps * tc.batch_size * tc.data.seq_len


def compare(
    cfg: Union[CompareConfig, Sequence[TrainConfig]], out_dir: Union[str, Path, None] = None, *, progress: bool = True
) -> Path:
    """Train (or reuse), evaluate and report every configuration; returns the path of ``report.md``.

    ``cfg``: a :class:`CompareConfig`, or TrainConfigs used as they are (then ``out_dir`` is required and the
    report says whether they share data and token budget)."""
    if isinstance(cfg, CompareConfig):
        configs, settings_cfg = variant_configs(cfg), cfg
        out = Path(out_dir) if out_dir is not None else Path(cfg.out_dir)
    else:
        configs = list(cfg)
        if not configs or not all(isinstance(c, TrainConfig) for c in configs):
            raise ValueError("compare: expected a CompareConfig or a non-empty list of TrainConfig")
        if out_dir is None:
            raise ValueError("compare: out_dir is required with a list of TrainConfig")
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"compare: run names must be unique, got {names}")
        settings_cfg, out = CompareConfig(base=configs[0], variants=[]), Path(out_dir)

    report_solver(settings_cfg.eval_solver or None, INFERENCE.to_dict())  # a bad eval_solver fails before any training
    settings = eval_settings(
        solver=settings_cfg.eval_solver or None,
        extrapolation=settings_cfg.extrapolation,
        max_windows=settings_cfg.max_windows,
        solver_windows=settings_cfg.solver_windows,
    )
    summaries: list[RunSummary] = []
    for tc in configs:
        run_dir = Path(tc.out_dir) / tc.name
        if not (settings_cfg.reuse and run_finished(tc)):
            train(tc, progress=progress)
        if not (settings_cfg.reuse and _evaluation_current(run_dir, settings)):
            evaluate_run(
                run_dir,
                solver=settings_cfg.eval_solver or None,
                extrapolation=settings_cfg.extrapolation,
                max_windows=settings_cfg.max_windows,
                solver_windows=settings_cfg.solver_windows,
                device=str(resolve_device(tc.device)),
                progress=progress,
            )
        summaries.append(summarize_run(tc.name, run_dir, tokens=tokens_per_run(tc)))
    return write_compare_report(summaries, out, title=settings_cfg.title, notes=_notes(configs))


def _notes(configs: Sequence[TrainConfig]) -> list[str]:
    first = configs[0]
    same_data = all(to_dict(c.data) == to_dict(first.data) for c in configs)
    budgets = {tokens_per_run(c) for c in configs}
    data = f"data: `{first.data.source}`, seq_len {first.data.seq_len}, vocabulary {first.data.vocab_size}"
    notes = [data + ("" if same_data else " (the runs do NOT share their data config)")]
    if len(budgets) == 1:
        notes.append(
            f"token budget: {budgets.pop():,} tokens per run ({first.max_steps} steps x {first.batch_size} sequences x {first.data.seq_len} tokens)"
        )
    else:
        notes.append("token budgets differ between runs: " + ", ".join(f"{c.name} {tokens_per_run(c):,}" for c in configs))
    notes.append("sorted by validation loss; tokens/s: median training throughput from metrics.csv")
    return notes


__all__ = ["CompareConfig", "CompareVariant", "compare", "default_variants", "run_finished", "tokens_per_run", "variant_configs"]
