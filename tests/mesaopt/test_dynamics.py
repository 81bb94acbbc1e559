"""LDS generator: orthogonal W*, exact recursion without noise, seeding, token layouts."""

import pytest
import torch

from mesanet.mesaopt.data.dynamics import LDSConfig, constructed_tokens, generate_lds


def test_w_star_orthogonal_and_redrawn_per_sequence():
    batch = generate_lds(LDSConfig(), batch_size=8, seed=0, dtype=torch.float64)
    assert batch.states.shape == (8, 50, 10) and batch.w_star.shape == (8, 10, 10)
    eye = torch.eye(10, dtype=torch.float64).expand(8, 10, 10)
    torch.testing.assert_close(batch.w_star @ batch.w_star.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    assert not torch.allclose(batch.w_star[0], batch.w_star[1])


def test_zero_noise_follows_recursion_exactly():
    batch = generate_lds(LDSConfig(noise_std=0.0), batch_size=4, seed=1, dtype=torch.float64)
    s = batch.states
    pred = torch.einsum("bij,btj->bti", batch.w_star, s[:, :-1])
    torch.testing.assert_close(s[:, 1:], pred, atol=1e-12, rtol=0)
    assert s[:, 0].abs().max() <= 1.0  # U(-1, 1) initial state
    # orthogonal dynamics preserve the norm
    torch.testing.assert_close(s.norm(dim=-1), s[:, :1].norm(dim=-1).expand(-1, 50), atol=1e-10, rtol=0)


def test_noise_and_seeding():
    cfg = LDSConfig(noise_std=0.1)
    a, b, c = (generate_lds(cfg, 3, seed) for seed in (5, 5, 6))
    assert torch.equal(a.states, b.states) and torch.equal(a.w_star, b.w_star)
    assert not torch.equal(a.states, c.states)
    resid = a.states[:, 1:] - torch.einsum("bij,btj->bti", a.w_star, a.states[:, :-1])
    assert 0.05 < resid.std().item() < 0.2


def test_token_layouts():
    batch = generate_lds(LDSConfig(state_dim=3, seq_len=5), batch_size=2, seed=0)
    tok = batch.constructed
    assert tok.shape == (2, 5, 9)
    assert torch.equal(tok[..., :3], torch.zeros(2, 5, 3))
    assert torch.equal(tok[..., 3:6], batch.states)
    assert torch.equal(tok[:, 1:, 6:], batch.states[:, :-1]) and torch.equal(tok[:, 0, 6:], torch.zeros(2, 3))
    assert torch.equal(batch.unconstructed, batch.states)
    assert torch.equal(batch.targets, batch.states[:, 1:])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"state_dim": 0}, "state_dim"),
        ({"seq_len": 1}, "seq_len"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"init": "laplace"}, "init"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LDSConfig(**kwargs)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        generate_lds(LDSConfig(), batch_size=0, seed=0)
    with pytest.raises(ValueError, match=r"\[B, T, n_s\]"):
        constructed_tokens(torch.zeros(4, 10))
