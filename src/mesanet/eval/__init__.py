"""Evaluation: validation loss / perplexity, per-position NLL, length extrapolation, Mesa CG diagnostics,
text generation, plots and run reports.

Modules (one job each):

* :mod:`.evaluate` — ``evaluate_lm`` (loss, ppl, per-position NLL on windows) and ``extrapolation``
* :mod:`.solver` — ``solver_report``: CG iterations / residuals of the Mesa layers at a tolerance
* :mod:`.plots` — per-position NLL and loss-curve PNGs
* :mod:`.checkpoint` — loading a validated MesaNet checkpoint (clear errors for anything else)
* :mod:`.run_files` — reading run directories (config.yaml, metrics.csv, final/, checkpoints/)
* :mod:`.run_eval` — ``evaluate_run``: all of the above on a run, written to eval.json / CSV / PNG / markdown
* :mod:`.generate` — ``generate_text``: streaming generation (temperature, top-k, top-p)
* :mod:`.compare_report` — the comparison report from evaluated runs
* :mod:`.needle` — ``needle_in_a_haystack`` / ``run_needle``: single-needle retrieval in noise and corpus-text
  haystacks at and beyond the training length (CSV, markdown, heatmap)
* :mod:`.harness` — ``python -m mesanet.eval.harness``: lm-evaluation-harness's CLI with MesaNet registered
* :mod:`.compare` — trains several configurations and reports (imports :mod:`mesanet.train`, so it is not
  imported here: ``from mesanet.eval.compare import compare``)
"""

from .checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from .compare_report import RunSummary, summarize_run, write_compare_report
from .evaluate import ExtrapolationResult, LMEvalResult, evaluate_lm, extrapolation, perplexity
from .generate import generate_from_checkpoint, generate_ids, generate_text
from .needle import NeedleConfig, NeedleResult, needle_in_a_haystack, run_needle
from .plots import plot_loss_curves, plot_per_position
from .run_eval import evaluate_run
from .run_files import read_metrics, resolve_model_dir
from .solver import LayerSolverReport, SolverReport, solver_report

__all__ = [
    "CheckpointError",
    "ExtrapolationResult",
    "LMEvalResult",
    "LayerSolverReport",
    "LoadedCheckpoint",
    "NeedleConfig",
    "NeedleResult",
    "RunSummary",
    "SolverReport",
    "evaluate_lm",
    "evaluate_run",
    "extrapolation",
    "generate_from_checkpoint",
    "generate_ids",
    "generate_text",
    "load_checkpoint",
    "needle_in_a_haystack",
    "perplexity",
    "plot_loss_curves",
    "plot_per_position",
    "read_metrics",
    "resolve_model_dir",
    "run_needle",
    "solver_report",
    "summarize_run",
    "write_compare_report",
]
