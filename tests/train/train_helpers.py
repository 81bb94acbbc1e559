"""Builders for the training tests: a tiny run config on the real data pipeline (20 standard-library
documents, a 300-token BPE), cheap enough for a step in ~0.1 s on 2 cores."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mesanet.train import TrainConfig
from mesanet.train import checkpoint as ckpt
from mesanet.utils.config import from_dict
from mesanet.utils.files import sha256_file

#: Hawk + Mesa (both kinds of tagged no-decay parameters); few CG steps: the trainer does not depend on the solver
#: depth (at tol = 1e-4 the tiny model's solves take at most 7 steps, so no convergence warning fires).
TINY_MODEL = dict(
    preset="tiny", mixer=["hawk", "mesa"], overrides=dict(solver_training=dict(max_iter=8), solver_inference=dict(max_iter=8))
)


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in, section by section (``model.overrides`` is replaced whole)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "overrides" else v
    return out


def tiny_config(out_dir, data_cache: str, **over) -> TrainConfig:
    """A run named ``run`` under ``out_dir``: tiny model, 4 steps of 4 x 32 tokens, every step logged."""
    base = dict(
        name="run",
        out_dir=str(out_dir),
        model=TINY_MODEL,
        data=dict(seq_len=32, vocab_size=300, max_documents=20, cache_dir=data_cache),
        optim=dict(warmup_steps=1),
        batch_size=4,
        max_steps=4,
        log_every=1,
        eval_every=0,
        eval_batches=1,
        checkpoint_every=0,
        keep_last=2,
    )
    return from_dict(TrainConfig, merge(base, over))


def write_nan_weights(checkpoint: Path) -> None:
    """NaN in one tensor of ``checkpoint``, its recorded size and SHA-256 updated to match (what a version
    without the finiteness guard could have written: intact files, unusable weights)."""
    weights = checkpoint / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights, metadata={"format": "pt"})
    summary = json.loads((checkpoint / ckpt.SUMMARY_FILE).read_text())
    summary["files"]["model.safetensors"] = {"bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
    (checkpoint / ckpt.SUMMARY_FILE).write_text(json.dumps(summary))


def flip_byte(path: Path, offset: int = -10) -> None:
    """Damage ``path`` in place: one byte inverted, the size unchanged."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
