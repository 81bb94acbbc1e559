"""The language-model comparison (README, "Language-model comparison"; docs/results/lm_compare/).

Six models of equal size (cpu-small, 4.46M-4.54M parameters) on the built-in corpus, equal tokens and the same
data order, as the preset ``compare`` defines them (models, recipe, steps). Two stages, both resumable (finished
runs are reused):

    OMP_NUM_THREADS=1 python experiments/lm_compare.py sweep   # every model at every sweep lr, SWEEP_STEPS steps
    OMP_NUM_THREADS=1 python experiments/lm_compare.py final   # every model at its best sweep lr, the preset's steps

``sweep --lrs A B`` takes some of the lrs and ``final --only M1 M2`` some of the models (two processes can share
a stage; a last ``final`` without ``--only`` then reuses every run and writes the whole report). ``sweep`` writes
``runs/lm_compare/sweep/lr<lr>/report.md`` per lr; ``final`` picks the lr with the lowest validation loss per
model (``runs/lm_compare/best_lr.json``) and writes
``runs/lm_compare/final/report.md`` (table, loss curves, per-position NLL); copy that folder's report files to
``docs/results/lm_compare/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from mesanet.eval.compare import CompareConfig, compare
from mesanet.eval.run_files import read_metrics
from mesanet.presets import preset_path
from mesanet.utils.config import load

OUT = Path("runs/lm_compare")
SWEEP_LRS = [1.5e-3, 3e-3, 6e-3]
SWEEP_STEPS = 150


def preset() -> CompareConfig:
    """The comparison as shipped (``mesanet compare compare``): models, data, recipe, its 400 steps and the lrs
    the sweep chose. The single source of both stages."""
    return load(CompareConfig, str(preset_path("compare")))


def sweep_dir(lr: float) -> Path:
    return OUT / "sweep" / f"lr{lr:g}"


def sweep_config(lr: float) -> CompareConfig:
    """The preset's models and recipe, shortened to ``SWEEP_STEPS`` (evaluation, checkpoints and warm-up scaled
    alike), every model at ``lr``."""
    cfg = preset()
    optim = dataclasses.replace(cfg.base.optim, lr=lr, warmup_steps=SWEEP_STEPS // 10)
    cfg.base = dataclasses.replace(
        cfg.base, max_steps=SWEEP_STEPS, eval_every=SWEEP_STEPS // 5, checkpoint_every=SWEEP_STEPS // 2, optim=optim
    )
    cfg.variants = [dataclasses.replace(v, lr=None) for v in cfg.variants]
    cfg.out_dir, cfg.title = str(sweep_dir(lr)), f"lr sweep, lr {lr:g}, {SWEEP_STEPS} steps"
    cfg.extrapolation, cfg.max_windows, cfg.solver_windows = [], 16, 2
    return cfg


def sweep(lrs: list[float]) -> None:
    """Every model at each of ``lrs`` (several processes may take disjoint lrs)."""
    for lr in lrs:
        print(compare(sweep_config(lr)).read_text(), flush=True)


def final_val_loss(run_dir: str) -> float:
    """The trainer's last validation loss (``eval_batches x batch_size`` = 128 windows, 32k tokens): the sweep's
    criterion. (``eval.json``'s loss covers the sweep's 16 evaluation windows only, 4k tokens of a heterogeneous
    split: 2.0 there against 3.9 on the 128 windows for the same model.)"""
    losses = [v for v in read_metrics(Path(run_dir) / "metrics.csv")["val_loss"] if math.isfinite(v)]
    if not losses:
        sys.exit(f"lm_compare: {run_dir} has no validation loss in metrics.csv")
    return float(losses[-1])


def sweep_losses() -> dict[str, dict[float, float]]:
    """Model -> sweep lr -> final validation loss; every sweep lr must be finished."""
    losses: dict[str, dict[float, float]] = {}
    for lr in SWEEP_LRS:
        path = sweep_dir(lr) / "compare.json"
        if not path.is_file():
            sys.exit(f"lm_compare: expected {path}; run `python {sys.argv[0]} sweep` first")
        for run in json.loads(path.read_text())["runs"]:
            losses.setdefault(run["name"], {})[lr] = final_val_loss(run["run_dir"])
    return losses


def best_lrs(losses: dict[str, dict[float, float]]) -> dict[str, float]:
    """Per model, the sweep lr with the lowest final validation loss (written to ``best_lr.json``)."""
    missing = sorted({v.name for v in preset().variants} - set(losses))
    if missing:
        sys.exit(f"lm_compare: the sweep has no runs of {missing}")
    best = {name: min(row, key=row.get) for name, row in losses.items()}
    (OUT / "best_lr.json").write_text(json.dumps({n: dict(lr=lr, val_loss=losses[n][lr]) for n, lr in best.items()}, indent=2))
    return best


def sweep_table(losses: dict[str, dict[float, float]], best: dict[str, float], final_steps: int) -> str:
    """Markdown: final validation loss of every (model, sweep lr), the chosen lr in bold."""
    lines = [
        f"# Learning-rate sweep ({SWEEP_STEPS} steps = {SWEEP_STEPS * 8 * 256:,} tokens per run)",
        "",
        "Validation loss after the last step (the trainer's 128 validation windows); bold: the lr each model is",
        f"trained with for {final_steps} steps in the comparison.",
        "",
        "| model | " + " | ".join(f"lr {lr:g}" for lr in SWEEP_LRS) + " |",
        "|---|" + "---:|" * len(SWEEP_LRS),
    ]
    for name in (v.name for v in preset().variants):  # the preset's order
        row = losses[name]
        cells = [("—" if lr not in row else (f"**{row[lr]:.4f}**" if lr == best[name] else f"{row[lr]:.4f}")) for lr in SWEEP_LRS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def final(only: list[str] | None = None) -> None:
    """Every model (or those named in ``only``: several processes may train disjoint sets, then one run
    without ``only`` reuses them all and writes the whole report) at its best sweep lr."""
    cfg = preset()
    losses = sweep_losses()
    best = best_lrs(losses)
    names = [v.name for v in cfg.variants]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        sys.exit(f"lm_compare: unknown models {unknown}; valid: {names}")
    drift = [f"{v.name} {v.lr:g} -> {best[v.name]:g}" for v in cfg.variants if v.lr != best[v.name]]
    if drift:  # the sweep's choice wins; the shipped preset should say the same
        print(f"lm_compare: WARNING: update the lrs of {preset_path('compare')}: {', '.join(drift)}", flush=True)
    cfg.variants = [dataclasses.replace(v, lr=best[v.name]) for v in cfg.variants if only is None or v.name in only]
    cfg.out_dir = str(OUT / "final")
    report_dir = None if only is None else OUT / "final-parts" / "+".join(only)  # the runs stay in final/runs
    report = compare(cfg, report_dir)
    if only is None:
        (report.parent / "sweep.md").write_text(sweep_table(losses, best, cfg.base.max_steps))
    print(report.read_text())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=["sweep", "final"])
    p.add_argument("--lrs", type=float, nargs="+", default=SWEEP_LRS, help="sweep: these lrs only (default: all)")
    p.add_argument("--only", nargs="+", default=None, help="final: train these models only (no full report)")
    args = p.parse_args()
    sweep(args.lrs) if args.stage == "sweep" else final(args.only)
