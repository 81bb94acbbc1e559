"""The single Mesa layer's ridge construction (it computes ridge exactly, in float32 with the toolkit's CG
settings), the ridge-equivalent lam, the 4-slot token format and the probes' activation-clip statistics."""

from __future__ import annotations

import math

import pytest
import torch

from mesanet.mesaopt.analysis.compressed import ridge_loss
from mesanet.mesaopt.analysis.probes import activation_stats
from mesanet.mesaopt.analysis.ridge_construction import (
    log_golden_search,
    ridge_equivalent_lambda,
    set_ridge_construction,
)
from mesanet.mesaopt.analysis.seq_training import (
    SeqTrainConfig,
    build_model,
    per_position_loss,
    tokens_of,
    train_sequence_model,
)
from mesanet.mesaopt.data.dynamics import LDSConfig, generate_lds
from mesanet.mesaopt.models import SeqModelConfig
from mesanet.ops import SolverSettings

from tolerances import MESA_RIDGE_CONSTRUCTION_F32_RTOL, RIDGE_EQUIVALENT_LAM_RTOL

TASK = LDSConfig(state_dim=4, seq_len=16, noise_std=0.05)
N = TASK.state_dim


def _single(kind="mesa", slots=3, key_size=6, layers=None):
    return SeqModelConfig(
        layers=layers or [kind], input_dim=slots * N, output_dim=N, num_heads=2, key_size=key_size, activation_clip=4.0
    )


def _curve(model, tokens="constructed", num=256, dtype=torch.float32):
    return per_position_loss(lambda x: model.to(dtype)(x.to(dtype)), TASK, num_sequences=num, seed=3, tokens=tokens)


@pytest.mark.parametrize("kind, tokens", [("mesa", "constructed"), ("sherman_morrison", "constructed"), ("mesa", "constructed4")])
def test_construction_computes_ridge_in_float32(kind, tokens):
    lam = 40.0
    slots = 4 if tokens == "constructed4" else 3
    model = set_ridge_construction(build_model(_single(kind, slots)), lam)
    ridge = ridge_loss(generate_lds(TASK, 256, seed=3, dtype=torch.float64).states, lam)
    with torch.no_grad():
        curve = _curve(model, tokens)
    rel = ((curve - ridge).abs() / ridge).max()
    assert float(rel) <= MESA_RIDGE_CONSTRUCTION_F32_RTOL
    # the lam convention matters: the same weights at lam / 10 give a clearly different curve
    with torch.no_grad():
        other = _curve(set_ridge_construction(build_model(_single(kind, slots)), lam / 10), tokens)
    assert float(((other - ridge).abs() / ridge).max()) > 100 * MESA_RIDGE_CONSTRUCTION_F32_RTOL


def test_construction_check_detects_an_inexact_solve():
    lam = 40.0
    model = set_ridge_construction(build_model(_single()), lam)
    model.blocks[0].mixer.solver = SolverSettings(max_iter=1, tol=0.0)  # one CG step cannot solve a 4-dim system
    ridge = ridge_loss(generate_lds(TASK, 256, seed=3, dtype=torch.float64).states, lam)
    with torch.no_grad():
        curve = _curve(model)
    assert float(((curve - ridge).abs() / ridge).max()) > 100 * MESA_RIDGE_CONSTRUCTION_F32_RTOL


def test_construction_rejects_other_models():
    with pytest.raises(ValueError, match="one 'mesa'"):
        set_ridge_construction(build_model(_single(layers=["mesa", "mesa"])), 1.0)
    with pytest.raises(ValueError, match="one 'mesa'"):
        set_ridge_construction(build_model(_single("mesa_forget")), 1.0)
    with pytest.raises(ValueError, match="key_size >= 4"):
        set_ridge_construction(build_model(_single(key_size=3)), 1.0)
    with pytest.raises(ValueError, match="lam"):
        set_ridge_construction(build_model(_single()), 0.0)


def test_ridge_equivalent_lambda_recovers_the_lambda_of_a_ridge_curve():
    states = generate_lds(TASK, 256, seed=4, dtype=torch.float64).states
    for lam in (0.5, 20.0, 3e3):
        found, gap = ridge_equivalent_lambda(ridge_loss(states, lam), states)
        assert found == pytest.approx(lam, rel=RIDGE_EQUIVALENT_LAM_RTOL)
        assert gap < 1e-3
    # a curve that no lam produces leaves a gap: a constant 10 (ridge never exceeds ~1 here)
    _, gap = ridge_equivalent_lambda(torch.full((TASK.seq_len - 1,), 10.0, dtype=torch.float64), states)
    assert gap > 2.0
    with pytest.raises(ValueError, match="curve"):
        ridge_equivalent_lambda(torch.ones(3), states)


def test_ridge_equivalent_lambda_of_the_constructed_layer_is_its_lambda():
    states = generate_lds(TASK, 256, seed=3, dtype=torch.float64).states
    with torch.no_grad():
        curve = _curve(set_ridge_construction(build_model(_single()), 7.0))
    found, _ = ridge_equivalent_lambda(curve, states)
    assert found == pytest.approx(7.0, rel=0.02)


def test_log_golden_search_finds_a_parabola_minimum():
    x, f = log_golden_search(lambda x: (x - 1.234) ** 2 + 0.5, -3.0, 4.0, 8, 30)
    assert x == pytest.approx(1.234, abs=1e-4) and f == pytest.approx(0.5, abs=1e-8)
    with pytest.raises(ValueError, match="grid"):
        log_golden_search(lambda x: x, 0.0, 1.0, 2, 3)


def test_constructed4_tokens_train_and_check_dims():
    states = generate_lds(TASK, 2, seed=0).states
    tok = tokens_of(states, "constructed4")
    assert tok.shape == (2, TASK.seq_len, 4 * N)
    assert torch.equal(tok[..., N : 2 * N], tok[..., 2 * N : 3 * N])
    cfg = SeqTrainConfig(steps=2, batch_size=4, warmup_steps=0, tokens="constructed4", task=TASK)
    model, result = train_sequence_model(_single(slots=4), cfg, progress=False)
    assert len(result.losses) == 2 and all(math.isfinite(v) for v in result.losses)
    with pytest.raises(ValueError, match="input_dim = 16"):
        train_sequence_model(_single(slots=3), cfg, progress=False)
    with pytest.raises(ValueError, match="constructed4"):
        SeqTrainConfig(steps=1, tokens="constructed5")


def test_activation_stats_counts_entries_at_the_clip():
    hidden = torch.tensor([[[0.5, -1.0]], [[2.0, -2.0]], [[0.1, 2.0]]])  # 3 layers
    stats = activation_stats(hidden, 2.0)
    assert stats["clip"] == 2.0
    assert stats["max_abs"] == pytest.approx([1.0, 2.0, 2.0])
    assert stats["clipped"] == pytest.approx([0.0, 1.0, 0.5])
    assert activation_stats(hidden, None)["clipped"] == [0.0, 0.0, 0.0]
