"""Few-shot regression prompts (plain, EOS slots, prefix slots, continual) and the least-squares controls."""

import pytest
import torch

from mesanet.mesaopt.data.fewshot import FewShotConfig, fewshot_lsq_loss, fewshot_lsq_predictions, generate_fewshot

from tolerances import DYNAMICS_F64_ATOL, FEWSHOT_LSQ_F64_ATOL

F64 = torch.float64


def test_plain_layout_and_regression():
    cfg = FewShotConfig(dim=4, num_pairs=6)
    batch = generate_fewshot(cfg, batch_size=3, seed=0, dtype=F64)
    assert cfg.seq_len == 12 and batch.tokens.shape == (3, 12, 4) and batch.x.shape == (3, 1, 6, 4)
    w = batch.w_star[:, 0]
    torch.testing.assert_close(w @ w.transpose(-1, -2), torch.eye(4, dtype=F64).expand(3, 4, 4), atol=DYNAMICS_F64_ATOL, rtol=0)
    assert not torch.equal(w[0], w[1])
    torch.testing.assert_close(batch.y, torch.einsum("bkij,bknj->bkni", batch.w_star, batch.x), atol=DYNAMICS_F64_ATOL, rtol=0)
    assert torch.equal(batch.tokens[:, 0::2], batch.flat_x) and torch.equal(batch.tokens[:, 1::2], batch.flat_y)
    assert torch.equal(batch.targets[:, 0::2], batch.flat_y) and not batch.targets[:, 1::2].any()
    assert torch.equal(batch.loss_mask[0], torch.arange(12) % 2 == 0) and batch.loss_mask.shape == (3, 12)
    assert not batch.eos_mask.any() and not batch.prefix_mask.any()
    assert torch.equal(batch.x_positions, torch.arange(0, 12, 2)) and torch.equal(batch.y_positions, torch.arange(1, 12, 2))


def test_eos_prefix_and_continual_layout():
    cfg = FewShotConfig(dim=3, num_pairs=4, num_tasks=2, eos=True, prefix_len=5)
    batch = generate_fewshot(cfg, batch_size=2, seed=1, dtype=F64)
    t_len = 5 + 2 * 4 * 3
    assert cfg.seq_len == t_len and batch.tokens.shape == (2, t_len, 3)
    assert batch.x.shape == (2, 2, 4, 3) and batch.w_star.shape == (2, 2, 3, 3)
    assert not torch.equal(batch.w_star[:, 0], batch.w_star[:, 1])  # a new task after the first N pairs
    slot = torch.arange(t_len) - 5
    want_prefix, want_x = slot < 0, (slot >= 0) & (slot % 3 == 0)
    want_y, want_eos = (slot >= 0) & (slot % 3 == 1), (slot >= 0) & (slot % 3 == 2)
    assert torch.equal(batch.prefix_mask[1], want_prefix) and torch.equal(batch.eos_mask[0], want_eos)
    assert torch.equal(batch.loss_mask[0], want_x)
    assert not batch.tokens[:, want_prefix | want_eos].any()
    # prompt order: task 1's pairs then task 2's, x before y
    assert torch.equal(batch.tokens[:, want_x], batch.x.flatten(1, 2))
    assert torch.equal(batch.tokens[:, want_y], batch.y.flatten(1, 2))
    assert torch.equal(batch.targets[:, want_x], batch.y.flatten(1, 2)) and not batch.targets[:, ~want_x].any()
    torch.testing.assert_close(batch.y, torch.einsum("bkij,bknj->bkni", batch.w_star, batch.x), atol=DYNAMICS_F64_ATOL, rtol=0)


def test_seeding_distributions_and_noise():
    cfg = FewShotConfig(dim=5, num_pairs=40, x_dist="uniform", x_range=2.0, noise_std=0.2)
    a, b, c = (generate_fewshot(cfg, 16, seed=s, dtype=F64) for s in (3, 3, 4))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.w_star, b.w_star)
    assert not torch.equal(a.tokens, c.tokens)
    assert a.x.abs().max() <= 2.0 and a.x.abs().max() > 1.8
    resid = a.y - torch.einsum("bkij,bknj->bkni", a.w_star, a.x)
    assert 0.18 < resid.std().item() < 0.22
    normal = generate_fewshot(FewShotConfig(dim=5, num_pairs=40), 16, seed=3, dtype=F64)
    assert 0.9 < normal.x.std().item() < 1.1 and normal.x.abs().max() > 2.0


def test_pair_losses_read_x_positions():
    batch = generate_fewshot(FewShotConfig(dim=3, num_pairs=5, eos=True), batch_size=4, seed=2, dtype=F64)
    assert torch.equal(batch.pair_losses(batch.targets), torch.zeros(4, 5, dtype=F64))
    zero = batch.pair_losses(torch.zeros_like(batch.tokens))
    torch.testing.assert_close(zero, 0.5 * batch.flat_y.pow(2).sum(-1), atol=0, rtol=0)
    torch.testing.assert_close(batch.loss_curve(torch.zeros_like(batch.tokens)), zero.mean(0), atol=0, rtol=0)


def test_lsq_hand_checked_one_dimensional():
    # W* = -1, x = (1, 2, 3): y = (-1, -2, -3)
    x = torch.tensor([[[1.0], [2.0], [3.0]]], dtype=F64)
    y = -x
    plain = fewshot_lsq_predictions(x, y, mode="plain")
    # pair 2 from {(1, -1)}: Phi = -1 -> -2; pair 3 likewise exact
    torch.testing.assert_close(plain[0, :, 0], torch.tensor([0.0, -2.0, -3.0], dtype=F64), atol=FEWSHOT_LSQ_F64_ATOL, rtol=0)
    auto = fewshot_lsq_predictions(x, y, mode="autoregressive")
    # pair 2 from {(1, -1), (-1, 2)}: Phi = (1*-1 + -1*2) / (1 + 1) = -3/2 -> -3
    # pair 3 from {(1,-1), (2,-2), (-1, 2), (-2, 3)}: Phi = (-1 - 4 - 2 - 6) / (1 + 4 + 1 + 4) = -1.3 -> -3.9
    torch.testing.assert_close(auto[0, :, 0], torch.tensor([0.0, -3.0, -3.9], dtype=F64), atol=FEWSHOT_LSQ_F64_ATOL, rtol=0)
    loss = fewshot_lsq_loss(x, y, mode="autoregressive")
    torch.testing.assert_close(loss, torch.tensor([0.5, 0.5, 0.405], dtype=F64), atol=FEWSHOT_LSQ_F64_ATOL, rtol=0)
    # ridge 1 on pair 2 (plain): Phi = -1 / (1 + 1) -> -1
    ridge = fewshot_lsq_predictions(x, y, mode="plain", ridge=1.0)
    torch.testing.assert_close(ridge[0, 1, 0], torch.tensor(-1.0, dtype=F64), atol=FEWSHOT_LSQ_F64_ATOL, rtol=0)


def test_plain_lsq_recovers_w_with_enough_pairs():
    n, pairs = 4, 9
    batch = generate_fewshot(FewShotConfig(dim=n, num_pairs=pairs), batch_size=5, seed=6, dtype=F64)
    x, y = batch.flat_x, batch.flat_y
    pred = fewshot_lsq_predictions(x, y, mode="plain")
    torch.testing.assert_close(pred[:, n:], y[:, n:], atol=FEWSHOT_LSQ_F64_ATOL, rtol=0)  # i - 1 >= n pairs seen
    assert (pred[:, 1:n] - y[:, 1:n]).abs().amax(-1).min() > 1e-3  # under-determined before that
    loss = fewshot_lsq_loss(x, y, mode="plain")
    torch.testing.assert_close(loss[0], 0.5 * y[:, 0].pow(2).sum(-1).mean(), atol=0, rtol=0)  # nothing seen -> 0
    assert loss[n:].max() < 0.5 * n * FEWSHOT_LSQ_F64_ATOL**2  # every coordinate within the bound
    # the spurious (y_j, x_{j+1}) pairs keep the autoregressive control from recovering W*
    auto = fewshot_lsq_loss(x, y, mode="autoregressive")
    assert auto[n:].min() > 1e-3
    # a strong ridge shrinks the predictions towards 0
    big = fewshot_lsq_predictions(x, y, mode="plain", ridge=1e6)
    assert big.abs().max() < 1e-3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dim": 0}, "dim"),
        ({"num_pairs": 0}, "num_pairs"),
        ({"num_tasks": 0}, "num_tasks"),
        ({"prefix_len": -1}, "prefix_len"),
        ({"x_dist": "laplace"}, "x_dist"),
        ({"x_range": 0.0}, "x_range"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"eos": "yes"}, "eos"),
        ({"dim": 2.0}, "dim"),
    ],
)
def test_bad_fewshot_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FewShotConfig(**kwargs)


def test_bad_fewshot_arguments():
    cfg = FewShotConfig(dim=2, num_pairs=3)
    with pytest.raises(ValueError, match="batch_size"):
        generate_fewshot(cfg, 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        generate_fewshot(cfg, 1, seed=-1)
    with pytest.raises(ValueError, match="config"):
        generate_fewshot({"dim": 2}, 1, seed=0)
    batch = generate_fewshot(cfg, 2, seed=0)
    with pytest.raises(ValueError, match="predictions"):
        batch.pair_losses(torch.zeros(2, 5, 2))
    x = torch.zeros(2, 3, 2)
    with pytest.raises(ValueError, match=r"\[B, M, n\]"):
        fewshot_lsq_predictions(x, torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"\[B, M, n\]"):
        fewshot_lsq_loss(x[0], x[0])
    with pytest.raises(ValueError, match="mode"):
        fewshot_lsq_predictions(x, x, mode="ridge")
    with pytest.raises(ValueError, match="ridge"):
        fewshot_lsq_predictions(x, x, ridge=-1.0)
