"""Files of a needle result: ``needle.csv``, ``needle_trials.csv``, ``needle.md`` and the ``needle.png`` heatmap."""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..plots import _save
from .config import NEEDLE_CSV, NEEDLE_MD, NEEDLE_PNG, NEEDLE_TRIALS_CSV
from .results import NeedleResult


def _write_csv(rows: list, path: Path) -> None:
    with path.open("w", newline="") as fh:
        names = list(asdict(rows[0]))
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(row).items()})


def plot_needle(result: NeedleResult, path: str | Path, *, title: str = "Needle in a haystack") -> Path:
    """Heatmaps depth (rows) x length (columns), one column of panels per haystack: exact match (top) and
    teacher-forced answer-token accuracy (bottom), both on [0, 1], each cell annotated."""
    cfg = result.config
    lengths, depths = cfg.lengths(), cfg.depths
    metrics = (("exact_match", "exact match (greedy)"), ("token_acc", "answer-token accuracy"))
    fig = Figure(
        figsize=(1.2 + 0.9 * len(lengths) * len(cfg.haystacks) + 1.0, 1.0 + 0.45 * len(depths) * 2 + 1.0), layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(metrics), len(cfg.haystacks), squeeze=False)
    image = None
    for col, kind in enumerate(cfg.haystacks):
        for row, (name, label) in enumerate(metrics):
            ax = axes[row][col]
            grid = np.array([[getattr(result.cell(kind, n, d), name) for _, n in lengths] for d in depths])
            image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            for i in range(len(depths)):
                for j in range(len(lengths)):
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if grid[i, j] < 0.6 else "black",
                    )
            inside = [j for j, (f, _) in enumerate(lengths) if f <= 1.0]
            if inside and len(inside) < len(lengths):
                ax.axvline(max(inside) + 0.5, color="red", linestyle="--", linewidth=1)
            ax.set_xticks(range(len(lengths)), [f"{n}\n(x{f:g})" for f, n in lengths], fontsize=7)
            ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
            ax.set_title(f"{kind}: {label}", fontsize=9)
            ax.set_xlabel("context length (tokens)", fontsize=8)
            ax.set_ylabel("needle depth", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8)
    fig.suptitle(f"{title} (dashed: training length {cfg.train_len})", fontsize=10)
    return _save(fig, path)


def write_needle(result: NeedleResult, out_dir: str | Path, *, title: str = "Needle in a haystack") -> dict:
    """Write ``needle.csv``, ``needle_trials.csv``, ``needle.md`` and ``needle.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in (NEEDLE_CSV, NEEDLE_TRIALS_CSV, NEEDLE_MD, NEEDLE_PNG)}
    _write_csv(result.cells, files[NEEDLE_CSV])
    _write_csv(result.trials, files[NEEDLE_TRIALS_CSV])
    files[NEEDLE_MD].write_text(result.to_markdown(title))
    plot_needle(result, files[NEEDLE_PNG], title=title)
    return {name: str(p) for name, p in files.items()}
