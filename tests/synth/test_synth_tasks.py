"""Synth settings and models: per-task overrides, held-out test data, the compression auto-encoder, warm-up."""

from __future__ import annotations

import math

import pytest
import torch

from mesanet.synth import SynthConfig, build_settings, check_config
from mesanet.synth.cells import optim_config
from mesanet.synth.models import CompressionAutoEncoder, backbone_config, build_model, loss_on
from mesanet.synth.settings import load_data


def _cfg(**kw):
    base = dict(
        hidden_size=16, num_heads=2, head_dim=8, num_layers=2, solver_training=dict(max_iter=3), solver_inference=dict(max_iter=3)
    )
    return check_config(SynthConfig(**{**base, **kw}))


def test_overrides_and_budget():
    cfg = _cfg(
        tasks=["in_context_recall", "memorization", "regression"],
        steps=7,
        batch_size=4,
        num_train=100,
        task_sizes={
            "in_context_recall": {"params": {"seq_len": 32}, "batch_size": 8},
            "regression": {"steps": 3, "num_test": 9, "params": {"dim": 2, "num_pairs": 6}},
        },
    )
    cr, mem, reg = build_settings(cfg)
    assert cr.config.seq_len == 32 and cr.batch_size == 8 and cr.steps == 7 and cr.num_train == 100
    assert mem.num_train == 100 and mem.batch_size == 4  # memorization's own 256 capped at 100
    assert reg.steps == 3 and reg.num_test == 9 and reg.in_dim == 3
    by_epochs = build_settings(_cfg(tasks=["memorization"], epochs=2.0, batch_size=32))[0]
    assert by_epochs.steps == math.ceil(2.0 * 256 / 32)


def test_mad_grid_variants_keep_their_field():
    cfg = _cfg(
        tasks=["in_context_recall"], mad_grid=True, num_train=50, task_sizes={"in_context_recall": {"params": {"seq_len": 32}}}
    )
    settings = {s.name: s for s in build_settings(cfg)}
    assert len(settings) == 11
    assert settings["baseline"].config.seq_len == 32 and settings["vocab_size=64"].config.seq_len == 32
    assert settings["seq_len=256"].config.seq_len == 256  # the varied field wins over the override
    assert settings["num_train=800"].num_train == 50


@pytest.mark.parametrize("task", ["mqar", "in_context_recall", "regression"])
def test_test_set_is_held_out(task):
    cfg = _cfg(
        tasks=[task],
        num_train=40,
        num_test=20,
        mqar_seq_lens=[16],
        mqar_num_pairs=[2],
        mqar_vocab_size=32,
        task_sizes={"in_context_recall": {"params": {"seq_len": 16}}},
    )
    setting = build_settings(cfg)[0]
    train, test = load_data(setting, cfg.data_seed)
    a, b = (train.tokens, test.tokens) if task == "regression" else (train.inputs, test.inputs)
    assert a.shape[0] == 40 and b.shape[0] == 20
    assert not torch.equal(a[:20], b)  # drawn after the train set from the same stream, not a copy of its start
    again = load_data.__wrapped__(setting, cfg.data_seed)
    assert torch.equal(again[1].inputs if task != "regression" else again[1].tokens, b)  # deterministic


def test_compression_autoencoder_reads_only_the_pooled_state():
    cfg = _cfg(tasks=["compression"], task_sizes={"compression": {"params": {"seq_len": 8}}})
    setting = build_settings(cfg)[0]
    torch.manual_seed(0)
    model = build_model(cfg, setting, "gated_deltanet")
    assert isinstance(model, CompressionAutoEncoder)
    x = torch.randint(0, 15, (3, 8))
    logits = model(x)
    assert logits.shape == (3, 8, 16)
    loss = loss_on(model, setting, (x, x))
    loss.backward()
    assert model.encoder.layers[0].mixer.o_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="length 8"):
        model(torch.randint(0, 15, (3, 9)))


def test_hybrid_backbone_and_warmup():
    cfg = _cfg(num_layers=4, mixers=["hawk+mesa"])
    assert backbone_config(cfg, "hawk+mesa", 10).mixer_types == ["hawk", "mesa", "hawk", "mesa"]
    opt = optim_config(_cfg(warmup_steps=750, max_warmup_frac=0.1, min_lr=1e-5), 1e-3, 0.1, 500)
    assert opt.warmup_steps == 50 and opt.min_lr_ratio == pytest.approx(1e-2) and opt.weight_decay == 0.1


def test_solver_settings_reach_the_backbone():
    cfg = _cfg(solver_training=dict(max_iter=5, tol=0.0), solver_inference=dict(preconditioner="jacobi"))
    config = backbone_config(cfg, "hawk+mesa", 10)
    assert config.solver_training["max_iter"] == 5 and config.solver_training["tol"] == 0.0
    assert config.solver_inference["preconditioner"] == "jacobi" and config.solver_inference["max_iter"] == 30
