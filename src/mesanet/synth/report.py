"""Tables of a synthetic-suite run: ``results.csv``, ``summary.csv``, ``summary.md`` (selection of the best cells:
:mod:`.selection`; the target verdicts: :mod:`.targets`).

Selection: per (task, setting, mixer) the (lr, wd) with the best seed-mean test metric (accuracy up, or the
mean regression MSE over all context sizes down), reported as mean +- std over seeds. A MAD task's score is
the mean over its settings of that best accuracy (MesaNet/MAD protocol); the MAD average is the mean over
the MAD tasks present. RegBench gets its own table (accuracy and total variation per training-set size).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .config import SynthConfig
from .selection import mad_average, select_best, task_scores
from .targets import Target, check_targets, regbench_rows
from .tasks import MAD_TASKS

RESULT_COLUMNS = [
    "cell_id",
    "task",
    "setting",
    "mixer",
    "lr",
    "weight_decay",
    "seed",
    "status",
    "steps",
    "batch_size",
    "num_train",
    "num_test",
    "params",
    "test_acc",
    "train_acc",
    "test_loss",
    "test_tv",
    "test_exact_acc",
    "train_tv",
    "ngram_acc",
    "ngram_tv",
    "test_mse",
    "test_mse_last",
    "ridge_last",
    "final_train_loss",
    "seq_len",
    "num_pairs",
    "seconds",
    "cpu_seconds",
]


def _fmt(v: float, digits: int = 4) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def write_results_csv(records: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: r.get(k, "") for k in RESULT_COLUMNS})


def write_summary(
    records: list[dict], cfg: SynthConfig, out: Path, *, wall_seconds: float | None = None, grid_size: int | None = None
) -> list[Target]:
    """``results.csv``, ``summary.csv`` and ``summary.md`` in ``out``; returns the target verdicts."""
    write_results_csv(records, out / "results.csv")
    best = select_best(records)
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "task",
                "setting",
                "mixer",
                "metric",
                "best_lr",
                "best_weight_decay",
                "mean",
                "std",
                "train_acc",
                "mse_last",
                "mse_last_std",
                "ridge_last",
                "seeds",
            ]
        )
        for b in best:
            w.writerow(
                [
                    b.task,
                    b.setting,
                    b.mixer,
                    "test_mse" if b.kind == "regression" else "test_acc",
                    b.lr,
                    b.weight_decay,
                    b.metric,
                    b.metric_std,
                    b.train_acc,
                    b.mse_last,
                    b.mse_last_std,
                    b.ridge_last,
                    b.seeds,
                ]
            )
    targets = check_targets(best, cfg)
    mixers = list(dict.fromkeys(b.mixer for b in best))
    scores = task_scores(best)
    tasks = list(dict.fromkeys(b.task for b in best))
    lines = ["# Synthetic in-context-learning suite", ""]
    if grid_size is not None and len(records) < grid_size:
        lines += [f"**PARTIAL: {len(records)} of {grid_size} grid cells finished**; verdicts use the finished cells only.", ""]
    lines.append(
        f"{len(records)} cells: tasks {cfg.tasks} x mixers {cfg.mixers} x lr {cfg.lrs} x wd {cfg.weight_decays} x seeds {cfg.seeds}; "
        f"model {cfg.num_layers} layers, width {cfg.hidden_size}, {cfg.num_heads} heads x {cfg.head_dim}; "
        f"{cfg.steps} steps x batch {cfg.batch_size} unless overridden per task (see config.yaml)."
        + (f" Wall time {wall_seconds / 60:.1f} min." if wall_seconds else "")
    )
    cpu = sum(float(r.get("cpu_seconds") or 0.0) for r in records)
    if cpu > 0:
        lines += [
            "",
            f"Cell CPU time: {cpu / 60:.1f} core-minutes in total (training + evaluation, one thread per cell), "
            f"i.e. about {cpu / 60 / max(1, cfg.workers):.1f} min of wall time on {cfg.workers} idle core(s).",
        ]
    lines += ["", "## Targets", "", "| target | verdict | numbers |", "|---|---|---|"]
    lines += [f"| {t.name} | **{t.status}** | {t.detail} |" for t in targets]
    lines += [
        "",
        "## Task scores (best lr/wd per setting, mean over settings; accuracy, regression: mean test MSE)",
        "",
        "| task | " + " | ".join(mixers) + " |",
        "|---|" + "---|" * len(mixers),
    ]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(_fmt(scores.get((t, m), math.nan)) for m in mixers) + " |")
    if any(t in MAD_TASKS for t in tasks):
        lines.append("| **MAD average** | " + " | ".join(_fmt(mad_average(best, m)) for m in mixers) + " |")
    lines += [
        "",
        "## Best cell per setting (mean +- std over seeds)",
        "",
        "| task | setting | mixer | best lr | best wd | test metric | train acc | MSE at longest context (ridge) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in best:
        extra = f"{_fmt(b.mse_last)} +- {_fmt(b.mse_last_std)} ({_fmt(b.ridge_last)})" if b.kind == "regression" else ""
        lines.append(
            f"| {b.task} | {b.setting} | {b.mixer} | {b.lr:g} | {b.weight_decay:g} | {_fmt(b.metric)} +- {_fmt(b.metric_std)} "
            f"| {_fmt(b.train_acc, 3)} | {extra} |"
        )
    rb = regbench_rows(best)
    if rb:
        lines += [
            "",
            "## RegBench (in-context language learning; held-out automata)",
            "",
            "| training sequences | mixer | best lr | best wd | accuracy | total variation | exact-match acc | train acc "
            "| in-context 3-gram: acc (TV) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['num_train']} | {r['mixer']} | {r['lr']:g} | {r['weight_decay']:g} | {_fmt(r['acc'])} +- "
            f"{_fmt(r['acc_std'])} | {_fmt(r['tv'])} | {_fmt(r['exact'])} | {_fmt(r['train_acc'], 3)} "
            f"| {_fmt(r['ngram_acc'])} ({_fmt(r['ngram_tv'])}) |"
            for r in rb
        ]
        lines += [
            "",
            "Accuracy: the greedy next token is one the sequence's automaton can read from its current state "
            "(non-zero true probability); total variation: 0.5 x L1 distance of the model's softmax from the "
            "automaton's next-token distribution (uniform over the state's outgoing symbols); both over "
            "every target that is not a string end. Exact-match: greedy token == the sampled next token. The "
            "in-context 3-gram (no training) predicts from successor counts of the last two tokens earlier in "
            "the same sequence, backing off to shorter contexts. "
            "Plot: `regbench_accuracy.png`.",
        ]
    failed = [r["cell_id"] for r in records if r.get("status") != "ok"]
    if failed:
        lines += ["", f"Non-finite runs (count as failed, never selected): {', '.join(failed)}"]
    lines += [
        "",
        "Accuracy (RegBench: see its section): fraction of non-ignored test targets predicted exactly (micro); train acc: the same on the first "
        f"{cfg.num_train_eval} training sequences with their training targets (MAD recall tasks train on every next "
        f"token, so theirs is lower). MQAR fit rule: test accuracy >= {cfg.mqar_fit_threshold}. Plots: "
        "`task_accuracy.png`, `mqar_accuracy.png`, `regression_mse.png`, `regbench_accuracy.png`.",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return targets


__all__ = ["RESULT_COLUMNS", "write_results_csv", "write_summary"]
