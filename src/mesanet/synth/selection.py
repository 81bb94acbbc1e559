"""Selection of a synthetic-suite run's results: per (task, setting, mixer) the (lr, wd) with the best seed-mean
test metric (accuracy up, or the mean regression MSE over all context sizes down), reported as mean +- std over
seeds; a MAD task's score is the mean over its settings of that best accuracy (MesaNet/MAD protocol), the MAD
average the mean over the MAD tasks present."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

from .tasks import MAD_TASKS

MESA, GDN = "mesa", "gated_deltanet"
#: Mixer kinds that are softmax attention (the paper's "transformers"); every other kind is recurrent.
ATTENTION_KINDS = ("attention", "sliding_attention")


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def as_float(v) -> float:
    return math.nan if v is None else float(v)


@dataclass
class Best:
    """Best (lr, wd) of one (task, setting, mixer): seed statistics of its metric and the records behind it."""

    task: str
    setting: str
    mixer: str
    kind: str
    lr: float
    weight_decay: float
    metric: float
    metric_std: float
    train_acc: float
    mse_last: float
    mse_last_std: float
    ridge_last: float
    seeds: int
    records: list


def select_best(records: list[dict]) -> list[Best]:
    """One :class:`Best` per (task, setting, mixer), in first-seen order (NaN runs never win)."""
    groups: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        groups[(r["task"], r["setting"], r["mixer"])][(r["lr"], r["weight_decay"])].append(r)
    out = []
    for (task, setting, mixer), runs in groups.items():
        kind = next(iter(runs.values()))[0]["kind"]
        key = "test_mse" if kind == "regression" else "test_acc"
        sign = -1.0 if kind == "regression" else 1.0
        scored = []
        for (lr, wd), rs in runs.items():
            mean, std = mean_std([as_float(r.get(key)) for r in rs])
            scored.append((-math.inf if math.isnan(mean) else sign * mean, lr, wd, mean, std, rs))
        scored.sort(key=lambda s: (s[0], s[1], s[2]), reverse=True)
        _, lr, wd, mean, std, rs = scored[0]
        mse_last, mse_last_std = mean_std([as_float(r.get("test_mse_last")) for r in rs])
        out.append(
            Best(
                task,
                setting,
                mixer,
                kind,
                lr,
                wd,
                mean,
                std,
                mean_std([as_float(r.get("train_acc")) for r in rs])[0],
                mse_last,
                mse_last_std,
                as_float(rs[0].get("ridge_last")),
                len(rs),
                rs,
            )
        )
    return out


def task_scores(best: list[Best]) -> dict[tuple[str, str], float]:
    """``(task, mixer) -> mean over settings`` of the best metric."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for b in best:
        acc[(b.task, b.mixer)].append(b.metric)
    return {k: statistics.fmean(v) for k, v in acc.items()}


def mad_average(best: list[Best], mixer: str) -> float:
    """Mean over the MAD tasks present of ``mixer``'s task score (NaN if none)."""
    scores = task_scores(best)
    vals = [scores[(t, mixer)] for t in MAD_TASKS if (t, mixer) in scores]
    return statistics.fmean(vals) if vals else math.nan
