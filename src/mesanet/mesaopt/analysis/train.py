"""``mesanet mesaopt train``: train (or reload) the model zoo of :mod:`.zoo` and summarise it.

Writes ``zoo_summary.csv`` / ``zoo_summary.md`` (one row per trained model: size, steps, wall and CPU seconds,
final training loss, held-out loss) and ``zoo_losses.png`` (training curves) under the zoo root.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Sequence

import torch
import yaml

from .reporting import write_csv
from .seq_training import per_position_loss
from .zoo import DEFAULT_ROOT, ZOO, load_or_train, load_saved, recipe

__all__ = ["run_train", "main"]


def _summary_row(name: str, root: Path, num_sequences: int) -> dict:
    model = load_saved(root / name)
    _, train_cfg = recipe(name)
    info = yaml.safe_load((root / name / "train_info.yaml").read_text())
    with torch.no_grad():
        curve = per_position_loss(model, train_cfg.task, num_sequences=num_sequences, seed=1, tokens=train_cfg.tokens)
    return {
        "model": name,
        "layers": "+".join(model.config.layers),
        "tokens": train_cfg.tokens,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": train_cfg.steps,
        "batch": train_cfg.batch_size,
        "train_seconds": info["train_seconds"],
        "cpu_seconds": info.get("cpu_seconds", float("nan")),
        "final_train_loss": round(float(info["final_loss"]), 5),
        "test_loss_mean": round(float(curve.mean()), 5),
        "test_loss_last": round(float(curve[-1]), 6),
    }


def _write_summary(rows: list[dict], root: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_csv(root / "zoo_summary.csv", rows)
    head = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in r.values()) + " |\n" for r in rows)
    (root / "zoo_summary.md").write_text(head + body)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        with open(root / r["model"] / "losses.csv") as f:
            losses = [float(row["loss"]) for row in csv.DictReader(f)]
        window = max(1, len(losses) // 50)
        smooth = [
            sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))
        ]
        ax.plot(smooth, label=r["model"])
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (eq. 1, per position)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "zoo_losses.png", dpi=120)
    plt.close(fig)


def run_train(
    names: Sequence[str], root: Path = DEFAULT_ROOT, *, overwrite: bool = False, eval_sequences: int = 2048, progress: bool = True
) -> list[dict]:
    """Train (or reload) the zoo entries ``names`` under ``root``, then write ``zoo_summary.{csv,md}`` and
    ``zoo_losses.png`` there; returns the summary rows.

    The summary covers every trained zoo model under the root, not only this call's: calls that train
    different models (one after another or in parallel) must not erase each other's rows.
    """
    root = Path(root)
    for name in names:
        load_or_train(name, root, progress=progress, overwrite=overwrite)
    rows = []
    for name in (n for n in ZOO if (root / n / "train_info.yaml").is_file()):
        rows.append(_summary_row(name, root, eval_sequences))
        print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    _write_summary(rows, root)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mesanet.mesaopt train [NAMES...] [--all] [--root DIR] [--overwrite] [--threads N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m mesanet.mesaopt train",
        description="Train (or reload) zoo models; writes zoo_summary.{csv,md} and zoo_losses.png.",
    )
    parser.add_argument("names", nargs="*", help=f"zoo entries: {', '.join(ZOO)}")
    parser.add_argument("--all", action="store_true", help="every zoo entry")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--overwrite", action="store_true", help="retrain even if a saved model exists")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--eval-sequences", type=int, default=2048)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    names = list(ZOO) if args.all else args.names
    unknown = [n for n in names if n not in ZOO]
    if not names or unknown:
        parser.error(f"expected zoo names from {list(ZOO)} or --all, got {names}")
    torch.set_num_threads(args.threads)
    run_train(names, args.root, overwrite=args.overwrite, eval_sequences=args.eval_sequences, progress=not args.no_progress)
    print(f"wrote {args.root / 'zoo_summary.md'}")
    return 0
