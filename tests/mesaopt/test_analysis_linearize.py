"""Linearisation of softmax layers (analysis 4): recording, distillation, swapping, smoke run."""

import csv

import pytest
import torch

from mesanet.mesaopt.analysis.linearize import (
    LinearizeConfig,
    ZeroMixer,
    distil_linear,
    distillation_error,
    main,
    record_mixer_io,
    swap_mixers,
)
from mesanet.mesaopt.analysis.linearize import (
    test_loss as model_test_loss,
)
from mesanet.mesaopt.analysis.seq_training import tokens_of
from mesanet.mesaopt.data.dynamics import LDSConfig, generate_lds
from mesanet.mesaopt.layers.linear_self_attention import LinearSelfAttention
from mesanet.mesaopt.models import SeqModelConfig, SequenceModel

from tolerances import LINEARIZE_DISTIL_REL_ERR, LINEARIZE_RATIO_ATOL, MESAOPT_F64_RTOL

_TASK = LDSConfig(state_dim=4, seq_len=12)


def _hybrid(init_std=0.3, seed=0):
    """softmax -> linear model, LN on, no MLP; random weights large enough for both layers to matter."""
    cfg = SeqModelConfig(
        layers=["softmax", "linear"],
        input_dim=4,
        output_dim=4,
        embed_dim=8,
        num_heads=2,
        key_size=4,
        layer_norm=True,
        positional="sinusoidal",
        max_len=12,
        init_std=init_std,
    )
    torch.manual_seed(seed)
    return SequenceModel(cfg).eval()


def _tokens(num, seed):
    return tokens_of(generate_lds(_TASK, num, seed=seed).states, "unconstructed")


def test_record_mixer_io_matches_the_blocks():
    model = _hybrid().double()
    tok = _tokens(20, 1).double()
    rec = record_mixer_io(model, tok, [0, 1], chunk=7)  # several chunks
    with torch.no_grad():
        _, hidden = model(tok, return_hidden=True)
        for l in (0, 1):
            x, delta = rec[l]
            block = model.blocks[l]
            assert torch.allclose(x, block.norm1(hidden[l]), rtol=MESAOPT_F64_RTOL, atol=1e-14)
            assert torch.allclose(delta, block.mixer(x), rtol=MESAOPT_F64_RTOL, atol=1e-14)
            # the block is residual + mixer update (no MLP in this model)
            assert torch.allclose(hidden[l + 1], hidden[l] + delta, rtol=MESAOPT_F64_RTOL, atol=1e-14)
    assert all(not h for h in [m._forward_hooks for m in model.modules()])  # hooks removed


def test_distilling_a_linear_layer_is_near_exact_and_keeps_the_loss():
    model = _hybrid()
    rec = record_mixer_io(model, _tokens(256, 1), [1])[1]
    held = record_mixer_io(model, _tokens(128, 2), [1])[1]
    assert isinstance(model.blocks[1].mixer, LinearSelfAttention)
    student, history = distil_linear(*rec, 2, 4, steps=300, batch_size=32, lr=3e-2, init_std=0.3, seed=0)
    err = distillation_error(student, *held)
    assert history[0] > 0.5  # the student starts far from the teacher ...
    assert err < LINEARIZE_DISTIL_REL_ERR  # ... and ends (near) exact on held-out data
    base = float(model_test_loss(model, _TASK, "unconstructed", 256, 5).mean())
    swapped = float(model_test_loss(swap_mixers(model, {1: student}), _TASK, "unconstructed", 256, 5).mean())
    ablated = float(model_test_loss(swap_mixers(model, {1: ZeroMixer()}), _TASK, "unconstructed", 256, 5).mean())
    assert abs(swapped / base - 1) < LINEARIZE_RATIO_ATOL
    assert abs(ablated / base - 1) > 10 * LINEARIZE_RATIO_ATOL  # the layer matters: the ratio test can fail


def test_swap_mixers_copies_and_identity_swap_is_exact():
    model = _hybrid()
    original = model.blocks[1].mixer
    same = swap_mixers(model, {1: LinearSelfAttention(8, 2, 4)})
    same.blocks[1].mixer.load_state_dict(original.state_dict())
    assert model.blocks[1].mixer is original
    tok = _tokens(8, 3)
    with torch.no_grad():
        assert torch.equal(same(tok), model(tok))
    with pytest.raises(ValueError, match="layer indices"):
        swap_mixers(model, {2: ZeroMixer()})


def test_validation_errors():
    with pytest.raises(ValueError, match="seed"):
        LinearizeConfig(record_seed=1, heldout_seed=1)
    with pytest.raises(ValueError, match="max_ratio"):
        LinearizeConfig(max_ratio=0.5)
    with pytest.raises(ValueError, match="equal shape"):
        distil_linear(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), 1, 2)


def test_quick_smoke_run(tmp_path):
    assert main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    for name in (
        "linearize.csv",
        "linearize_curves.csv",
        "linearize_summary.md",
        "linearize_ratios.png",
        "linearize_curves.png",
        "config.yaml",
    ):
        assert (tmp_path / name).is_file(), name
    with open(tmp_path / "linearize.csv") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"layer 1", "layer 2", "all but first", "all"}
    assert rows["all but first"]["swapped_layers"] == "2" and rows["all"]["swapped_layers"] == "1+2"
    for r in rows.values():
        assert float(r["loss_ratio"]) > 0 and float(r["ablation_ratio"]) > 0
    assert float(rows["layer 1"]["distil_error_heldout"]) >= 0
    summary = (tmp_path / "linearize_summary.md").read_text()
    assert "PASS" in summary or "MISS" in summary
