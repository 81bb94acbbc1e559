"""Timing: ``time.perf_counter`` around a call (``torch.cuda.synchronize`` before and after on CUDA), warm-up
calls, then repeats whose count follows the warm-up time (:class:`RepeatPolicy`); :func:`time_interleaved` times
several calls in turns, so that their ratio is taken under the same load."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .load import ForeignLoad

Log = Callable[[str], None]


def print_log(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class RepeatPolicy:
    """``warmup`` untimed calls, then ``ceil(budget_s / warm-up time)`` timed calls, clamped."""

    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 10
    budget_s: float = 4.0

    def repeats(self, warmup_seconds: float) -> int:
        wanted = math.ceil(self.budget_s / max(warmup_seconds, 1e-9))
        return max(1, self.min_repeats, min(self.max_repeats, wanted))


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes (device work included) and its result."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def time_call(
    fn: Callable[[], Any], device: str, policy: RepeatPolicy, *, inner: int = 1, min_warmup_s: float = 0.0
) -> tuple[dict[str, Any], Any]:
    """Warm-up (at least ``policy.warmup`` samples and ``min_warmup_s`` seconds), then repeats of ``fn``;
    every timed sample is a block of ``inner`` calls divided by ``inner`` (for calls of a few microseconds).
    Returns the record (seconds per call: ``times_s``, ``median_s``, ``min_s``, ``warmup_s``, ``repeats``,
    ``inner``, ``foreign_cpu_fraction``) and the last result."""

    def block() -> Any:
        result = None
        for _ in range(inner):
            result = fn()
        return result

    foreign = ForeignLoad()
    foreign.start()
    warmup: list[float] = []
    while len(warmup) < policy.warmup or inner * sum(warmup) < min_warmup_s:
        warmup.append(timed(block, device)[0] / inner)
    repeats = policy.repeats(inner * min(warmup) if warmup else 0.0)
    times, result = [], None
    for _ in range(repeats):
        seconds, result = timed(block, device)
        times.append(seconds / inner)
    record = dict(
        repeats=repeats,
        inner=inner,
        times_s=times,
        median_s=statistics.median(times),
        min_s=min(times),
        warmup_s=warmup,
        foreign_cpu_fraction=foreign.fraction(),
    )
    return record, result


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def time_interleaved(
    calls: dict[str, Callable[[], Any]], device: str, policy: RepeatPolicy, *, inner: int = 1
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Time several calls in turns: every round times each call once (the order rotates from round to round),
    so slow drifts of the machine's load reach all of them alike and their ratio is taken under the same
    conditions (what a ratio between separate processes, minutes apart, is not on a shared machine).

    ``policy.warmup`` untimed rounds, then ``policy.repeats(time of one round)`` timed rounds. Returns one
    record per name (as :func:`time_call`'s; every sample a block of ``inner`` calls divided by ``inner``;
    ``foreign_cpu_fraction`` is the whole measurement's) and each call's last result."""

    def block(fn: Callable[[], Any]) -> tuple[float, Any]:
        seconds, result = 0.0, None
        for _ in range(inner):
            elapsed, result = timed(fn, device)
            seconds += elapsed
        return seconds / inner, result

    names = list(calls)
    foreign = ForeignLoad()
    foreign.start()
    warmup: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, Any] = {}
    for _ in range(max(1, policy.warmup)):
        for n in names:
            seconds, results[n] = block(calls[n])
            warmup[n].append(seconds)
    repeats = policy.repeats(inner * sum(min(t) for t in warmup.values()))
    times: dict[str, list[float]] = {n: [] for n in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for n in names[shift:] + names[:shift]:
            seconds, results[n] = block(calls[n])
            times[n].append(seconds)
    load = foreign.fraction()
    records = {
        n: dict(
            repeats=repeats,
            inner=inner,
            times_s=times[n],
            median_s=statistics.median(times[n]),
            min_s=min(times[n]),
            warmup_s=warmup[n],
            foreign_cpu_fraction=load,
            interleaved_with=[m for m in names if m != n],
        )
        for n in names
    }
    return records, results
