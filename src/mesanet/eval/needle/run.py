"""``mesanet needle RUN_DIR`` (= ``python -m mesanet.eval.needle``): load a run, run the test, write its files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from mesanet.utils.cli_errors import device_arg, one_line

from ..checkpoint import load_checkpoint
from ..run_files import load_run_config, resolve_model_dir, train_seq_len
from .config import HAYSTACKS, NeedleConfig
from .prompts import corpus_documents
from .report import write_needle
from .results import NeedleResult
from .scoring import needle_in_a_haystack


def run_needle(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    factors: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    trials: int = 8,
    haystacks: Sequence[str] = HAYSTACKS,
    seed: int = 0,
    key: str = "SECRET_CODE",
    batch_size: int = 8,
    train_len: Optional[int] = None,
    device: str = "cpu",
    progress: bool = True,
) -> NeedleResult:
    """Load a run (``runs/<name>``) or model directory, run the needle test, write its files into ``out_dir``
    (default: the run directory, or the model directory outside a run).

    The training length is the run's ``data.seq_len`` (``train_len=`` for a model directory outside a run). The
    text haystack comes from the held-out validation documents of the run's own corpus when it is a file source
    (``stdlib`` or a local path), else from the default stdlib corpus's validation split."""
    model_dir, run = resolve_model_dir(run_dir)
    run_config = load_run_config(run) if run is not None else None
    if train_len is None:
        if run_config is None:
            raise ValueError(f"{str(run_dir)!r} is a model directory outside a run: pass train_len=")
        train_len = train_seq_len(run_config, str(Path(run) / "config.yaml"))
    config = NeedleConfig(
        train_len=train_len,
        factors=list(factors),
        depths=list(depths),
        haystacks=list(haystacks),
        trials=trials,
        key=key,
        seed=seed,
        batch_size=batch_size,
    )
    loaded = load_checkpoint(model_dir, device=device)
    documents = source = None
    if "text" in config.haystacks:
        data = (run_config or {}).get("data")
        own = isinstance(data, dict) and not str(data.get("source", "stdlib")).startswith("hf:")
        documents, source = corpus_documents(data if own else None)
    result = needle_in_a_haystack(loaded.model, loaded.tokenizer, config, documents=documents, progress=progress)
    result.text_source = source
    name = (Path(run) if run is not None else Path(model_dir)).resolve().name
    write_needle(
        result, out_dir if out_dir is not None else (run if run is not None else model_dir), title=f"Needle in a haystack: {name}"
    )
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m mesanet.eval.needle RUN_DIR [options]``; prints the markdown report."""
    parser = argparse.ArgumentParser(prog="mesanet needle", description="Single-needle needle-in-a-haystack on a trained run.")
    parser.add_argument("run_dir", help="run directory (runs/<name>) or model directory")
    parser.add_argument(
        "--lengths",
        type=float,
        nargs="+",
        default=[0.5, 1.0, 2.0, 4.0],
        help="context lengths as multiples of the training length (default: 0.5 1 2 4)",
    )
    parser.add_argument(
        "--depths",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 0.5, 0.75, 1.0],
        help="needle depths in [0, 1] (0: start, 1: right before the query)",
    )
    parser.add_argument("--trials", type=int, default=8, help="trials per cell (default 8)")
    parser.add_argument("--haystack", nargs="+", default=list(HAYSTACKS), help="haystacks: noise and/or text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key", default="SECRET_CODE", help="the needle's variable name")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-len", type=int, default=None, help="training length (for a model directory outside a run)")
    parser.add_argument("--out", default=None, help="output folder (default: the run directory)")
    parser.add_argument("--device", type=device_arg, default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = run_needle(
            args.run_dir,
            args.out,
            factors=args.lengths,
            depths=args.depths,
            trials=args.trials,
            haystacks=args.haystack,
            seed=args.seed,
            key=args.key,
            batch_size=args.batch_size,
            train_len=args.train_len,
            device=args.device,
            progress=not args.no_progress,
        )
    except ValueError as e:
        print(f"{parser.prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(result.to_markdown())
    print(f"({result.seconds:.1f} s)")
    return 0
