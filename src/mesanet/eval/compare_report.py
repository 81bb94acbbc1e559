"""The comparison report: one table row per evaluated run plus overlaid loss-curve and per-position plots.

Works on finished, evaluated run directories (``metrics.csv`` from training, ``eval.json`` and
``per_position.csv`` from :func:`mesanet.eval.run_eval.evaluate_run`); it does not train anything (the
orchestration that does is :mod:`mesanet.eval.compare`).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .plots import plot_loss_curves, plot_per_position
from .run_eval import EVAL_JSON, PER_POSITION_CSV
from .run_files import METRICS, load_run_config, read_metrics

REPORT_MD = "report.md"
LOSS_PNG = "loss_curves.png"
PER_POSITION_PNG = "per_position.png"
PER_POSITION_DELTA_PNG = "per_position_vs_attention.png"
COMPARE_JSON = "compare.json"


@dataclass
class RunSummary:
    name: str
    run_dir: str
    params: int
    val_loss: float
    val_ppl: float
    tokens: Optional[int] = None  # training tokens (None: unknown)
    tokens_per_s: Optional[float] = None  # median training throughput
    train_time_s: Optional[float] = None  # wall time of training (last `elapsed` in metrics.csv)
    mixers: list[str] = field(default_factory=list)
    extrapolation: dict = field(default_factory=dict)  # factor -> ppl (None: unavailable)
    lr: Optional[float] = None  # peak learning rate (config.yaml's optim.lr)
    cg_train: Optional[tuple[float, int]] = None  # CG steps while training: mean of the logged means, max of the maxima
    cg_eval: Optional[tuple[float, int]] = None  # CG steps of the evaluation's solver report: mean, max over layers
    per_position_nll: Optional[np.ndarray] = field(default=None, repr=False)


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def summarize_run(name: str, run_dir: str | Path, *, tokens: Optional[int] = None) -> RunSummary:
    """Summary of an evaluated run directory: ``eval.json`` (params, val loss/ppl, extrapolation),
    ``metrics.csv`` (median tokens/s, training time, and the token count when it has a ``tokens`` column),
    ``per_position.csv`` (the curve at the training length)."""
    run_dir = Path(run_dir)
    eval_file = run_dir / EVAL_JSON
    if not eval_file.is_file():
        raise ValueError(f"run {name!r}: {str(eval_file)!r} does not exist; evaluate the run first (evaluate_run)")
    try:
        ev = json.loads(eval_file.read_text())
        params, val_loss, val_ppl = int(ev["model"]["params"]), float(ev["val"]["loss"]), ev["val"]["ppl"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"run {name!r}: {str(eval_file)!r} is not a valid evaluation file ({type(e).__name__}: {e})") from None
    metrics = read_metrics(run_dir / METRICS) if (run_dir / METRICS).is_file() else {}
    throughput = _finite(metrics.get("tokens_per_s", []))
    elapsed = _finite(metrics.get("elapsed", []))
    if tokens is None and "tokens" in metrics and len(_finite(metrics["tokens"])):
        tokens = int(_finite(metrics["tokens"])[-1])
    extrapolation = {int(k): (v.get("ppl") if v.get("available") else None) for k, v in ev.get("extrapolation", {}).items()}
    cg_mean, cg_max = _finite(metrics.get("cg_mean", [])), _finite(metrics.get("cg_max", []))
    layers = (ev.get("solver") or {}).get("layers") or []
    return RunSummary(
        name=name,
        run_dir=str(run_dir),
        params=params,
        val_loss=val_loss,
        val_ppl=math.inf if val_ppl is None else float(val_ppl),
        tokens=tokens,
        tokens_per_s=float(np.median(throughput)) if len(throughput) else None,
        train_time_s=float(elapsed[-1]) if len(elapsed) else None,
        mixers=list(ev["model"].get("mixer_types", [])),
        extrapolation=extrapolation,
        lr=_run_lr(run_dir),
        cg_train=(float(cg_mean.mean()), int(cg_max.max())) if len(cg_mean) and len(cg_max) else None,
        cg_eval=(float(ev["solver"]["mean_iterations"]), max(int(x["max_iterations"]) for x in layers)) if layers else None,
        per_position_nll=_read_curve(run_dir / PER_POSITION_CSV),
    )


def _run_lr(run_dir: Path) -> Optional[float]:
    """The run's peak learning rate, ``None`` for a folder without a readable ``config.yaml``."""
    try:
        lr = load_run_config(run_dir).get("optim", {}).get("lr")
    except (ValueError, AttributeError):
        return None
    return float(lr) if isinstance(lr, (int, float)) else None


def _delta_to_attention(summaries: Sequence[RunSummary], curves: dict, out: Path) -> list[str]:
    """The MesaNet paper's per-position view (its ``Delta NLL_k``): each model's NLL minus that of the first
    all-attention run, per position; below 0 the model predicts that position better. Nothing without an
    attention run or another curve of the same length."""
    reference = next((s.name for s in summaries if s.mixers and set(s.mixers) == {"attention"} and s.name in curves), None)
    if reference is None:
        return []
    ref = curves[reference]
    deltas = {name: c - ref for name, c in curves.items() if name != reference and len(c) == len(ref)}
    if not deltas:
        return []
    plot_per_position(
        deltas,
        out / PER_POSITION_DELTA_PNG,
        bins_per_decade=20,
        title=f"NLL minus {reference}'s, per position",
        ylabel=f"NLL - NLL({reference}) (nats)",
        zero_line=True,
    )
    rows = [
        f"| {name} | {float(d.mean()):+.4f} | {float(d[: len(d) // 8].mean()):+.4f} | {float(d[-len(d) // 2 :].mean()):+.4f} |"
        for name, d in deltas.items()
    ]
    return [
        "",
        f"## Per-position NLL relative to `{reference}`",
        "",
        f"![NLL minus {reference}'s]({PER_POSITION_DELTA_PNG})",
        "",
        f"Mean difference to `{reference}` in nats (negative: better), over all positions, the first eighth and the second half:",
        "",
        "| run | all | first 1/8 | second half |",
        "|---|---:|---:|---:|",
        *rows,
    ]


def _fmt_cg(cg: Optional[tuple[float, int]]) -> str:
    return "—" if cg is None else f"{cg[0]:.1f} / {cg[1]}"


def _read_curve(path: Path, column: str = "nll_x1") -> Optional[np.ndarray]:
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    values = [float(r[column]) for r in rows if r.get(column)]
    return np.asarray(values) if values else None


def _fmt(x, spec: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec)


def _mixer_label(mixers: Sequence[str]) -> str:
    if not mixers:
        return "—"
    kinds = list(dict.fromkeys(mixers))
    return kinds[0] if len(kinds) == 1 else "+".join(kinds)


def write_compare_report(
    summaries: Sequence[RunSummary], out_dir: str | Path, *, title: str = "Model comparison", notes: Sequence[str] = ()
) -> Path:
    """Write ``report.md`` (table: name, mixers, params, tokens, lr, val loss, val ppl, perplexity at the
    extrapolation factors, tokens/s, train time, and CG steps where a run has Mesa layers), ``loss_curves.png``,
    ``per_position.png`` (with an attention run also ``per_position_vs_attention.png``) and ``compare.json`` into
    ``out_dir``; returns the report's path. Rows are sorted by validation loss."""
    if not summaries:
        raise ValueError("write_compare_report: expected at least one run summary")
    names = [s.name for s in summaries]
    if len(set(names)) != len(names):
        raise ValueError(f"write_compare_report: run names must be unique, got {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(summaries, key=lambda s: s.val_loss)
    factors = sorted({f for s in rows for f in s.extrapolation if f != 1})
    with_cg = any(s.cg_train or s.cg_eval for s in rows)

    header = [
        "run",
        "mixers",
        "params",
        "tokens",
        "lr",
        "val loss",
        "val ppl",
        *[f"ppl x{f}" for f in factors],
        "tokens/s",
        "train time (s)",
        *(["CG train (mean / max)", "CG eval (mean / max)"] if with_cg else []),
    ]
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    lines += ([""] if notes else []) + [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|",
    ]
    for s in rows:
        cells = [
            s.name,
            _mixer_label(s.mixers),
            f"{s.params:,}",
            _fmt(s.tokens, ","),
            _fmt(s.lr, "g"),
            _fmt(s.val_loss, ".4f"),
            _fmt(s.val_ppl, ".2f"),
            *[_fmt(s.extrapolation.get(f), ".2f") for f in factors],
            _fmt(s.tokens_per_s, ",.0f"),
            _fmt(s.train_time_s, ".1f"),
            *([_fmt_cg(s.cg_train), _fmt_cg(s.cg_eval)] if with_cg else []),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if factors:
        lines += ["", "ppl xN: perplexity at N times the training length (— where the validation split is too short)."]
    if with_cg:
        lines += ["", "CG: conjugate-gradient steps per Mesa system (training: the logged steps; eval: the solver report)."]

    with_metrics = {s.name: Path(s.run_dir) for s in summaries if (Path(s.run_dir) / METRICS).is_file()}
    if with_metrics:
        plot_loss_curves(with_metrics, out / LOSS_PNG, title=title + ": training loss")
        lines += ["", "## Loss curves", "", f"![loss curves]({LOSS_PNG})"]
    curves = {s.name: s.per_position_nll for s in summaries if s.per_position_nll is not None}
    if curves:
        plot_per_position(curves, out / PER_POSITION_PNG, bins_per_decade=20, title=title + ": per-position NLL")
        lines += ["", "## Per-position NLL (training length)", "", f"![per-position NLL]({PER_POSITION_PNG})"]
        lines += _delta_to_attention(summaries, curves, out)
    lines.append("")
    report = out / REPORT_MD
    report.write_text("\n".join(lines))
    plain = [{k: v for k, v in asdict(s).items() if k != "per_position_nll"} for s in rows]
    for entry in plain:
        entry["val_ppl"] = entry["val_ppl"] if math.isfinite(entry["val_ppl"]) else None
    (out / COMPARE_JSON).write_text(json.dumps(dict(title=title, runs=plain), indent=2))
    return report


__all__ = [
    "COMPARE_JSON",
    "LOSS_PNG",
    "PER_POSITION_DELTA_PNG",
    "PER_POSITION_PNG",
    "REPORT_MD",
    "RunSummary",
    "summarize_run",
    "write_compare_report",
]
