"""Plots of a synthetic-suite run (matplotlib, Agg): task accuracy bars, MQAR accuracy vs pairs, regression MSE,
RegBench accuracy and total variation vs training-set size."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .selection import Best, task_scores  # noqa: E402
from .targets import regbench_rows  # noqa: E402


def plot_task_accuracy(best: list[Best], path: Path) -> bool:
    """Grouped bars: accuracy per token task (mean over its settings), one bar per mixer."""
    token = [b for b in best if b.kind == "token"]
    if not token:
        return False
    scores = task_scores(token)
    tasks = list(dict.fromkeys(b.task for b in token))
    mixers = list(dict.fromkeys(b.mixer for b in token))
    width = 0.8 / len(mixers)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(tasks)), 4))
    x = np.arange(len(tasks))
    for i, m in enumerate(mixers):
        ax.bar(x + (i - (len(mixers) - 1) / 2) * width, [scores.get((t, m), math.nan) for t in tasks], width, label=m)
    ax.set_xticks(x, [t.replace("_", "\n") for t in tasks], fontsize=8)
    ax.set_ylabel("test accuracy (best lr/wd)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy per task")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_mqar(best: list[Best], path: Path) -> bool:
    """MQAR test accuracy vs number of key-value pairs: one panel per sequence length, one line per mixer."""
    mq = [b for b in best if b.task == "mqar"]
    if not mq:
        return False
    by_len: dict[int, dict[str, list[tuple[int, float, float]]]] = defaultdict(lambda: defaultdict(list))
    for b in mq:
        r = b.records[0]
        by_len[r["seq_len"]][b.mixer].append((r["num_pairs"], b.metric, b.metric_std))
    lens = sorted(by_len)
    fig, axes = plt.subplots(1, len(lens), figsize=(4 * len(lens), 3.5), squeeze=False, sharey=True)
    for ax, length in zip(axes[0], lens):
        for mixer, pts in by_len[length].items():
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=2, label=mixer)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("key-value pairs")
        ax.set_title(f"MQAR, seq len {length}")
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel("test accuracy (best lr/wd)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_regression(best: list[Best], path: Path) -> bool:
    """Regression test MSE vs number of in-context examples: one line per mixer (seed mean) + the ridge optimum."""
    reg = [b for b in best if b.task == "regression"]
    if not reg:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for b in reg:
        curves = [r["mse_curve"] for r in b.records if r.get("mse_curve")]
        if curves:
            ax.plot(np.mean(np.asarray(curves), axis=0), label=f"{b.mixer} (lr {b.lr:g})")
    ridge = reg[0].records[0]["ridge_curve"]
    ax.plot(ridge, "k--", label="optimal ridge")
    ax.set_yscale("log")
    ax.set_xlabel("in-context examples k")
    ax.set_ylabel("test MSE predicting y_k")
    ax.set_title(f"In-context regression ({reg[0].setting})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_regbench(best: list[Best], path: Path) -> bool:
    """RegBench accuracy and total variation vs number of training sequences (log x), one line per mixer."""
    rows = regbench_rows(best)
    if not rows:
        return False
    by_mixer: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_mixer[r["mixer"]].append(r)
    fig, (ax_acc, ax_tv) = plt.subplots(1, 2, figsize=(9, 3.6))
    for mixer, pts in by_mixer.items():
        x = [p["num_train"] for p in pts]
        ax_acc.errorbar(x, [p["acc"] for p in pts], yerr=[p["acc_std"] for p in pts], marker="o", capsize=2, label=mixer)
        ax_tv.plot(x, [p["tv"] for p in pts], marker="o", label=mixer)
    base = {r["num_train"]: r for r in rows}  # the 3-gram depends on the test set only
    xs = sorted(base)
    ax_acc.plot(xs, [base[n]["ngram_acc"] for n in xs], "k--", label="in-context 3-gram")
    ax_tv.plot(xs, [base[n]["ngram_tv"] for n in xs], "k--", label="in-context 3-gram")
    for ax, label in ((ax_acc, "test accuracy (best lr/wd)"), (ax_tv, "total variation from the true PFA")):
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(n) for n in xs])
        ax.minorticks_off()
        ax.set_xlabel("training sequences (one automaton each)")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
    ax_acc.set_title("RegBench accuracy", fontsize=9)
    ax_tv.set_title("RegBench total variation (lower is better)", fontsize=9)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_plots(best: list[Best], out: Path) -> list[str]:
    """Every plot that has data; returns the file names written."""
    written = []
    for name, fn in (
        ("task_accuracy.png", plot_task_accuracy),
        ("mqar_accuracy.png", plot_mqar),
        ("regression_mse.png", plot_regression),
        ("regbench_accuracy.png", plot_regbench),
    ):
        if fn(best, out / name):
            written.append(name)
    return written


__all__ = ["plot_mqar", "plot_regbench", "plot_regression", "plot_task_accuracy", "write_plots"]
