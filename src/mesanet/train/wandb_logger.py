"""The optional Weights & Biases logger (``logging.wandb: true`` in the training config; off by default).

``wandb`` is imported only when the option is on; without the package the run stops before anything is written
with one line saying how to install it. The run id is kept in ``<run_dir>/wandb_run_id``, so a resumed training
run continues the same W&B run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

RUN_ID_FILE = "wandb_run_id"


def require_wandb() -> Any:
    """The ``wandb`` module; ``ValueError`` (a config error, one line) when it is not installed."""
    try:
        import wandb
    except ImportError:
        raise ValueError("logging.wandb: true needs the wandb package: pip install wandb (or set logging.wandb=false)") from None
    return wandb


class WandbLogger:
    """One W&B run per training run: the resolved config at start, the metrics of every logged step."""

    def __init__(self, run_dir: str | Path, *, project: str, name: str, config: dict):
        wandb = require_wandb()
        id_file = Path(run_dir) / RUN_ID_FILE
        run_id: Optional[str] = id_file.read_text().strip() if id_file.is_file() else None
        if run_id is None:
            run_id = wandb.util.generate_id()
            id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow", dir=str(run_dir), config=config)

    def log(self, step: int, values: dict) -> None:
        self.run.log({k: v for k, v in values.items() if v is not None}, step=step)

    def close(self) -> None:
        self.run.finish()


__all__ = ["RUN_ID_FILE", "WandbLogger", "require_wandb"]
