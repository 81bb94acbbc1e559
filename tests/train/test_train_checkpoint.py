"""Checkpoints: atomic writes (a crash mid-write never damages the previous one), keep-last-k, exact resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mesanet.train import Trainer, list_checkpoints, read_metrics, train
from mesanet.train import checkpoint as ckpt
from mesanet.train import trainer as trainer_module


def _names(root):
    return sorted(p.name for p in root.iterdir())


def cfg_root(cfg) -> Path:
    return Path(cfg.out_dir) / cfg.name / "checkpoints"


def test_crash_mid_write_keeps_previous_checkpoint(make_cfg, monkeypatch):
    cfg = make_cfg(max_steps=4, checkpoint_every=2, keep_last=1)  # keep_last=1: the old one goes only after the new one is in
    root = cfg_root(cfg)
    real_write = ckpt.write_training_state

    def crash_on_step_4(directory, state):
        if state["step"] == 4:
            (directory / ckpt.STATE_FILE).write_bytes(b"half a file")  # some bytes are out, then the "crash"
            raise OSError("disk full (simulated)")
        real_write(directory, state)

    monkeypatch.setattr(ckpt, "write_training_state", crash_on_step_4)
    with pytest.raises(OSError, match="simulated"):
        train(cfg, progress=False)
    assert _names(root) == ["step_000002"]  # no half checkpoint under a checkpoint name, no leftovers
    ckpt.verify_checkpoint(root / "step_000002")  # every file as recorded when it was written

    # A process killed mid-write leaves its temporary directory behind: never picked up, removed by the next save.
    shutil.copytree(root / "step_000002", root / ".tmp-step_000004-12345")
    (root / ".tmp-step_000004-12345" / ckpt.SUMMARY_FILE).unlink()
    assert [p.name for p in list_checkpoints(root)] == ["step_000002"]

    monkeypatch.setattr(ckpt, "write_training_state", real_write)
    result = train(cfg, progress=False)
    assert result.start_step == 2 and result.steps == 4  # the previous checkpoint loads
    assert _names(root) == ["step_000004"]


def test_keep_last_k(make_cfg):
    cfg = make_cfg(max_steps=4, checkpoint_every=1, keep_last=2)
    train(cfg, progress=False)
    assert _names(cfg_root(cfg)) == ["step_000003", "step_000004"]


def test_exact_resume(make_cfg, monkeypatch):
    """Straight through vs interrupted after the step-2 checkpoint (at step 4) and resumed: the same loss trace,
    bit for bit, and the same final weights. Gradient accumulation (two data streams) and a mid-run evaluation
    are part of the run."""
    over = dict(max_steps=4, grad_accum=2, eval_every=2, checkpoint_every=2)
    straight = Trainer(make_cfg(name="straight", **over), progress=False)
    straight.fit()

    real_step = trainer_module.Trainer.train_step

    def crash_at_4(self, step):
        if step == 4:
            raise KeyboardInterrupt("simulated interruption")
        return real_step(self, step)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", crash_at_4)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(name="resumed", **over), progress=False)
    run = straight.run_dir.parent / "resumed"
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == [1, 2, 3]
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)

    resumed = Trainer(make_cfg(name="resumed", **over), progress=False)
    assert resumed.step == 2
    result = resumed.fit()
    assert result.start_step == 2 and len(result.losses) == 2

    a, b = read_metrics(straight.run_dir / "metrics.csv"), read_metrics(run / "metrics.csv")
    assert [r["step"] for r in b] == [1, 2, 3, 4]  # the interrupted run's step-3 row was replaced, not repeated
    for key in ("train_loss", "lr", "grad_norm"):
        assert torch.equal(torch.tensor([r[key] for r in a]), torch.tensor([r[key] for r in b])), key
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b]
    final_a, final_b = load_file(straight.run_dir / "final" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
