"""Typed results of the needle test: one ``NeedleTrial`` per prompt, ``NeedleCell`` means per (haystack, length,
depth), ``NeedleResult`` with its markdown report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .config import CHANCE_LOGPROB_PER_DIGIT, NEEDLE_CSV, NEEDLE_PNG, NEEDLE_TRIALS_CSV, NeedleConfig


@dataclass(frozen=True)
class NeedleTrial:
    haystack: str
    factor: float
    length: int
    depth: float
    trial: int
    value: str
    answer: str  # the greedy continuation's text, up to the closing quote or the line's end
    exact: bool
    token_acc: float
    value_logprob: float
    logprob_per_digit: float
    actual_depth: float
    needle_start: int


@dataclass(frozen=True)
class NeedleCell:
    """Means over the trials of one (haystack, length, depth)."""

    haystack: str
    factor: float
    length: int
    depth: float
    trials: int
    exact_match: float
    token_acc: float
    value_logprob: float
    logprob_per_digit: float
    actual_depth: float


@dataclass
class NeedleResult:
    config: NeedleConfig
    cells: list[NeedleCell]
    trials: list[NeedleTrial]
    text_source: Optional[str] = None
    seconds: float = 0.0

    def cell(self, haystack: str, length: int, depth: float) -> NeedleCell:
        for c in self.cells:
            if c.haystack == haystack and c.length == length and c.depth == depth:
                return c
        raise KeyError(f"no cell ({haystack!r}, {length}, {depth})")

    def to_markdown(self, title: str = "Needle in a haystack") -> str:
        return _markdown(self, title)


def _fmt(x: float, spec: str = ".2f") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def _markdown(result: NeedleResult, title: str) -> str:
    cfg = result.config
    lengths = cfg.lengths()
    lines = [
        f"# {title}",
        "",
        f'- needle: `{cfg.key} = "<{cfg.min_digits}-{cfg.max_digits} digits>"` on its own line at depth d of the '
        f'haystack; query `{cfg.key} = "` at the end; {cfg.trials} trials per cell (seed {cfg.seed})',
        f"- training length {cfg.train_len} tokens; lengths " + ", ".join(f"{n} (x{f:g})" for f, n in lengths),
        '- exact = greedy answer starts with `value"`; acc = teacher-forced arg-max accuracy over the answer tokens; '
        f"lp/digit = log-probability of the value per digit (nats; a model that only knows that digits come next: "
        f"{CHANCE_LOGPROB_PER_DIGIT:.2f})",
    ]
    if result.text_source:
        lines.append(f"- text haystack: {result.text_source}")
    lines.append("- noise haystack: seeded random unindented Python-like statements")
    for kind in cfg.haystacks:
        lines += [
            "",
            f"## {kind} haystack",
            "",
            "Exact match (greedy), rows: depth, columns: length",
            "",
            "| depth | " + " | ".join(f"{n} (x{f:g})" for f, n in lengths) + " |",
            "|---:|" + "---:|" * len(lengths),
        ]
        for d in cfg.depths:
            lines.append(f"| {d:g} | " + " | ".join(_fmt(result.cell(kind, n, d).exact_match) for _, n in lengths) + " |")
        lines += ["", "Mean over depths", "", "| length | exact | acc | lp/digit |", "|---:|---:|---:|---:|"]
        for f, n in lengths:
            cells = [result.cell(kind, n, d) for d in cfg.depths]
            lines.append(
                f"| {n} (x{f:g}) | {np.mean([c.exact_match for c in cells]):.2f} | "
                f"{np.mean([c.token_acc for c in cells]):.2f} | {np.mean([c.logprob_per_digit for c in cells]):.2f} |"
            )
    lines += [
        "",
        "## All cells",
        "",
        "| haystack | length | depth | actual depth | exact | acc | lp/digit | value logprob |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result.cells:
        lines.append(
            f"| {c.haystack} | {c.length} | {c.depth:g} | {c.actual_depth:.3f} | {c.exact_match:.2f} | "
            f"{c.token_acc:.2f} | {c.logprob_per_digit:.2f} | {c.value_logprob:.2f} |"
        )
    lines += [
        "",
        f"![needle heatmap]({NEEDLE_PNG}) (values: [{NEEDLE_CSV}]({NEEDLE_CSV}), "
        f"per trial: [{NEEDLE_TRIALS_CSV}]({NEEDLE_TRIALS_CSV}))",
        "",
    ]
    return "\n".join(lines)
