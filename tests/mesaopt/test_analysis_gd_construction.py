"""Analysis "gd-construction": construction tuning, the construction inside the model classes, product similarity
metrics on cases with known answers, and a smoke run of ``main(["--quick", ...])``."""

from __future__ import annotations

import csv

import pytest
import torch

from mesanet.mesaopt.analysis.gd_construction import (
    GDConstructionConfig,
    balance_heads,
    block_mass_fraction,
    construction_as_layer,
    effective_tensor,
    main,
    product_similarity,
    tune_construction,
)
from mesanet.mesaopt.analysis.one_step_gd import GDConstruction, one_step_gd_prediction, optimal_eta
from mesanet.mesaopt.analysis.seq_training import per_position_loss
from mesanet.mesaopt.data.dynamics import LDSConfig, constructed_tokens, generate_lds
from mesanet.mesaopt.models import SeqModelConfig, SequenceModel
from mesanet.ops.linear_attention import linear_attention_from_products

from tolerances import MESAOPT_F64_RTOL


def _prop1_tokens(states: torch.Tensor, phi0: torch.Tensor) -> torch.Tensor:
    """Proposition-1 tokens ``[Phi0 s_t, s_t, s_{t-1}]``."""
    tok = constructed_tokens(states)
    n = states.shape[-1]
    return torch.cat([states @ phi0.T, tok[..., n:]], dim=-1)


def test_construction_in_linear_self_attention_and_sequence_model_float64():
    gen = torch.Generator().manual_seed(0)
    n = 4
    states = torch.randn(3, 9, n, generator=gen, dtype=torch.float64)
    phi0 = torch.randn(n, n, generator=gen, dtype=torch.float64)
    cons = GDConstruction.build(n, 0.23, phi0)
    tokens = _prop1_tokens(states, phi0)
    layer = construction_as_layer(cons)
    out = tokens + layer(tokens)
    torch.testing.assert_close(out, cons.forward(tokens), rtol=MESAOPT_F64_RTOL, atol=0)
    torch.testing.assert_close(out[..., :n], one_step_gd_prediction(tokens, 0.23, phi0), rtol=MESAOPT_F64_RTOL, atol=1e-14)
    # the same weights inside the zoo's model class (no clip): prediction = first block of the output
    model = SequenceModel(SeqModelConfig(layers=["linear"], input_dim=3 * n, output_dim=n, num_heads=1, key_size=n)).double()
    zero_tokens = constructed_tokens(states)  # [0, s_t, s_{t-1}]: Phi0 = 0 construction
    cons0 = GDConstruction.build(n, 0.23)
    model.blocks[0].mixer.load_state_dict(construction_as_layer(cons0).state_dict())
    torch.testing.assert_close(model(zero_tokens), one_step_gd_prediction(zero_tokens, 0.23), rtol=MESAOPT_F64_RTOL, atol=1e-14)


def test_construction_per_step_loss_equals_direct_computation():
    task = LDSConfig(state_dim=5, seq_len=14)
    eta = 0.07
    curve = per_position_loss(
        lambda tok: one_step_gd_prediction(tok.double(), eta), task, num_sequences=40, seed=3, tokens="constructed", chunk=16
    )
    s = generate_lds(task, 40, seed=3).states.double()
    pred = one_step_gd_prediction(constructed_tokens(s), eta)[:, :-1]
    direct = 0.5 * (pred - s[:, 1:]).square().sum(-1).mean(0)
    assert curve.shape == (task.seq_len - 1,)
    torch.testing.assert_close(curve, direct, rtol=MESAOPT_F64_RTOL, atol=0)


def test_tune_construction_recovers_eta_and_phi0():
    gen = torch.Generator().manual_seed(1)
    # s_{t+1} = 0.6 s_t + noise: the best Phi0 = cI is c ~ 0.6 and it beats Phi0 = 0 by far
    steps = [torch.randn(64, 3, generator=gen, dtype=torch.float64)]
    for _ in range(11):
        steps.append(0.6 * steps[-1] + 0.3 * torch.randn(64, 3, generator=gen, dtype=torch.float64))
    states = torch.stack(steps, dim=1)
    tuned = tune_construction(states, tune_phi0=True, phi0_range=1.0)
    tokens, targets = constructed_tokens(states), states[:, 1:]
    assert tuned["eta0"] == pytest.approx(optimal_eta(tokens, targets), rel=1e-12)
    assert abs(tuned["c"] - 0.6) < 0.05
    assert tuned["loss_c"] < 0.7 * tuned["loss0"]  # noise floor 1/2 * 3 * 0.09 = 0.135 vs ~0.22 from Phi0 = 0
    # the golden-section optimum is no worse than its neighbours (closed-form eta at each c)
    eye = torch.eye(3, dtype=torch.float64)
    for c in (tuned["c"] - 0.02, tuned["c"] + 0.02, 0.0):
        eta = optimal_eta(tokens, targets, c * eye)
        pred = one_step_gd_prediction(tokens, eta, c * eye)[:, :-1]
        assert tuned["loss_c"] <= float(0.5 * (pred - targets).square().sum(-1).mean()) + 1e-12
    off = tune_construction(states, tune_phi0=False)
    assert off["c"] == 0.0 and off["loss_c"] == off["loss0"]


def test_product_similarity_of_the_construction_split_over_gauged_heads():
    n, eta = 3, 0.4
    cons = GDConstruction.build(n, eta)
    kq, pv = cons.kq_product, cons.pv_product
    # two heads sharing the construction with arbitrary gauges a (PV a, KQ / a) and weights 0.3 / 0.7
    kq_h = torch.stack([kq / 2.0, -kq * 5.0])
    pv_h = torch.stack([pv * 0.3 * 2.0, -pv * 0.7 / 5.0])
    sim = product_similarity(kq_h, pv_h, cons)
    total = sim["rows"][-1]
    assert total["head"] == "sum"
    assert total["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert total["implied_eta"] == pytest.approx(eta, rel=1e-12)
    assert sim["rows"][0]["implied_eta"] == pytest.approx(0.3 * eta, rel=1e-12)
    assert sim["rows"][1]["implied_eta"] == pytest.approx(0.7 * eta, rel=1e-12)
    assert total["kq_mass"] == pytest.approx(1.0) and total["pv_mass"] == pytest.approx(1.0)
    # moving the key block (s_{t-1} -> s_t keys) gives an orthogonal function: cosine 0, no mass in the blocks
    wrong_kq = torch.zeros_like(kq)
    wrong_kq[n : 2 * n, n : 2 * n] = torch.eye(n, dtype=kq.dtype)
    bad = product_similarity(wrong_kq[None], pv[None], cons)["rows"][-1]
    assert abs(bad["cosine"]) < 1e-12 and bad["kq_mass"] == pytest.approx(0.0)


def test_balance_heads_keeps_the_function_and_equalises_norms():
    gen = torch.Generator().manual_seed(2)
    kq = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64) * torch.tensor([10.0, 0.1, 1.0])[:, None, None]
    pv = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)
    ref = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    kq_b, pv_b = balance_heads(kq, pv, ref)
    x = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        linear_attention_from_products(x, kq_b, pv_b),
        linear_attention_from_products(x, kq, pv),
        rtol=MESAOPT_F64_RTOL,
        atol=1e-14,
    )
    torch.testing.assert_close(kq_b.flatten(1).norm(dim=1), pv_b.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
    assert bool(((kq_b * ref).sum((-1, -2)) >= 0).all())


def test_effective_tensor_and_block_mass_known_values():
    kq = torch.zeros(1, 2, 2, dtype=torch.float64)
    pv = torch.zeros(1, 2, 2, dtype=torch.float64)
    kq[0, 1, 0], pv[0, 0, 1] = 2.0, 3.0
    e = effective_tensor(kq, pv, torch.arange(2), torch.arange(2))
    # E[i,j,k,l] = 1/2 (pv[i,j] kq[k,l] + pv[i,k] kq[j,l]): non-zero only at (0,1,1,0) = 6
    assert float(e[0, 1, 1, 0]) == 6.0 and float(e.abs().sum()) == 6.0
    m = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    mask = torch.tensor([[True, False], [False, False]])
    assert block_mass_fraction(m, mask) == pytest.approx(9.0 / 25.0)


def test_config_validation():
    with pytest.raises(ValueError, match="one 'linear' layer"):
        GDConstructionConfig(model="mesa-1")
    with pytest.raises(ValueError, match="expected one of"):
        GDConstructionConfig(model="no-such-model")
    with pytest.raises(ValueError, match="tune_sequences"):
        GDConstructionConfig(tune_sequences=0)


def test_quick_run_writes_outputs(tmp_path):
    torch.set_num_threads(1)
    assert main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    for name in (
        "per_step_loss.csv",
        "per_step_loss.png",
        "products.png",
        "similarity.csv",
        "summary.csv",
        "summary.md",
        "config.yaml",
    ):
        assert (tmp_path / name).is_file(), name
    with open(tmp_path / "per_step_loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 49 and {"t", "trained", "gd_phi0_zero"} <= set(rows[0])
    assert all(float(r["trained"]) > 0 and float(r["gd_phi0_zero"]) > 0 for r in rows)
    md = (tmp_path / "summary.md").read_text()
    assert ("PASS" in md) != ("MISS" in md)
