"""The language-model comparison (README, "Language-model comparison"; docs/results/lm_compare/).

Six models of equal size (cpu-small, 4.46M-4.54M parameters) on the built-in corpus, equal tokens and the same
data order. Two stages, both resumable (finished runs are reused):

    OMP_NUM_THREADS=1 python experiments/lm_compare.py sweep   # every model at every sweep lr, SWEEP_STEPS steps
    OMP_NUM_THREADS=1 python experiments/lm_compare.py final   # every model at its best sweep lr, FINAL_STEPS steps

``sweep --lrs A B`` takes some of the lrs and ``final --only M1 M2`` some of the models (two processes can share
a stage; a last ``final`` without ``--only`` then reuses every run and writes the whole report). ``sweep`` writes
``runs/lm_compare/sweep/lr<lr>/report.md`` per lr; ``final`` picks the lr with the lowest validation loss per
model (``runs/lm_compare/best_lr.json``) and writes
``runs/lm_compare/final/report.md`` (table, loss curves, per-position NLL); copy that folder's report files to
``docs/results/lm_compare/``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from mesanet.eval.compare import CompareConfig, CompareVariant, compare, variant_configs
from mesanet.eval.run_files import read_metrics
from mesanet.presets import preset_path
from mesanet.utils.config import from_dict, load, to_dict

OUT = Path("runs/lm_compare")
SWEEP_LRS = [1.5e-3, 3e-3, 6e-3]
SWEEP_STEPS = 150
FINAL_STEPS = 400
#: Sliding-window attention sees a quarter of the 256-token training context.
SWA_WINDOW = 64

VARIANTS = [
    CompareVariant("mesanet", "mesa"),
    CompareVariant("gated-deltanet", "gated_deltanet"),
    CompareVariant("gla", "gla"),
    CompareVariant("transformer", "attention"),
    CompareVariant("swa", "sliding_attention", overrides={"attention_window": SWA_WINDOW}),
    CompareVariant("hawk-mesa", "hawk+mesa"),
]


def base(steps: int, lr: float) -> dict:
    """The shared TrainConfig: the `make run` data and model size; MesaNet's solver at its adaptive defaults
    (training tol 1e-4, inference tol 1e-5, at most 30 steps)."""
    return dict(
        model=dict(preset="cpu-small"),
        data=dict(source="stdlib", seq_len=256, vocab_size=4096),
        batch_size=8,
        max_steps=steps,
        log_every=10,
        eval_every=max(steps // 5, 10),
        eval_batches=16,
        checkpoint_every=max(steps // 2, 10),
        keep_last=1,
        optim=dict(lr=lr, warmup_steps=max(steps // 10, 5)),
    )


def sweep_dir(lr: float) -> Path:
    return OUT / "sweep" / f"lr{lr:g}"


def sweep(lrs: list[float]) -> None:
    """Every model at each of ``lrs`` (several processes may take disjoint lrs)."""
    for lr in lrs:
        cfg = from_dict(
            CompareConfig,
            dict(
                base=base(SWEEP_STEPS, lr),
                out_dir=str(sweep_dir(lr)),
                title=f"lr sweep, lr {lr:g}, {SWEEP_STEPS} steps",
                extrapolation=[],
                max_windows=16,
                solver_windows=2,
            ),
        )
        cfg.variants = VARIANTS
        print(compare(cfg).read_text(), flush=True)


def final_val_loss(run_dir: str) -> float:
    """The trainer's last validation loss (``eval_batches x batch_size`` = 128 windows, 32k tokens): the sweep's
    criterion. (``eval.json``'s loss covers the sweep's 16 evaluation windows only, 4k tokens of a heterogeneous
    split: 2.0 there against 3.9 on the 128 windows for the same model.)"""
    losses = [v for v in read_metrics(Path(run_dir) / "metrics.csv")["val_loss"] if math.isfinite(v)]
    if not losses:
        sys.exit(f"lm_compare: {run_dir} has no validation loss in metrics.csv")
    return float(losses[-1])


def best_lrs() -> dict[str, dict]:
    """Per model, the sweep lr with the lowest final validation loss (every sweep lr must be finished)."""
    best: dict[str, dict] = {}
    for lr in SWEEP_LRS:
        path = sweep_dir(lr) / "compare.json"
        if not path.is_file():
            sys.exit(f"lm_compare: expected {path}; run `python {sys.argv[0]} sweep` first")
        for run in json.loads(path.read_text())["runs"]:
            loss = final_val_loss(run["run_dir"])
            if run["name"] not in best or loss < best[run["name"]]["val_loss"]:
                best[run["name"]] = dict(lr=lr, val_loss=loss)
    missing = sorted({v.name for v in VARIANTS} - set(best))
    if missing:
        sys.exit(f"lm_compare: the sweep has no runs of {missing}")
    (OUT / "best_lr.json").write_text(json.dumps(best, indent=2))
    return best


def sweep_table() -> str:
    """Markdown: final validation loss of every (model, sweep lr), the chosen lr in bold."""
    losses: dict[str, dict[float, float]] = {}
    for lr in SWEEP_LRS:
        for run in json.loads((sweep_dir(lr) / "compare.json").read_text())["runs"]:
            losses.setdefault(run["name"], {})[lr] = final_val_loss(run["run_dir"])
    lines = [
        f"# Learning-rate sweep ({SWEEP_STEPS} steps = {SWEEP_STEPS * 8 * 256:,} tokens per run)",
        "",
        "Validation loss after the last step (the trainer's 128 validation windows); bold: the lr each model is",
        f"trained with for {FINAL_STEPS} steps in the comparison.",
        "",
        "| model | " + " | ".join(f"lr {lr:g}" for lr in SWEEP_LRS) + " |",
        "|---|" + "---:|" * len(SWEEP_LRS),
    ]
    for v in VARIANTS:
        row = losses.get(v.name, {})
        best = min(row, key=row.get) if row else None
        cells = [("—" if lr not in row else (f"**{row[lr]:.4f}**" if lr == best else f"{row[lr]:.4f}")) for lr in SWEEP_LRS]
        lines.append(f"| {v.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_preset(cfg: CompareConfig) -> None:
    """The shipped preset (``mesanet compare compare``) must train exactly these runs (out_dir aside)."""
    preset = load(CompareConfig, str(preset_path("compare")))
    ours, shipped = ([dict(to_dict(c), out_dir=None) for c in variant_configs(x)] for x in (cfg, preset))
    if ours != shipped:
        print(f"lm_compare: WARNING: the preset {preset_path('compare')} differs from this comparison; update it", flush=True)


def final(only: list[str] | None = None) -> None:
    """Every model (or those named in ``only``: several processes may train disjoint sets, then one run
    without ``only`` reuses them all and writes the whole report) at its best sweep lr."""
    best = best_lrs()
    unknown = sorted(set(only or ()) - {v.name for v in VARIANTS})
    if unknown:
        sys.exit(f"lm_compare: unknown models {unknown}; valid: {[v.name for v in VARIANTS]}")
    chosen = [v for v in VARIANTS if only is None or v.name in only]
    variants = [CompareVariant(v.name, v.mixer, overrides=v.overrides, lr=best[v.name]["lr"]) for v in chosen]
    cfg = from_dict(
        CompareConfig,
        dict(
            base=base(FINAL_STEPS, 3e-3),
            out_dir=str(OUT / "final"),
            title="Language-model comparison (CPU budget, built-in corpus)",
            extrapolation=[2, 4],
            max_windows=32,
            solver_windows=8,
        ),
    )
    cfg.variants = variants
    if only is None:
        check_preset(cfg)
    report_dir = None if only is None else OUT / "final-parts" / "+".join(only)  # the runs stay in final/runs
    report = compare(cfg, report_dir)
    if only is None:
        (report.parent / "sweep.md").write_text(sweep_table())
    print(report.read_text())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=["sweep", "final"])
    p.add_argument("--lrs", type=float, nargs="+", default=SWEEP_LRS, help="sweep: these lrs only (default: all)")
    p.add_argument("--only", nargs="+", default=None, help="final: train these models only (no full report)")
    args = p.parse_args()
    sweep(args.lrs) if args.stage == "sweep" else final(args.only)
