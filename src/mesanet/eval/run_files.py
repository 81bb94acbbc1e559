"""Reading a training run directory: where its model is, its saved config and its ``metrics.csv``.

Run directory layout (written by :mod:`mesanet.train`)::

    runs/<name>/config.yaml                  resolved TrainConfig (``data:`` is a DataConfig, ``data.seq_len``
                                             the training length)
    runs/<name>/metrics.csv                  step, lr, train_loss, grad_norm, tokens_per_s, val_loss, elapsed
    runs/<name>/final/                       save_pretrained model + tokenizer
    runs/<name>/checkpoints/step_XXXXXX/     the same plus trainer_state.pt
    runs/<name>/data_stats.json              data hashes and sizes; ``cache_dir``: the absolute cache folder used

Training records the size and SHA-256 of every file of ``final/`` (``checksums.json``) and of a checkpoint
(``trainer_state.json``, beside the rest of its summary).

Nothing here imports the training code: these are plain files.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from mesanet.utils.validation import is_int

RUN_CONFIG = "config.yaml"
METRICS = "metrics.csv"
FINAL = "final"
CHECKPOINTS = "checkpoints"
MODEL_CONFIG = "config.json"
DATA_STATS = "data_stats.json"
#: Where training recorded each file's size and SHA-256: ``final/`` and a checkpoint, respectively.
CHECKSUM_RECORDS = ("checksums.json", "trainer_state.json")
#: The optimizer state of a checkpoint: recorded, but not needed to evaluate or generate.
TRAINER_STATE = "trainer_state.pt"

_STEP_DIR = re.compile(r"^step_(\d+)$")


def is_model_dir(path: Path) -> bool:
    """A ``save_pretrained`` directory (it has ``config.json``)."""
    return (Path(path) / MODEL_CONFIG).is_file()


def is_run_dir(path: Path) -> bool:
    """A training run directory (it has ``config.yaml`` and a ``final/`` model, checkpoints or metrics)."""
    path = Path(path)
    return (path / RUN_CONFIG).is_file() and any((path / p).exists() for p in (FINAL, CHECKPOINTS, METRICS))


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The ``checkpoints/step_XXXXXX`` model directory with the highest step, or ``None``."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and is_model_dir(p)]
    return max(steps)[1] if steps else None


def resolve_model_dir(path: str | Path) -> tuple[Path, Optional[Path]]:
    """``(model_dir, run_dir)`` for a run directory or a model directory.

    A run directory gives its ``final/`` model (or, while training has not finished, its latest checkpoint).
    A model directory gives itself, with the run directory found among its parents (``runs/<name>/final``,
    ``runs/<name>/checkpoints/step_X``) or ``None`` for a free-standing model.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"{str(path)!r} does not exist: expected a run directory (runs/<name>) or a model directory (with config.json)"
        )
    if not path.is_dir():
        raise ValueError(
            f"{str(path)!r} is a file: expected a run directory (runs/<name>) or a model directory (with config.json)"
        )
    if is_model_dir(path):
        run_dir = next((p for p in path.resolve().parents[:3] if is_run_dir(p)), None)
        return path, run_dir
    if (path / RUN_CONFIG).is_file():
        final = path / FINAL
        if is_model_dir(final):
            return final, path
        checkpoint = latest_checkpoint(path)
        if checkpoint is not None:
            return checkpoint, path
        raise ValueError(
            f"run directory {str(path)!r} has no model yet: neither {FINAL}/config.json nor {CHECKPOINTS}/step_*/config.json exists"
        )
    raise ValueError(f"{str(path)!r} is neither a model directory (no {MODEL_CONFIG}) nor a run directory (no {RUN_CONFIG})")


def recorded_checksums(model_dir: str | Path) -> tuple[Optional[Path], Optional[dict]]:
    """``(record file, {name: {"bytes", "sha256"}})`` written by training for ``model_dir``, or ``(None, None)``
    for a directory training did not write (a free-standing ``save_pretrained``). An unreadable record is an error."""
    for name in CHECKSUM_RECORDS:
        record = Path(model_dir) / name
        if record.is_file():
            try:
                files = json.loads(record.read_text())["files"]
                if isinstance(files, dict) and all({"bytes", "sha256"} <= set(m) for m in files.values()):
                    return record, files
            except (ValueError, KeyError, TypeError):
                pass
            raise ValueError(f"{record} is damaged: it does not list the files' sizes and SHA-256")
    return None, None


def recorded_cache_dir(run_dir: str | Path) -> Optional[Path]:
    """The absolute data-cache folder training used (``data_stats.json``), or ``None`` when not recorded."""
    try:
        value = json.loads((Path(run_dir) / DATA_STATS).read_text()).get("cache_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(value) if isinstance(value, str) and Path(value).is_absolute() else None


def load_run_config(run_dir: str | Path) -> dict:
    """The raw mapping of ``run_dir/config.yaml`` (the resolved TrainConfig as saved by the trainer)."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} has no {RUN_CONFIG}: not a training run directory")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def train_seq_len(run_config: dict, where: str = RUN_CONFIG) -> int:
    """The training length ``data.seq_len`` of a run config."""
    data = run_config.get("data")
    seq_len = data.get("seq_len") if isinstance(data, dict) else None
    if not is_int(seq_len, 2):
        raise ValueError(f"{where}: expected data.seq_len to be an integer >= 2 (the training length), got {seq_len!r}")
    return seq_len


def read_metrics(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a ``metrics.csv`` (a run directory or the file) as float arrays; empty cells are NaN.

    Needs the columns ``step`` and ``train_loss``; any others (``val_loss``, ``tokens_per_s``, ``elapsed``, ...)
    are kept as they come.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    if not path.is_file():
        raise ValueError(f"metrics file {str(path)!r} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ValueError(f"{path}: empty metrics file (no header)")
        missing = [c for c in ("step", "train_loss") if c not in reader.fieldnames]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; found {reader.fieldnames}")
        columns: dict[str, list[float]] = {name: [] for name in reader.fieldnames}
        for line, row in enumerate(reader, start=2):
            for name in reader.fieldnames:
                columns[name].append(_number(row.get(name), path, line, name))
    return {name: np.asarray(values, dtype=np.float64) for name, values in columns.items()}


def _number(cell: Optional[str], path: Path, line: int, column: str) -> float:
    if cell is None or cell.strip() == "":
        return math.nan
    try:
        return float(cell)
    except ValueError:
        raise ValueError(f"{path}:{line}: column {column!r} holds {cell!r}, not a number") from None


__all__ = [
    "CHECKPOINTS",
    "CHECKSUM_RECORDS",
    "DATA_STATS",
    "FINAL",
    "METRICS",
    "MODEL_CONFIG",
    "RUN_CONFIG",
    "TRAINER_STATE",
    "is_model_dir",
    "is_run_dir",
    "latest_checkpoint",
    "load_run_config",
    "read_metrics",
    "recorded_cache_dir",
    "recorded_checksums",
    "resolve_model_dir",
    "train_seq_len",
]
