"""Pieces of a run's setup that :class:`~.trainer.Trainer` calls once: the validation windows of a rank, the
run files written before training (resolved config, data statistics), and restoring the training state of a
checkpoint (optimizer, schedule, data positions, random state)."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml

from mesanet.data import eval_windows
from mesanet.utils.config import to_dict

from . import checkpoint as ckpt
from . import guards
from .config import TrainConfig
from .resume import check_resumable

log = logging.getLogger(__name__)


def validation_windows(val_tokens, cfg: TrainConfig, rank: int, world_size: int) -> tuple[int, torch.Tensor]:
    """``(number of windows in all, this rank's share [n, seq_len])`` of the first ``eval_batches * batch_size``
    validation windows; none (with a warning) when the split is shorter than one window."""
    seq_len = cfg.data.seq_len
    if len(val_tokens) >= seq_len:
        windows = eval_windows(val_tokens, seq_len, max_windows=cfg.eval_batches * cfg.batch_size)
    else:
        warnings.warn(f"the validation split has fewer than seq_len = {seq_len} tokens: no validation loss", stacklevel=3)
        windows = torch.zeros(0, seq_len, dtype=torch.long)
    return int(windows.shape[0]), windows[rank::world_size]


def write_run_files(run_dir: Path, cfg: TrainConfig, prepared) -> None:
    """``config.yaml`` (the resolved config) and ``data_stats.json`` (hashes, statistics and the cache folder, where
    evaluation finds the caches), each written atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    stats = {
        "corpus_hash": prepared.corpus_hash,
        "tokenizer_hash": prepared.tokenizer_hash,
        "eod_id": prepared.eod_id,
        **prepared.stats,
        "cache_dir": str(cfg.data.cache_root.resolve()),
    }
    ckpt.atomic_write_text(run_dir / "data_stats.json", json.dumps(stats, indent=2, default=str) + "\n")


@dataclass
class RestoredProgress:
    """Where a restored run stands: the step, the wall time before this call, the last logged losses."""

    step: int
    elapsed: float
    train_loss: Optional[float]
    val_loss: Optional[float]


def load_resume_state(path: Path, existing: list, cfg: TrainConfig, model_config, prepared) -> dict:
    """The training state of checkpoint ``path``, fully validated (format, model, config, data hashes) before
    anything is built or written; a failure names older checkpoints that would load (``existing``)."""
    try:
        summary, state = ckpt.load_checkpoint(path, model_config)
    except ckpt.CheckpointError as e:
        hint = guards.older_checkpoint_hint(existing, model_config)  # names only checkpoints it checked
        raise ckpt.CheckpointError(f"{e}{hint} (nothing was modified)") from None
    check_resumable(path, summary, state, cfg, prepared.corpus_hash, prepared.tokenizer_hash)
    return state


def restore_training_state(
    path: Path, state: dict, model, optimizer, scheduler, batches: list, rank: int, world_size: int, grad_accum: int
) -> RestoredProgress:
    """Load a validated checkpoint ``path`` (its ``state``) into the model, optimizer, schedule, the data streams of
    this rank and the random state. A checkpoint written with another ``world_size x grad_accum`` resumes only when
    its data positions do not depend on the rank; anything that does not fit is a :class:`CheckpointError`."""
    ckpt.load_model_weights(path, model)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise ckpt.CheckpointError(f"checkpoint {path}: optimizer / scheduler state does not fit ({e})") from None
    streams = [s for rank_states in state["data"] for s in rank_states]  # virtual-rank order
    if len(streams) == world_size * grad_accum:
        positions = [streams[v] for v in range(rank * grad_accum, (rank + 1) * grad_accum)]
    elif all(s == streams[0] for s in streams):  # rank-independent positions (plain values): any split resumes
        positions = [streams[0]] * len(batches)
    else:
        raise ckpt.CheckpointError(
            f"checkpoint {path} holds {len(streams)} data positions (world_size x grad_accum when written); "
            f"resume with world_size x grad_accum = {len(streams)} (now {world_size * grad_accum})"
        )
    try:
        for b, position in zip(batches, positions):
            b.load_state_dict(position)
    except (ValueError, KeyError, TypeError) as e:
        raise ckpt.CheckpointError(f"checkpoint {path}: its data position does not fit this run ({e})") from None
    rng = state["rng"]
    ckpt.restore_rng_state(rng[rank] if len(rng) == world_size else rng[0])
    metrics = state.get("metrics", {})
    return RestoredProgress(
        int(state["step"]), float(metrics.get("elapsed", 0.0)), metrics.get("train_loss"), metrics.get("val_loss")
    )
