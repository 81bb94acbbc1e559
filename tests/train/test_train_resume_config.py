"""Saved configs read with today's defaults: a field added after a run was written (e.g. ``data.needle_*``)
neither blocks its resume nor makes ``compare`` train it again; a real change still does."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from mesanet.train.checkpoint import CheckpointError
from mesanet.train.config import TrainConfig, resolved_config
from mesanet.train.resume import check_resumable
from mesanet.utils.config import to_dict

NEW_DATA_FIELDS = ("needle_fraction", "needle_doc_chars", "needle_min_digits", "needle_max_digits", "needle_keys")


def older(config: dict) -> dict:
    """``config`` as a version without the needle fields wrote it."""
    old = copy.deepcopy(config)
    for key in NEW_DATA_FIELDS:
        del old["data"][key]
    return old


def test_resolved_config_fills_fields_added_since():
    now = to_dict(TrainConfig())
    assert resolved_config(older(now)) == now
    unknown = dict(now, removed_field=1)  # a field since removed: kept as saved, so the comparison shows it
    assert resolved_config(unknown) is unknown


def test_an_older_checkpoint_resumes_but_a_changed_field_does_not():
    cfg = TrainConfig()
    summary = dict(corpus_hash="c", tokenizer_hash="t")
    check_resumable("ckpt", summary, dict(config=older(to_dict(cfg)), step=1), cfg, "c", "t")
    changed = older(to_dict(cfg))
    changed["optim"]["lr"] = 1e-3
    with pytest.raises(CheckpointError, match=r"\(optim.lr: checkpoint 0.001, now 0.003\)"):
        check_resumable("ckpt", summary, dict(config=changed, step=1), cfg, "c", "t")


def test_compare_reuses_a_finished_run_written_before_new_fields(tmp_path):
    pytest.importorskip("mesanet.data")
    from mesanet.eval.compare import run_finished

    cfg = TrainConfig(name="old", out_dir=str(tmp_path), max_steps=3)
    run = tmp_path / "old"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text(json.dumps({}))
    (run / "metrics.csv").write_text("step,train_loss\n3,1.0\n")
    (run / "config.yaml").write_text(yaml.safe_dump(older(to_dict(cfg))))
    assert run_finished(cfg)
    other = older(to_dict(cfg))
    other["seed"] = 1
    (run / "config.yaml").write_text(yaml.safe_dump(other))
    assert not run_finished(cfg)
