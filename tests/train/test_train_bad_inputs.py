"""Bad input gets a clear message before anything is written, and nothing already written is lost."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mesanet.train import CheckpointError, TrainConfig, Trainer, check_config, train
from mesanet.utils.config import ConfigError, from_dict

from train_helpers import flip_byte, tiny_config, write_nan_weights


def _snapshot(root: Path) -> dict:
    """Every file under ``root`` with its bytes (to prove nothing changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "over, message",
    [
        (
            dict(batch_size=6, grad_accum=4),
            r"batch_size \(6, global sequences per step\) must be divisible by world_size \(1\) x grad_accum \(4\) = 4",
        ),
        (dict(grad_accum=0), r"grad_accum: expected an integer >= 1, got 0"),
        (dict(name="a/b"), r"name: expected a directory name"),
        (dict(optim=dict(min_lr_ratio=1.5)), r"optim.min_lr_ratio: expected 0 <= min_lr_ratio <= 1, got 1.5"),
        (dict(optim=dict(lr=0.0)), r"optim.lr: expected 0 < lr <= 1, got 0.0"),
        (dict(model=dict(preset="huge")), r"model: unknown preset 'huge'"),
        (dict(model=dict(overrides=dict(vocab_size=7))), r"model.overrides.vocab_size \(7\) disagrees with the tokenizer"),
        (dict(model=dict(overrides=dict(hiden_size=7))), r"model: MesaNetConfig: unknown keys \['hiden_size'\]"),
    ],
)
def test_bad_config_writes_nothing(make_cfg, over, message):
    cfg = make_cfg(**over)
    with pytest.raises(ValueError, match=message):
        train(cfg, progress=False)
    assert not (Path(cfg.out_dir) / cfg.name).exists()


def test_divisibility_with_world_size(make_cfg):
    with pytest.raises(ValueError, match=r"must be divisible by world_size \(3\) x grad_accum \(1\) = 3"):
        check_config(make_cfg(batch_size=4), world_size=3)


def test_unknown_config_key():
    with pytest.raises(ConfigError, match=r"unknown keys \['lr'\]"):
        from_dict(TrainConfig, {"lr": 1e-3})


@pytest.fixture(scope="module")
def finished_template(tmp_path_factory, data_cache):
    """A finished 2-step run with checkpoints at steps 1 and 2 (trained once per module)."""
    return train(
        tiny_config(tmp_path_factory.mktemp("finished"), data_cache, max_steps=2, checkpoint_every=1), progress=False
    ).run_dir


@pytest.fixture
def finished(finished_template, make_cfg):
    """A copy of the finished run where ``make_cfg()`` looks for it, and a snapshot of its files."""
    cfg = make_cfg(max_steps=2, checkpoint_every=1)
    run = Path(cfg.out_dir) / cfg.name
    shutil.copytree(finished_template, run)
    return cfg, run, _snapshot(run)


def test_resume_false_never_overwrites(finished, make_cfg):
    cfg, run, before = finished
    with pytest.raises(ValueError, match=r"already holds results .* resume is false.*nothing was overwritten"):
        train(make_cfg(max_steps=2, checkpoint_every=1, resume=False), progress=False)
    assert _snapshot(run) == before


def test_checkpoint_of_another_model_type(finished, make_cfg):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg, run, _ = finished
    foreign = run / "checkpoints" / "step_000003"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8)).save_pretrained(foreign)
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match=r"step_000003 holds a model of type 'gpt2'; this run trains a 'mesanet' model"):
        Trainer(make_cfg(max_steps=4, checkpoint_every=2), progress=False)
    assert _snapshot(run) == before


def test_checkpoint_of_another_mesanet_shape(finished, make_cfg):
    cfg, run, before = finished
    with pytest.raises(CheckpointError, match=r"different model \(.*hidden_size: checkpoint 64, config 32"):
        Trainer(make_cfg(max_steps=4, model=dict(overrides=dict(hidden_size=32))), progress=False)
    with pytest.raises(
        CheckpointError,
        match=r"config changed in fields that decide the training trajectory \(optim.lr: checkpoint 0.003, now 0.001\)",
    ):
        Trainer(make_cfg(max_steps=4, optim=dict(lr=1e-3)), progress=False)
    assert _snapshot(run) == before


@pytest.mark.parametrize(
    "damage, message",
    [
        ("flip", r"corrupt: model.safetensors does not match its recorded size / SHA-256"),
        ("truncate", r"corrupt: trainer_state.pt does not match its recorded size / SHA-256"),
        ("no-summary", r"incomplete or corrupt: trainer_state.json is missing"),
        ("bad-summary", r"corrupt: trainer_state.json is unreadable"),
        ("no-state", r"corrupt: trainer_state.pt is missing"),
    ],
)
def test_corrupt_checkpoint(finished, make_cfg, damage, message):
    cfg, run, _ = finished
    ck = run / "checkpoints" / "step_000002"
    if damage == "flip":
        data = bytearray((ck / "model.safetensors").read_bytes())
        data[-10] ^= 0xFF
        (ck / "model.safetensors").write_bytes(bytes(data))
    elif damage == "truncate":
        data = (ck / "trainer_state.pt").read_bytes()
        (ck / "trainer_state.pt").write_bytes(data[: len(data) // 2])
    elif damage == "no-summary":
        os.remove(ck / "trainer_state.json")
    elif damage == "bad-summary":
        (ck / "trainer_state.json").write_text("{not json")
    else:
        os.remove(ck / "trainer_state.pt")
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match=message) as info:
        Trainer(make_cfg(max_steps=4, checkpoint_every=2), progress=False)
    assert "to resume from the previous checkpoint (step_000001) instead, move step_000002 out of" in str(info.value)
    assert _snapshot(run) == before


def test_resume_refuses_non_finite_weights_and_names_a_checked_older_checkpoint(finished, make_cfg):
    cfg, run, _ = finished
    write_nan_weights(run / "checkpoints" / "step_000002")
    before = _snapshot(run)
    with pytest.raises(
        CheckpointError,
        match=r"step_000002 holds a non-finite parameter .*; step_000001 was checked and is "
        r"intact: to resume from the previous checkpoint \(step_000001\) instead, move "
        r"step_000002 out of",
    ):
        Trainer(make_cfg(max_steps=4, checkpoint_every=2), progress=False)
    assert _snapshot(run) == before


def test_when_both_newest_checkpoints_are_damaged_none_is_suggested(finished, make_cfg):
    cfg, run, _ = finished
    for step in ("step_000001", "step_000002"):
        flip_byte(run / "checkpoints" / step / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        Trainer(make_cfg(max_steps=4, checkpoint_every=2), progress=False)
    message = str(info.value)
    assert (
        f"no older checkpoint is usable either (checkpoint {run / 'checkpoints' / 'step_000001'} is corrupt: "
        "model.safetensors does not match its recorded size / SHA-256)" in message
    )
    assert "to resume from" not in message


def test_resume_of_a_finished_run_is_a_no_op(finished, make_cfg):
    cfg, run, before = finished
    result = train(make_cfg(max_steps=2, checkpoint_every=1), progress=False)
    assert result.steps == 2 and result.start_step == 2 and result.losses == []
    assert result.final_train_loss is not None
    # final/ is rewritten identically and the metrics are kept; config.yaml records the new out_dir (the run was
    # copied here), TensorBoard opens a new event file
    kept = lambda files: {k: v for k, v in files.items() if not k.startswith("tb/") and k != "config.yaml"}  # noqa: E731
    assert kept(_snapshot(run)) == kept(before)
