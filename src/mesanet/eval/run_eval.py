"""Evaluate a trained run (or a saved model) and write its evaluation files.

``evaluate_run(path)`` loads the model and tokenizer (a validated MesaNet checkpoint), rebuilds the validation
tokens from the run's saved data config with :func:`mesanet.data.prepare_data` (cached per data config within
the process; ``prepare_data`` keeps its own on-disk cache), then measures

* validation loss / perplexity and the per-position NLL at the training length,
* the same at ``factor x`` the training length for each extrapolation factor (unavailable ones say why),
* CG iterations and residuals of every Mesa layer at the tolerance ``tol``,

and writes ``eval.json``, ``per_position.csv``, ``per_position.png`` and ``summary.md`` into the run directory
(or ``out_dir``). Losses are measured with the model's own evaluation solver settings (``solver_inference``);
only the solver report uses ``solver`` (by default those same settings).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from mesanet.utils.validation import is_int

from ..data.config import user_cache_dir
from ..ops import INFERENCE, SolverSettings
from ..ops.solver_settings import as_settings
from ..utils.config import from_dict
from .checkpoint import load_checkpoint
from .evaluate import ExtrapolationResult, check_tokens
from .evaluate import extrapolation as run_extrapolation
from .plots import plot_per_position
from .run_files import load_run_config, recorded_cache_dir, resolve_model_dir, train_seq_len
from .solver import solver_report

EVAL_JSON = "eval.json"
PER_POSITION_CSV = "per_position.csv"
PER_POSITION_PNG = "per_position.png"
SUMMARY_MD = "summary.md"

#: Log-spaced position bins per decade in the per-position plot (the CSV keeps every position).
PLOT_BINS_PER_DECADE = 20

_VAL_CACHE: dict[str, np.ndarray] = {}


def resolve_cache_dir(cache_dir: Optional[str], run_dir: Optional[Path]) -> str:
    """Where evaluation keeps the data caches of a run whose config says ``cache_dir``. ``None`` (the user cache
    folder) and a relative path (which meant the training process's working directory, not ours) become the
    absolute folder training recorded (when it exists and is writable), else :func:`user_cache_dir`
    (``$MESANET_CACHE``, ...). Never a folder relative to the current directory."""
    path = Path(cache_dir).expanduser() if cache_dir is not None else None
    if path is not None and path.is_absolute():
        return str(path)
    recorded = recorded_cache_dir(run_dir) if run_dir is not None else None
    if recorded is not None and recorded.is_dir() and os.access(recorded, os.W_OK | os.X_OK):
        return str(recorded)
    return str(user_cache_dir())


def validation_tokens(data_section: dict, progress: bool = True, run_dir: Optional[Path] = None) -> np.ndarray:
    """The validation split of the data config ``data_section`` (a run's ``config.yaml`` ``data:`` mapping),
    rebuilt with :func:`mesanet.data.prepare_data` (caches where :func:`resolve_cache_dir` says); cached per
    config within the process."""
    from ..data import DataConfig, prepare_data

    if not isinstance(data_section, dict):
        raise ValueError(f"expected the run config's data section to be a mapping, got {type(data_section).__name__}")
    cfg = from_dict(DataConfig, data_section, "data")
    if hasattr(cfg, "cache_dir"):
        cfg = dataclasses.replace(cfg, cache_dir=resolve_cache_dir(cfg.cache_dir, run_dir))
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    if key not in _VAL_CACHE:
        _VAL_CACHE[key] = np.asarray(prepare_data(cfg, progress=progress).val)
    return _VAL_CACHE[key]


def eval_settings(*, solver, extrapolation, max_windows, solver_windows) -> dict:
    """What decides an evaluation's numbers (stored in ``eval.json``; an evaluation with the same settings of
    an unchanged model can be reused). ``solver``: the solver report's settings as a dict (or the overrides
    asked for, ``None`` = the model's own)."""
    solver = solver.to_dict() if isinstance(solver, SolverSettings) else (None if solver is None else dict(solver))
    return dict(solver=solver, extrapolation=sorted({1, *extrapolation}), max_windows=max_windows, solver_windows=solver_windows)


def report_solver(solver: SolverSettings | Mapping[str, Any] | None, model_solver: Mapping[str, Any]) -> SolverSettings:
    """The solver report's settings: ``solver`` as given, a mapping's fields replacing the model's
    ``solver_inference`` (``model_solver``), or (``None``) the model's own."""
    if isinstance(solver, SolverSettings):
        return solver
    own = as_settings(model_solver, INFERENCE, "the model's solver_inference")
    return as_settings(solver, own, "evaluate_run: solver")


def _check_arguments(solver, extrapolation, max_windows, solver_windows, batch_size) -> None:
    """The cheap checks, before a model or any data is loaded."""
    where = "evaluate_run"
    report_solver(solver, INFERENCE.to_dict())  # the same check as against the model's settings
    if isinstance(extrapolation, (str, bytes)) or not all(is_int(f, 1) for f in extrapolation):
        raise ValueError(f"{where}: expected extrapolation to be a list of integer factors >= 1, got {extrapolation!r}")
    if max_windows is not None and not is_int(max_windows, 1):
        raise ValueError(f"{where}: expected max_windows to be None or an integer >= 1, got {max_windows!r}")
    if not is_int(solver_windows, 1):
        raise ValueError(f"{where}: expected solver_windows to be an integer >= 1, got {solver_windows!r}")
    if not is_int(batch_size, 1):
        raise ValueError(f"{where}: expected batch_size to be an integer >= 1, got {batch_size!r}")


def _finite_or_none(x: Optional[float]) -> Optional[float]:
    return x if x is None or math.isfinite(x) else None


def evaluate_run(
    path: str | Path,
    *,
    solver: SolverSettings | Mapping[str, Any] | None = None,
    extrapolation: Sequence[int] = (2, 4),
    max_windows: Optional[int] = 32,
    solver_windows: int = 8,
    batch_size: int = 8,
    out_dir: str | Path | None = None,
    val_tokens=None,
    train_len: Optional[int] = None,
    device: str = "cpu",
    progress: bool = True,
    verify: bool = True,
) -> dict:
    """Evaluate the run directory (``runs/<name>``) or model directory ``path``; returns what ``eval.json`` holds.

    ``solver``: settings of the solver report: a :class:`~mesanet.ops.SolverSettings`, a mapping of fields that
    replace the model's ``solver_inference`` (e.g. ``{"tol": 1e-6}``), or ``None`` (the model's own).
    ``max_windows``: windows at the longest length (every length scores the same tokens); ``solver_windows``: windows
    for the solver report.
    ``val_tokens`` / ``train_len``: give the validation tokens / training length directly instead of reading
    them from the run's ``config.yaml`` (needed for a model directory outside a run). ``verify=False``: evaluate
    weights that no longer match the SHA-256 training recorded (refused otherwise).
    """
    started = time.perf_counter()
    _check_arguments(solver, extrapolation, max_windows, solver_windows, batch_size)
    model_dir, run_dir = resolve_model_dir(path)
    loaded = load_checkpoint(model_dir, device=device, verify=verify)
    model, config = loaded.model, loaded.model.config
    run_config = load_run_config(run_dir) if run_dir is not None else None
    where = str(Path(run_dir) / "config.yaml") if run_dir is not None else str(model_dir)

    if train_len is None:
        if run_config is None:
            raise ValueError(
                f"{str(path)!r} is a model directory outside a run: give the training length "
                "(mesanet eval --train-len N; evaluate_run(train_len=N))"
            )
        train_len = train_seq_len(run_config, where)
    if val_tokens is None:
        if run_config is None:
            raise ValueError(
                f"{str(path)!r} is a model directory outside a run: give the text to evaluate on "
                "(mesanet eval --val-text FILE; evaluate_run(val_tokens=...))"
            )
        if "data" not in run_config:
            raise ValueError(f"{where}: no data section to rebuild the validation split from")
        val_tokens = validation_tokens(run_config["data"], progress=progress, run_dir=Path(run_dir))
    val_tokens = check_tokens(val_tokens, "evaluate_run")
    if len(val_tokens) and int(val_tokens.max()) >= config.vocab_size:
        raise ValueError(
            f"evaluate_run: validation token ids reach {int(val_tokens.max())} but the model's vocabulary has "
            f"{config.vocab_size} entries: the data config does not belong to this model"
        )
    settings = report_solver(solver, config.solver_inference)

    factors = sorted({1, *extrapolation})
    results = run_extrapolation(
        model, val_tokens, train_len, factors, max_windows=max_windows, batch_size=batch_size, progress=progress
    )
    base = results[1]
    if not base.available:
        raise ValueError(f"evaluate_run: cannot evaluate at the training length: {base.reason}")

    from ..data import eval_windows

    solver = solver_report(
        model,
        eval_windows(val_tokens, train_len, max_windows=solver_windows),
        settings,
        batch_size=batch_size,
        progress=progress,
    )

    out = Path(out_dir) if out_dir is not None else (Path(run_dir) if run_dir is not None else Path(model_dir))
    out.mkdir(parents=True, exist_ok=True)
    files = dict(
        eval_json=str(out / EVAL_JSON),
        per_position_csv=str(out / PER_POSITION_CSV),
        per_position_png=str(out / PER_POSITION_PNG),
        summary_md=str(out / SUMMARY_MD),
    )
    report = dict(
        name=(Path(run_dir) if run_dir is not None else Path(model_dir)).resolve().name,
        model_dir=str(model_dir),
        run_dir=None if run_dir is None else str(run_dir),
        model=dict(
            params=sum(p.numel() for p in model.parameters()),
            mixer_types=list(config.mixer_types),
            solver_inference=dict(config.solver_inference),
        ),
        train_len=train_len,
        val_split_tokens=int(len(val_tokens)),
        settings=eval_settings(solver=settings, extrapolation=factors, max_windows=max_windows, solver_windows=solver_windows),
        val=dict(loss=base.loss, ppl=_finite_or_none(base.ppl), tokens=base.result.tokens, windows=base.result.windows),
        extrapolation={str(f): _jsonable(r.to_dict()) for f, r in results.items()},
        solver=solver.to_dict(),
        files=files,
    )
    _write_per_position_csv(results, out / PER_POSITION_CSV)
    curves = {f"{r.seq_len} tokens (x{f})": r.per_position_nll for f, r in results.items() if r.available}
    plot_per_position(
        curves,
        out / PER_POSITION_PNG,
        train_len=train_len if len(curves) > 1 else None,
        bins_per_decade=PLOT_BINS_PER_DECADE,
        title=f"Per-position NLL: {report['name']}",
    )
    (out / SUMMARY_MD).write_text(_summary_markdown(report, results, solver.to_markdown()))
    report["eval_seconds"] = round(time.perf_counter() - started, 3)
    (out / EVAL_JSON).write_text(json.dumps(report, indent=2))
    return report


def _jsonable(d: dict) -> dict:
    return {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in d.items()}


def _write_per_position_csv(results: dict[int, ExtrapolationResult], path: Path) -> None:
    available = [(f, r.per_position_nll) for f, r in sorted(results.items()) if r.available]
    longest = max(len(curve) for _, curve in available)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["position"] + [f"nll_x{f}" for f, _ in available])
        for i in range(longest):
            writer.writerow([i + 1] + [f"{curve[i]:.6f}" if i < len(curve) else "" for _, curve in available])


def _fmt(x: Optional[float], spec: str = ".4f") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def _summary_markdown(report: dict, results: dict[int, ExtrapolationResult], solver_md: str) -> str:
    model = report["model"]
    kinds = sorted(set(model["mixer_types"]))
    lines = [
        f"# Evaluation: {report['name']}",
        "",
        f"- model: `{report['model_dir']}` ({model['params']:,} parameters; mixers {', '.join(kinds)})",
        f"- training length: {report['train_len']} tokens; validation split: {report['val_split_tokens']:,} tokens",
    ]
    if "mesa" in kinds:
        own = model["solver_inference"]
        lines.append(
            f"- Mesa solver for the losses below: max_iter = {own['max_iter']}, tol = {own['tol']:g}, "
            f"preconditioner = {own['preconditioner']}"
            + (f" refreshed every {own['precondition_every']} tokens" if own.get("precondition_every") else "")
            + " (the model's solver_inference)"
        )
    lines += [
        "",
        "## Validation loss and length extrapolation",
        "",
        "| factor | length | windows | tokens | loss | ppl |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for factor, r in sorted(results.items()):
        if r.available:
            lines.append(
                f"| x{factor} | {r.seq_len} | {r.result.windows} | {r.result.tokens:,} | {_fmt(r.loss)} | {_fmt(r.ppl, '.2f')} |"
            )
        else:
            lines.append(f"| x{factor} | {r.seq_len} | — | — | unavailable | unavailable |")
            notes.append(f"- x{factor}: {r.reason}")
    lines += ([""] + notes) if notes else []
    lines += [
        "",
        "## Mesa CG solver",
        "",
        solver_md.rstrip(),
        "",
        "## Per-position NLL",
        "",
        f"![per-position NLL]({PER_POSITION_PNG}) (values: [{PER_POSITION_CSV}]({PER_POSITION_CSV}))",
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "EVAL_JSON",
    "PER_POSITION_CSV",
    "PER_POSITION_PNG",
    "SUMMARY_MD",
    "eval_settings",
    "evaluate_run",
    "validation_tokens",
]
