"""Proposition 1: the linear-attention construction equals one explicit GD step (float64)."""

import pytest
import torch

from mesanet.mesaopt.analysis.one_step_gd import GDConstruction, one_step_gd_prediction, optimal_eta
from mesanet.mesaopt.data.dynamics import LDSConfig, constructed_tokens, generate_lds


def _explicit_loop(states: torch.Tensor, eta: float, phi0: torch.Tensor) -> torch.Tensor:
    """Reference: per sequence and prefix, W1 = phi0 - eta * grad L_t(phi0) by a Python loop."""
    b_size, t_len, n = states.shape
    out = torch.zeros_like(states)
    for b in range(b_size):
        for t in range(t_len):
            grad = torch.zeros(n, n, dtype=states.dtype)
            for tp in range(1, t + 1):
                x, y = states[b, tp - 1], states[b, tp]
                grad -= torch.outer(y - phi0 @ x, x)
            out[b, t] = (phi0 - eta * grad) @ states[b, t]
    return out


def test_construction_matches_one_gd_step_random_data():
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(3, 7, 4, generator=gen, dtype=torch.float64)
    eta = 0.37
    tokens = constructed_tokens(states)
    head = GDConstruction.build(4, eta)
    expected = _explicit_loop(states, eta, torch.zeros(4, 4, dtype=torch.float64))
    torch.testing.assert_close(one_step_gd_prediction(tokens, eta), expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(head.predict(tokens), expected, atol=1e-12, rtol=1e-12)
    out = head.forward(tokens)
    torch.testing.assert_close(out[..., 4:], tokens[..., 4:], atol=0, rtol=0)  # other blocks untouched


def test_construction_with_nonzero_phi0():
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64)
    phi0 = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    eta = -0.2
    tokens = constructed_tokens(states)
    tokens = torch.cat([states @ phi0.T, tokens[..., 3:]], dim=-1)  # e_t = [phi0 s_t, s_t, s_{t-1}]
    expected = _explicit_loop(states, eta, phi0)
    head = GDConstruction.build(3, eta, phi0=phi0)
    torch.testing.assert_close(head.predict(tokens), expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(one_step_gd_prediction(tokens, eta, phi0=phi0), expected, atol=1e-12, rtol=1e-12)


def test_weight_products_match_paper():
    n, eta = 2, 0.5
    head = GDConstruction.build(n, eta)
    kq, pv = head.kq_product, head.pv_product
    eye = torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(kq[2 * n :, n : 2 * n], eye)
    assert kq.abs().sum() == n
    torch.testing.assert_close(pv[:n, n : 2 * n], eta * eye)
    assert pv.abs().sum() == eta * n


def test_optimal_eta_is_the_least_squares_minimum():
    batch = generate_lds(LDSConfig(noise_std=0.01), batch_size=16, seed=3, dtype=torch.float64)
    tokens, targets = batch.constructed, batch.targets

    def loss(eta: float) -> float:
        pred = one_step_gd_prediction(tokens, eta)[:, :-1]
        return float(((pred - targets) ** 2).mean())

    eta = optimal_eta(tokens, targets)
    assert eta > 0
    assert loss(eta) < loss(0.0)
    assert loss(eta) <= min(loss(eta * 0.9), loss(eta * 1.1))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\[B, T, 3n\]"):
        one_step_gd_prediction(torch.zeros(2, 5, 4), 0.1)
    with pytest.raises(ValueError, match="eta"):
        GDConstruction.build(3, float("nan"))
    with pytest.raises(ValueError, match="phi0"):
        one_step_gd_prediction(torch.zeros(2, 5, 6), 0.1, phi0=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="targets"):
        optimal_eta(torch.randn(2, 5, 6), torch.randn(2, 6, 2))
