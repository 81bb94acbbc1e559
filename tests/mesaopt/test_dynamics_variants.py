"""LDS variants (partial, nonlinear, contracting, fixed-W) and the token constructions (4-slot, k-shift)."""

import pytest
import torch
import torch.nn.functional as F

from mesanet.mesaopt.data.dynamics import (
    LDS_KINDS,
    LDSConfig,
    constructed_tokens,
    constructed_tokens_4slot,
    generate_lds,
    kshift_tokens,
    lds_preset,
)
from mesanet.utils.config import ConfigError, from_dict

from tolerances import CONTRACTING_EIG_F64_ATOL, DYNAMICS_F64_ATOL

F64 = torch.float64


def _eye(batch, n):
    return torch.eye(n, dtype=F64).expand(batch, n, n)


def _step(batch, h):
    """One noiseless step recomputed from the returned matrices: ``W* f*(h)`` for ``h [B, T, n_h]``."""
    f = h
    if batch.kind == "nonlinear":
        f = torch.einsum("bij,btj->bti", batch.mlp_b, F.gelu(torch.einsum("bij,btj->bti", batch.mlp_a, h)))
        f = f / f.norm(dim=-1, keepdim=True)
    return torch.einsum("bij,btj->bti", batch.w_star, f)


@pytest.mark.parametrize("kind", ["linear", "partial", "nonlinear", "fixed"])
def test_w_star_orthogonal(kind):
    batch = generate_lds(lds_preset(kind), batch_size=6, seed=0, dtype=F64)
    n_h = 15 if kind == "partial" else 10
    assert batch.w_star.shape == (6, n_h, n_h) and batch.hidden.shape == (6, 50, n_h)
    torch.testing.assert_close(batch.w_star @ batch.w_star.transpose(-1, -2), _eye(6, n_h), atol=DYNAMICS_F64_ATOL, rtol=0)
    redrawn = not torch.equal(batch.w_star[0], batch.w_star[1])
    assert redrawn == (kind != "fixed")


@pytest.mark.parametrize("kind", LDS_KINDS)
def test_zero_noise_follows_recursion(kind):
    batch = generate_lds(lds_preset(kind, noise_std=0.0), batch_size=4, seed=1, dtype=F64)
    h = batch.hidden
    torch.testing.assert_close(h[:, 1:], _step(batch, h[:, :-1]), atol=DYNAMICS_F64_ATOL, rtol=0)
    assert h[:, 0].abs().max() <= 1.0  # U(-1, 1) initial state
    if kind == "partial":
        torch.testing.assert_close(batch.states, torch.einsum("bij,btj->bti", batch.c_star, h), atol=DYNAMICS_F64_ATOL, rtol=0)
    else:
        assert torch.equal(batch.states, h)
    if kind == "nonlinear":  # unit-norm feature through an orthogonal W*: every later state has norm 1
        torch.testing.assert_close(h[:, 1:].norm(dim=-1), torch.ones(4, 49, dtype=F64), atol=DYNAMICS_F64_ATOL, rtol=0)


@pytest.mark.parametrize("kind", LDS_KINDS)
def test_seeding_per_kind(kind):
    cfg = lds_preset(kind, noise_std=0.1)
    a, b, c = (generate_lds(cfg, 3, seed, dtype=F64) for seed in (5, 5, 6))
    assert torch.equal(a.states, b.states) and torch.equal(a.w_star, b.w_star) and torch.equal(a.hidden, b.hidden)
    assert not torch.equal(a.states, c.states)
    assert a.kind == kind
    resid = a.hidden[:, 1:] - _step(a, a.hidden[:, :-1])
    assert 0.05 < resid.std().item() < 0.2  # noise_std = 0.1 on the hidden state


def test_partial_observation_matrix_and_noise():
    cfg = lds_preset("partial")
    assert (cfg.state_dim, cfg.hidden_dim, cfg.n_hidden) == (5, 15, 15)
    batch = generate_lds(cfg, batch_size=64, seed=2, dtype=F64)
    assert batch.states.shape == (64, 50, 5) and batch.c_star.shape == (64, 5, 15)
    assert 0.45 < batch.c_star.std().item() < 0.55  # C*_ij = 0.5 N(0, 1)
    assert not torch.equal(batch.c_star[0], batch.c_star[1])
    assert batch.mlp_a is None and batch.eigenvalues is None
    noisy = generate_lds(lds_preset("partial", obs_noise_std=0.3), batch_size=64, seed=2, dtype=F64)
    resid = noisy.states - torch.einsum("bij,btj->bti", noisy.c_star, noisy.hidden)
    assert 0.27 < resid.std().item() < 0.33


def test_nonlinear_mlp_per_sequence_or_shared():
    batch = generate_lds(lds_preset("nonlinear", mlp_dim=7), batch_size=32, seed=3, dtype=F64)
    assert batch.mlp_a.shape == (32, 7, 10) and batch.mlp_b.shape == (32, 10, 7)
    assert not torch.equal(batch.mlp_a[0], batch.mlp_a[1])
    for m in (batch.mlp_a, batch.mlp_b):
        assert 1.0 < m.std().item() < 1.2  # entries 1.1 N(0, 1)
    assert lds_preset("nonlinear").n_mlp == 40
    cfg = lds_preset("nonlinear", share_mlp=True, teacher_seed=4)
    s1, s2 = generate_lds(cfg, 3, seed=0, dtype=F64), generate_lds(cfg, 2, seed=9, dtype=F64)
    assert torch.equal(s1.mlp_a[0], s1.mlp_a[2]) and torch.equal(s1.mlp_a[0], s2.mlp_a[1])
    assert torch.equal(s1.mlp_b[1], s2.mlp_b[0])
    assert not torch.equal(s1.w_star[0], s1.w_star[1])  # W* still per sequence


@pytest.mark.parametrize("basis", ["orthogonal", "gaussian"])
def test_contracting_eigenvalues(basis):
    batch = generate_lds(lds_preset("contracting", contracting_basis=basis), batch_size=16, seed=4, dtype=F64)
    ev = batch.eigenvalues
    assert ev.shape == (16, 10)
    assert ev.min() >= 0.3 and ev.max() <= 0.9
    assert torch.equal((ev == 0.9).sum(-1), torch.ones(16, dtype=torch.long))  # exactly one pinned at 0.9
    assert (ev < 0.89).sum(-1).min() >= 8  # the others spread over U[0.3, 0.9]
    computed = torch.linalg.eigvals(batch.w_star)
    assert computed.imag.abs().max() < CONTRACTING_EIG_F64_ATOL
    torch.testing.assert_close(computed.real.sort(-1).values, ev.sort(-1).values, atol=CONTRACTING_EIG_F64_ATOL, rtol=0)
    if basis == "orthogonal":
        torch.testing.assert_close(batch.w_star, batch.w_star.transpose(-1, -2), atol=DYNAMICS_F64_ATOL, rtol=0)


def test_contracting_clip():
    cfg = lds_preset("contracting", noise_std=0.0, init_range=10.0)
    batch = generate_lds(cfg, batch_size=8, seed=5, dtype=F64)
    h = batch.hidden
    assert h[:, 1:].abs().max() <= 2.0 and (h[:, 1:].abs() == 2.0).any()  # clipping really active
    expected = _step(batch, h[:, :-1]).clamp(-2.0, 2.0)
    torch.testing.assert_close(h[:, 1:], expected, atol=DYNAMICS_F64_ATOL, rtol=0)
    unclipped = generate_lds(
        lds_preset("contracting", noise_std=0.0, init_range=10.0, contracting_clip=None), batch_size=8, seed=5, dtype=F64
    )
    assert unclipped.hidden[:, 1:].abs().max() > 2.0
    assert lds_preset("linear", clip=1.0).effective_clip == 1.0 and cfg.effective_clip == 2.0


def test_fixed_w_shared_across_sequences_and_calls():
    cfg = lds_preset("fixed", teacher_seed=7)
    a, b = generate_lds(cfg, 4, seed=0, dtype=F64), generate_lds(cfg, 2, seed=1, dtype=F64)
    assert torch.equal(a.w_star, a.w_star[:1].expand(4, 10, 10))
    assert torch.equal(a.w_star[0], b.w_star[0])
    assert not torch.equal(a.states[:2], b.states)
    other = generate_lds(lds_preset("fixed", teacher_seed=8), 1, seed=0, dtype=F64)
    assert not torch.equal(other.w_star[0], a.w_star[0])


def test_kshift_tokens():
    states = torch.arange(1, 2 * 4 * 2 + 1, dtype=F64).reshape(2, 4, 2)  # [B=2, T=4, n=2], no zeros
    z = kshift_tokens(states, 3)
    assert z.shape == (2, 4, 6)
    for t in range(4):
        for j in range(3):  # block j holds s_{t-2+j}
            src = t - 2 + j
            want = states[:, src] if src >= 0 else torch.zeros(2, 2, dtype=F64)
            assert torch.equal(z[:, t, 2 * j : 2 * j + 2], want)
    assert torch.equal(kshift_tokens(states, 1), states)
    long = kshift_tokens(states, 6)  # k > T: leading blocks stay zero
    assert torch.equal(long[:, -1, -8:], states.flatten(1)) and torch.equal(long[:, :, :4], torch.zeros(2, 4, 4, dtype=F64))
    batch = generate_lds(lds_preset("partial"), 2, seed=0)
    assert torch.equal(batch.kshift(5), kshift_tokens(batch.states, 5)) and batch.kshift(5).shape == (2, 50, 25)


def test_constructed_4slot_layout():
    batch = generate_lds(LDSConfig(state_dim=3, seq_len=5), batch_size=2, seed=0)
    tok = batch.constructed_4slot
    assert tok.shape == (2, 5, 12)
    s = batch.states
    assert torch.equal(tok[..., :3], torch.zeros(2, 5, 3))
    assert torch.equal(tok[..., 3:6], s) and torch.equal(tok[..., 6:9], s)
    assert torch.equal(tok[:, 1:, 9:], s[:, :-1]) and torch.equal(tok[:, 0, 9:], torch.zeros(2, 3))
    # the 3-slot layout is the 4-slot one with the duplicated slot dropped
    assert torch.equal(constructed_tokens(s), torch.cat([tok[..., :6], tok[..., 9:]], dim=-1))
    assert batch.observations is batch.states


def test_config_from_dict_is_strict():
    cfg = from_dict(LDSConfig, {"kind": "partial", "state_dim": 5, "hidden_dim": 15, "obs_noise_std": 0.1})
    assert cfg == lds_preset("partial", obs_noise_std=0.1)
    with pytest.raises(ConfigError, match="unknown keys"):
        from_dict(LDSConfig, {"kind": "linear", "hidden_size": 3})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "chaotic"}, "kind"),
        ({"kind": "partial"}, "hidden_dim"),
        ({"kind": "partial", "state_dim": 5, "hidden_dim": 5}, "hidden_dim"),
        ({"kind": "linear", "hidden_dim": 15}, "hidden_dim"),
        ({"obs_std": 0.0}, "obs_std"),
        ({"obs_noise_std": -0.1}, "obs_noise_std"),
        ({"mlp_dim": 0}, "mlp_dim"),
        ({"mlp_std": -1.0}, "mlp_std"),
        ({"eig_min": 0.9, "eig_max": 0.3}, "eig_min"),
        ({"contracting_basis": "qr"}, "contracting_basis"),
        ({"contracting_clip": 0.0}, "contracting_clip"),
        ({"teacher_seed": -1}, "teacher_seed"),
        ({"share_mlp": 1}, "share_mlp"),
        ({"state_dim": 2.5}, "state_dim"),
    ],
)
def test_bad_variant_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LDSConfig(**kwargs)


def test_bad_variant_arguments():
    with pytest.raises(ValueError, match="kind"):
        lds_preset("chaotic")
    with pytest.raises(ValueError, match="lds_preset"):
        lds_preset("linear", hidden_size=3)
    with pytest.raises(ValueError, match="config"):
        generate_lds({"kind": "linear"}, 2, seed=0)
    with pytest.raises(ValueError, match="k:"):
        kshift_tokens(torch.zeros(1, 3, 2), 0)
    with pytest.raises(ValueError, match=r"\[B, T, n_s\]"):
        constructed_tokens_4slot(torch.zeros(3, 2))
