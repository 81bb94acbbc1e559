"""Whether a checkpoint may be resumed by a config: the same data, and only resumable fields changed."""

from __future__ import annotations

import warnings
from pathlib import Path

from mesanet.utils.config import to_dict

from . import checkpoint as ckpt
from .config import TrainConfig, resolved_config, resumable_change


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (``model.overrides`` stays one value)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "overrides":
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def check_resumable(path: Path, summary: dict, state: dict, cfg: TrainConfig, corpus_hash: str, tokenizer_hash: str) -> None:
    """:class:`~.checkpoint.CheckpointError` unless checkpoint ``path`` was trained on the same data (content
    hashes) with a config that differs from ``cfg`` only in :data:`~.config.RESUMABLE_CHANGES`."""
    if (summary.get("corpus_hash"), summary.get("tokenizer_hash")) != (corpus_hash, tokenizer_hash):
        raise ckpt.CheckpointError(
            f"checkpoint {path} was trained on other data (corpus {summary.get('corpus_hash')}, tokenizer "
            f"{summary.get('tokenizer_hash')}; now corpus {corpus_hash}, tokenizer {tokenizer_hash}): "
            "its data position means nothing here; start a new run (another name)"
        )
    saved, now = flatten(resolved_config(state["config"])), flatten(to_dict(cfg))
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    fixed = [k for k in changed if not resumable_change(k)]
    if fixed:
        listing = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in fixed)
        raise ckpt.CheckpointError(
            f"cannot resume {path}: the config changed in fields that decide the training trajectory ({listing}). "
            "Restore them, or start a new run (another name)"
        )
    if state["step"] > cfg.max_steps:
        raise ValueError(
            f"max_steps ({cfg.max_steps}) is below the step of the checkpoint to resume ({path}, step {state['step']})"
        )
    if "max_steps" in changed and state["step"] < cfg.max_steps:
        warnings.warn(
            f"max_steps changed from {saved['max_steps']} to {cfg.max_steps} on resume: the cosine schedule "
            "now ends at the new horizon",
            stacklevel=4,
        )


__all__ = ["check_resumable", "flatten"]
