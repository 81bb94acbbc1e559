"""``run_compressed_alg(config, out_dir)``: measure (:mod:`.experiment`), then write the CSVs, figures and
``summary.md`` (:mod:`.report`); ``main(argv)`` is the CLI (``mesanet mesaopt compressed-alg``)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from mesanet.utils.config import save as save_config

from .config import CompressedAlgConfig
from .experiment import measure
from .report import plot, write_summary, write_tables
from .results import CompressedAlgResult, verdict

__all__ = ["run_compressed_alg", "main"]

DESCRIPTION = (
    "Proposition 2 / CompressedAlg-k with learned step sizes; block-scalar compression and interpolation "
    "of trained linear-attention models"
)


def run_compressed_alg(config: CompressedAlgConfig, out_dir: str | Path, *, progress: bool = True) -> CompressedAlgResult:
    """Run parts (1)-(3) (package docstring); write ``compressed_alg_k.csv``, ``compression.csv``,
    ``compression_heads.csv``, ``interpolation.csv``, ``summary.md``, ``config.yaml`` and PNG figures to ``out_dir``.
    Returns the typed result (checks included)."""
    if not isinstance(config, CompressedAlgConfig):
        raise ValueError(f"config: expected a CompressedAlgConfig, got {type(config).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    start = time.perf_counter()
    result = measure(config, progress=progress)
    write_tables(out, result)
    plot(out, config, result)
    result.seconds = time.perf_counter() - start
    write_summary(out, config, result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mesanet.mesaopt compressed-alg [--out DIR] [--quick] [--ks ...] [--models ...]``."""
    parser = argparse.ArgumentParser(prog="python -m mesanet.mesaopt compressed-alg", description=DESCRIPTION)
    parser.add_argument("--out", type=Path, default=Path("runs/mesaopt/compressed-alg"))
    parser.add_argument("--quick", action="store_true", help="seconds-scale smoke run (tiny models trained under --out)")
    parser.add_argument("--ks", type=int, nargs="+", help="CompressedAlg iterations to learn (default 1..6)")
    parser.add_argument("--models", nargs="*", help="zoo linear models (default linear-1 linear-2 linear-4)")
    parser.add_argument("--train-steps", type=int)
    parser.add_argument("--eval-sequences", type=int)
    parser.add_argument("--zoo-root", type=str)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    cfg = CompressedAlgConfig()
    if args.quick:
        cfg = replace(
            cfg,
            models=["linear-1", "linear-2"],
            ks=[1, 2],
            fixed_extra_ks=[4],
            train_steps=20,
            batch_size=16,
            ridge_lams=[0.3, 1.0],
            eval_sequences=64,
            val_sequences=32,
            zoo_steps=10,
            zoo_root=str(args.out / "models"),
        )
    overrides = {
        "ks": args.ks,
        "models": args.models,
        "train_steps": args.train_steps,
        "eval_sequences": args.eval_sequences,
        "zoo_root": args.zoo_root,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    result = run_compressed_alg(cfg, args.out, progress=not args.no_progress)
    for c in result.checks:
        print(f"[{verdict(c.ok)}] {c.name}: {c.numbers}")
    print(f"wrote {args.out / 'summary.md'} ({result.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
