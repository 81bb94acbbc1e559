"""``python -m mesanet.train [CONFIG.yaml] [key=value ...]``: one training run; works under ``torchrun``
(``torchrun --nproc_per_node 2 -m mesanet.train CONFIG.yaml``). Overrides use dotted keys, e.g.
``optim.lr=1e-3 model.mixer=gla data.seq_len=128``. Options may come anywhere; errors are one line on stderr
(exit 2: usage or config, 1: a runtime failure such as a non-finite loss; ``--debug`` shows the traceback)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml

from mesanet.presets import resolve_config
from mesanet.utils.cli_errors import add_debug_flag, run_cli
from mesanet.utils.config import fields_help, load, to_dict

from .config import TrainConfig
from .interrupts import TrainingInterrupted, resume_command
from .trainer import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mesanet.train",
        description=__doc__,
        epilog=fields_help(TrainConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "args",
        nargs="*",
        metavar="CONFIG.yaml | PRESET | key=value",
        help="a YAML config file or a packaged preset name (optional, first) and overrides",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    add_debug_flag(parser)
    ns = parser.parse_intermixed_args(argv)
    path = ns.args[0] if ns.args and "=" not in ns.args[0] else None
    overrides = ns.args[1:] if path is not None else ns.args
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load(TrainConfig, resolve_config(path) if path else None, overrides)
    if ns.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        result = train(cfg, progress=not ns.no_progress)
    except TrainingInterrupted as e:  # Ctrl-C / SIGTERM: a checkpoint of the last finished step was saved; 130 / 143
        if main_rank:
            print(f"mesanet train: {e}; resume with: {resume_command(ns.args, cfg.resume)}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    if result.final_train_loss is not None and main_rank:
        val = (
            f", val loss {result.final_val_loss:.4f} (ppl {result.final_val_ppl:.2f})"
            if result.final_val_loss is not None
            else ""
        )
        print(
            f"{result.run_dir}: step {result.steps}, train loss {result.final_train_loss:.4f}{val}, {result.tokens_per_s:,.0f} tokens/s"
        )


if __name__ == "__main__":
    sys.exit(run_cli("python -m mesanet.train", main))
