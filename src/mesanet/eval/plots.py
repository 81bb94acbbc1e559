"""PNG plots: per-position NLL curves and training loss curves, one run or several overlaid.

Drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so they work headless and
leave an interactive session's backend alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mesanet.utils.validation import is_int

from .run_files import read_metrics

Curves = Union[np.ndarray, Sequence[float], Mapping[str, Union[np.ndarray, Sequence[float]]]]


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start), NaNs ignored."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values
    ok = np.isfinite(values)
    sums = np.cumsum(np.where(ok, values, 0.0))
    counts = np.cumsum(ok)
    sums[window:] = sums[window:] - sums[:-window]
    counts[window:] = counts[window:] - counts[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def log_binned(values: np.ndarray, per_decade: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` (position ``i + 1`` at index ``i``) in log-spaced position bins, ``per_decade`` bins per
    factor of 10; returns ``(geometric centre of each bin, mean)``. Early positions keep bins of one."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    count = max(1, int(np.ceil(np.log10(n + 1) * per_decade)))
    edges = np.unique(np.floor(np.logspace(0, np.log10(n + 1), count + 1)).astype(np.int64))
    edges = np.unique(np.clip(np.concatenate([[1], edges, [n + 1]]), 1, n + 1))
    centres, means = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):  # positions lo .. hi - 1
        segment = values[lo - 1 : hi - 1]
        ok = np.isfinite(segment)
        if ok.any():
            centres.append(float(np.exp(np.mean(np.log(np.arange(lo, hi))))))
            means.append(float(segment[ok].mean()))
    return np.asarray(centres), np.asarray(means)


def _new_figure(size=(7.0, 4.5)) -> tuple[Figure, object]:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG: expected a path ending in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _named_curves(curves: Curves) -> dict[str, np.ndarray]:
    if isinstance(curves, Mapping):
        named = {str(k): np.asarray(v, dtype=np.float64) for k, v in curves.items()}
    else:
        named = {"": np.asarray(curves, dtype=np.float64)}
    if not named:
        raise ValueError("plot_per_position: expected at least one curve")
    for name, values in named.items():
        if values.ndim != 1 or len(values) == 0:
            raise ValueError(
                f"plot_per_position: curve {name or '(unnamed)'!r} must be a non-empty 1-D array, got shape {list(values.shape)}"
            )
    return named


def plot_per_position(
    curves: Curves,
    path: str | Path,
    *,
    log_x: bool = True,
    bins_per_decade: Optional[int] = None,
    smooth: Optional[int] = None,
    train_len: Optional[int] = None,
    title: str = "Per-position NLL",
    ylabel: str = "NLL (nats)",
    zero_line: bool = False,
) -> Path:
    """Per-position NLL (nats) against the number of context tokens (``1 .. T-1``): one curve, or a mapping
    ``label -> curve`` overlaid. Noise control: ``bins_per_decade`` averages log-spaced position bins (the
    natural choice on a log x-axis), ``smooth`` a trailing moving average over that many positions.
    ``train_len`` draws a vertical line at the training length (extrapolation plots); ``ylabel`` names
    the quantity (e.g. an NLL difference, then ``zero_line`` marks 0)."""
    named = _named_curves(curves)
    for name, value in (("bins_per_decade", bins_per_decade), ("smooth", smooth)):
        if value is not None and not is_int(value, 1):
            raise ValueError(f"plot_per_position: expected {name} to be None or an integer >= 1, got {value!r}")
    fig, ax = _new_figure()
    for name, values in named.items():
        y = moving_average(values, smooth) if smooth else values
        x = np.arange(1, len(values) + 1)
        if bins_per_decade:
            x, y = log_binned(y, bins_per_decade)
        ax.plot(x, y, label=name or None, linewidth=1.2)
    if train_len is not None:
        ax.axvline(train_len, color="gray", linestyle="--", linewidth=1, label=f"training length ({train_len})")
    if zero_line:
        ax.axhline(0.0, color="black", linewidth=0.8)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("context tokens (position)" + (" [log]" if log_x else ""))
    detail = [f"moving average over {smooth}"] if smooth and smooth > 1 else []
    detail += [f"mean of {bins_per_decade} log bins per decade"] if bins_per_decade else []
    ax.set_ylabel(ylabel + (f"\n({', '.join(detail)})" if detail else ""))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if any(named) or train_len is not None:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_loss_curves(
    runs: Mapping[str, str | Path | Mapping[str, np.ndarray]],
    path: str | Path,
    *,
    x: str = "step",
    smooth: Optional[int] = None,
    log_y: bool = False,
    title: str = "Training loss",
) -> Path:
    """Training loss (solid: trailing moving average over ``smooth`` logged points, default about 1/25 of the
    run; faint: raw, when smoothed) and validation loss (dashed, markers) of one or several runs overlaid.
    ``runs``: label -> run directory, ``metrics.csv`` path, or an already read metrics mapping
    (:func:`~mesanet.eval.run_files.read_metrics`). ``x``: a metrics column (``step``, ``elapsed``, ...)."""
    if not runs:
        raise ValueError("plot_loss_curves: expected at least one run")
    if smooth is not None and not is_int(smooth, 1):
        raise ValueError(f"plot_loss_curves: expected smooth to be None or an integer >= 1, got {smooth!r}")
    fig, ax = _new_figure()
    for i, (label, source) in enumerate(runs.items()):
        metrics = source if isinstance(source, Mapping) else read_metrics(source)
        if x not in metrics:
            raise ValueError(f"plot_loss_curves: run {label!r} has no column {x!r}; columns: {sorted(metrics)}")
        color = f"C{i % 10}"
        xs, train = np.asarray(metrics[x]), np.asarray(metrics["train_loss"])
        ok = np.isfinite(train)
        window = smooth if smooth is not None else max(1, int(ok.sum()) // 25)
        if window > 1:
            ax.plot(xs[ok], train[ok], color=color, alpha=0.25, linewidth=0.8)
        ax.plot(xs[ok], moving_average(train[ok], window), color=color, linewidth=1.5, label=f"{label} (train)")
        if "val_loss" in metrics:
            val = np.asarray(metrics["val_loss"])
            ok = np.isfinite(val)
            if ok.any():
                ax.plot(
                    xs[ok], val[ok], color=color, linestyle="--", marker="o", markersize=3, linewidth=1, label=f"{label} (val)"
                )
    if log_y:
        ax.set_yscale("log")
    if x == "step":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(x)
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


__all__ = ["log_binned", "moving_average", "plot_loss_curves", "plot_per_position"]
