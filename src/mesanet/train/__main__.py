"""``python -m mesanet.train [CONFIG.yaml] [key=value ...]``: one training run; works under ``torchrun``
(``torchrun --nproc_per_node 2 -m mesanet.train CONFIG.yaml``). Overrides use dotted keys, e.g.
``optim.lr=1e-3 model.mixer=gla data.seq_len=128``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from mesanet.utils.config import load

from .config import TrainConfig
from .trainer import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mesanet.train", description=__doc__)
    parser.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value", help="a YAML config (optional, first) and overrides")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ns = parser.parse_args(argv)
    path = ns.args[0] if ns.args and "=" not in ns.args[0] else None
    overrides = ns.args[1:] if path is not None else ns.args
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load(TrainConfig, Path(path) if path else None, overrides)
    result = train(cfg, progress=not ns.no_progress)
    if result.final_train_loss is not None and os.environ.get("RANK", "0") == "0":
        val = f", val loss {result.final_val_loss:.4f} (ppl {result.final_val_ppl:.2f})" if result.final_val_loss is not None else ""
        print(f"{result.run_dir}: step {result.steps}, train loss {result.final_train_loss:.4f}{val}, {result.tokens_per_s:,.0f} tokens/s")


if __name__ == "__main__":
    main()
