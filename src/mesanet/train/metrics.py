"""Run metrics: ``metrics.csv`` (one row per logged step) and TensorBoard scalars under ``tb/``.

CSV columns: ``step, lr, train_loss, grad_norm, tokens_per_s, val_loss, elapsed, tokens``: ``lr`` is the
learning rate the step used, ``train_loss`` the step's global mean loss, ``grad_norm`` its gradient norm
before clipping, ``tokens_per_s`` the training throughput since the previous row (evaluation and
checkpoint time excluded), ``val_loss`` empty when that step was not evaluated, ``elapsed`` wall seconds
since the run began (across resumes), ``tokens`` training tokens seen up to and including the step. Models with
Mesa layers add the CG columns of :class:`mesanet.train.solver_monitor.SolverMonitor` (``cg_mean``, ``cg_max``,
``cg_mean_l<i>``, ``cg_max_l<i>``: CG steps of the logged step, mean and max over its systems, overall and
per layer ``i``). Floats are written with ``repr`` (shortest exact round trip), so a loss trace read back from the
CSV is bit-identical to the one computed. On resume, rows after the checkpoint's step (written by the
interrupted run, about to be recomputed) are dropped, and TensorBoard purges its events after that step; a
file whose header lacks columns of this run is rewritten with them (empty cells in the old rows).

TensorBoard also gets the resolved training config: as YAML text (tag ``config``) and as hparams (the config's
dotted keys, with ``val/loss`` as the metric), so runs can be compared by their settings. With ``wandb`` (see
:mod:`.wandb_logger`) the same metrics go to Weights & Biases.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Optional, Sequence

COLUMNS = ("step", "lr", "train_loss", "grad_norm", "tokens_per_s", "val_loss", "elapsed", "tokens")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _is_int_column(name: str) -> bool:
    return name in ("step", "tokens") or name.startswith("cg_max")


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.csv`` with numbers parsed (``step`` as int, empty cells as ``None``)."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: (None if v == "" else int(v) if _is_int_column(k) else float(v)) for k, v in row.items()})
    return rows


class MetricsLogger:
    """Appends rows to ``<run_dir>/metrics.csv`` and scalars to ``<run_dir>/tb``; a no-op when ``enabled`` is False
    (non-zero ranks). ``start_step``: rows / events after it are dropped (resume). ``extra_columns``: columns after
    :data:`COLUMNS` that :meth:`log` fills from its ``extra`` mapping (TensorBoard tag ``train/<column>``)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        start_step: int = 0,
        enabled: bool = True,
        tensorboard: bool = True,
        extra_columns: Sequence[str] = (),
        config: Optional[dict] = None,
        wandb: Optional[dict] = None,
    ):
        self.enabled = enabled
        self.columns = COLUMNS + tuple(c for c in extra_columns if c not in COLUMNS)
        self.path = Path(run_dir) / "metrics.csv"
        self._writer = self._wandb = None
        if not enabled:
            return
        self._truncate(start_step)
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(self.columns)
            self._file.flush()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1)
            if config is not None:
                write_config(self._writer, config, start_step)
        if wandb is not None:  # {project, name}: see mesanet.train.wandb_logger
            from .wandb_logger import WandbLogger

            self._wandb = WandbLogger(run_dir, config=config or {}, **wandb)

    def _truncate(self, start_step: int) -> None:
        if not self.path.exists():
            return
        if start_step == 0:
            self.path.unlink()
            return
        rows = read_metrics(self.path)
        with open(self.path, newline="") as f:
            header = tuple(next(csv.reader(f), ()))
        if all(r["step"] <= start_step for r in rows) and set(self.columns) <= set(header):
            self.columns = header  # append in the file's own column order
            return
        self.columns += tuple(c for c in header if c not in self.columns)  # keep columns the file already has
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            for r in rows:
                if r["step"] <= start_step:
                    w.writerow([_cell(r.get(c)) for c in self.columns])
        os.replace(tmp, self.path)

    def log(
        self,
        step: int,
        *,
        lr: float,
        train_loss: float,
        grad_norm: float,
        tokens_per_s: float,
        elapsed: float,
        tokens: int,
        val_loss: Optional[float] = None,
        extra: Optional[dict] = None,
    ) -> None:
        if not self.enabled:
            return
        values = dict(
            step=step,
            lr=lr,
            train_loss=train_loss,
            grad_norm=grad_norm,
            tokens_per_s=tokens_per_s,
            val_loss=val_loss,
            elapsed=elapsed,
            tokens=tokens,
        )
        extra = {k: v for k, v in (extra or {}).items() if k in self.columns and k not in COLUMNS}
        values.update(extra)
        self._csv.writerow([_cell(values.get(c)) for c in self.columns])
        self._file.flush()
        if self._writer is not None:
            self._writer.add_scalar("train/loss", train_loss, step)
            self._writer.add_scalar("train/lr", lr, step)
            self._writer.add_scalar("train/grad_norm", grad_norm, step)
            self._writer.add_scalar("train/tokens_per_s", tokens_per_s, step)
            for key, value in extra.items():
                if value is not None:
                    self._writer.add_scalar(f"train/{key}", value, step)
            if val_loss is not None:
                self._writer.add_scalar("val/loss", val_loss, step)
                self._writer.add_scalar("val/ppl", math.exp(min(val_loss, 80.0)), step)
            self._writer.flush()
        if self._wandb is not None:
            ppl = math.exp(min(val_loss, 80.0)) if val_loss is not None else None
            self._wandb.log(
                step,
                {
                    "train/loss": train_loss,
                    "train/lr": lr,
                    "train/grad_norm": grad_norm,
                    "train/tokens_per_s": tokens_per_s,
                    "val/loss": val_loss,
                    "val/ppl": ppl,
                    **{f"train/{k}": v for k, v in extra.items()},
                },
            )

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.close()


def flat_config(config: dict, prefix: str = "") -> dict:
    """``{"optim.lr": 0.003, ...}``: the nested config with dotted keys; values TensorBoard's hparams accept
    (numbers, strings, booleans; lists and ``None`` as their text)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def write_config(writer, config: dict, step: int = 0) -> None:
    """The resolved config into TensorBoard: YAML text under ``config`` and hparams (metric ``val/loss``)."""
    import yaml
    from torch.utils.tensorboard.summary import hparams

    text = yaml.safe_dump(config, sort_keys=False)
    writer.add_text("config", "```yaml\n" + text + "```", step)  # markdown: a fenced block keeps the layout
    for summary in hparams(flat_config(config), {"val/loss": 0.0}):
        writer.file_writer.add_summary(summary, step)


__all__ = ["COLUMNS", "MetricsLogger", "flat_config", "read_metrics", "write_config"]
