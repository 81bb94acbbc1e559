"""Builders for the training tests: a tiny run config on the real data pipeline (20 standard-library
documents, a 300-token BPE), cheap enough for a step in ~0.1 s on 2 cores."""

from __future__ import annotations

import copy

from mesanet.train import TrainConfig
from mesanet.utils.config import from_dict

#: Hawk + Mesa (both kinds of tagged no-decay parameters); few CG steps: the trainer does not depend on the solver depth.
TINY_MODEL = dict(preset="tiny", mixer=["hawk", "mesa"], overrides=dict(cg_max_iter_train=4, cg_max_iter_eval=4))


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in, section by section (``model.overrides`` is replaced whole)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "overrides" else v
    return out


def tiny_config(out_dir, data_cache: str, **over) -> TrainConfig:
    """A run named ``run`` under ``out_dir``: tiny model, 4 steps of 4 x 32 tokens, every step logged."""
    base = dict(
        name="run", out_dir=str(out_dir), model=TINY_MODEL,
        data=dict(seq_len=32, vocab_size=300, max_documents=20, cache_dir=data_cache),
        optim=dict(warmup_steps=1), batch_size=4, max_steps=4, log_every=1, eval_every=0, eval_batches=1,
        checkpoint_every=0, keep_last=2,
    )
    return from_dict(TrainConfig, merge(base, over))
