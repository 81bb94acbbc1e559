"""No silent NaN: optimizer numbers are checked at config time, weights and optimizer state after every update
and before every save; the error names the newest checkpoint verified on disk and leaves no gradient behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mesanet.train import NonFiniteError, Trainer, check_config, list_checkpoints, train
from mesanet.train.guards import all_finite, checkpoint_problem, last_good_checkpoint
from mesanet.train.optim import clip_norm
from mesanet.utils.config import load

from train_helpers import write_nan_weights

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "optim, message",
    [
        (dict(lr=INF), r"optim.lr: expected a finite number, got inf"),
        (dict(lr=NAN), r"optim.lr: expected a finite number, got nan"),
        (dict(weight_decay=NAN), r"optim.weight_decay: expected a finite number, got nan"),
        (dict(lr=1e39), r"optim.lr: expected 0 < lr <= 1, got 1e\+39"),  # finite, but the update overflows float32
        (dict(weight_decay=-0.1), r"optim.weight_decay: expected >= 0 with lr x weight_decay < 1 .*got -0.1"),
        (dict(lr=0.5, weight_decay=2.0), r"optim.weight_decay: .*got 2.0 \(lr 0.5\)"),
        (dict(eps=INF), r"optim.eps: expected a finite number, got inf"),
        (dict(eps=0.0), r"optim.eps: expected 0 < eps < 1, got 0.0"),
        (dict(eps=10.0), r"optim.eps: expected 0 < eps < 1, got 10.0"),  # learns nothing
        (dict(grad_clip=NAN), r"optim.grad_clip: expected a finite number > 0, or null for no clipping, got nan"),
        (dict(grad_clip=0.0), r"optim.grad_clip: expected a finite number > 0, or null for no clipping, got 0.0"),
        (dict(grad_clip=INF), r"optim.grad_clip: expected a finite number > 0, or null for no clipping, got inf"),
        (dict(betas=[NAN, 0.9]), r"optim.betas: expected two finite values in \[0, 1\), got \(nan, 0.9\)"),
        (dict(betas=[0.9, 1.0]), r"optim.betas: expected two finite values in \[0, 1\)"),
        (dict(min_lr_ratio=NAN), r"optim.min_lr_ratio: expected a finite number, got nan"),
        (dict(warmup_steps=-1), r"optim.warmup_steps: expected an integer >= 0, got -1"),
    ],
)
def test_optimizer_numbers_are_checked_at_config_time(make_cfg, optim, message):
    cfg = make_cfg(optim=optim)
    with pytest.raises(ValueError, match=message):
        train(cfg, progress=False)
    assert not (Path(cfg.out_dir) / cfg.name).exists()


def test_no_clipping_is_explicit(make_cfg, tmp_path):
    check_config(make_cfg(optim=dict(grad_clip=None)))
    assert clip_norm(None) == INF and clip_norm(0.5) == 0.5
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  grad_clip: null\n")
    assert load(type(make_cfg()), path, ["optim.lr=inf"]).optim.grad_clip is None  # "inf" reads as a float...
    with pytest.raises(ValueError, match="optim.lr: expected a finite number, got inf"):
        check_config(load(type(make_cfg()), path, ["optim.lr=inf"]))  # ... and is rejected


def test_weights_made_non_finite_by_the_update_are_caught_at_that_step(make_cfg):
    trainer = Trainer(make_cfg(max_steps=3, checkpoint_every=1), progress=False)
    step = trainer.optimizer.step

    def overflowing_step(*args, **kwargs):  # finite loss and gradients, but the update ends in inf
        out = step(*args, **kwargs)
        for state in trainer.optimizer.state.values():
            state["exp_avg_sq"].fill_(INF)
        return out

    trainer.optimizer.step = overflowing_step
    with pytest.raises(
        NonFiniteError,
        match=r"non-finite optimizer state \(NaN/inf\) after the optimizer step of step 1: "
        r"the weights in memory are unusable and were not saved; no checkpoint with "
        r"verified finite weights exists",
    ):
        trainer.fit()
    assert list_checkpoints(trainer.ckpt_root) == [] and not (trainer.run_dir / "final").exists()
    assert all(p.grad is None for p in trainer.model.parameters())


def test_the_error_names_the_newest_checkpoint_verified_on_disk(make_cfg):
    trainer = Trainer(make_cfg(max_steps=5, checkpoint_every=1), progress=False)
    step = trainer.optimizer.step

    def poisoned_step(*args, **kwargs):
        out = step(*args, **kwargs)
        if trainer.step == 2:  # during step 3: NaN weights, and the step-2 checkpoint was damaged meanwhile
            with torch.no_grad():
                trainer.model.model.layers[0].mlp.up.weight[0, 0] = NAN
            weights = trainer.ckpt_root / "step_000002" / "model.safetensors"
            data = bytearray(weights.read_bytes())
            data[-10] ^= 0xFF
            weights.write_bytes(bytes(data))
        return out

    trainer.optimizer.step = poisoned_step
    with pytest.raises(
        NonFiniteError,
        match=r"non-finite parameter model.layers.0.mlp.up.weight \(NaN/inf\) after the "
        r"optimizer step of step 3",
    ) as info:
        trainer.fit()
    assert info.value.last_good == trainer.ckpt_root / "step_000001"  # step_000002 was checked and failed
    assert "the last checkpoint with verified finite weights is " + str(trainer.ckpt_root / "step_000001") in str(info.value)
    assert [p.name for p in list_checkpoints(trainer.ckpt_root)] == ["step_000001", "step_000002"]  # no step 3 saved


def test_non_finite_checkpoints_are_never_named_good(make_cfg):
    cfg = make_cfg(max_steps=2, checkpoint_every=1)
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    newest = trainer.ckpt_root / "step_000002"
    write_nan_weights(newest)  # what an older version could write: recorded hashes fine, weights NaN
    assert checkpoint_problem(newest, trainer.model_config) == f"checkpoint {newest} holds non-finite weights"
    assert last_good_checkpoint(trainer.ckpt_root, trainer.model_config) == trainer.ckpt_root / "step_000001"
    assert all_finite([torch.ones(3)]) and not all_finite([torch.ones(3), torch.tensor([INF])])
