"""In-context linear regression: layout, exact linearity, seeding, the ridge/LSQ reference loss."""

from __future__ import annotations

import pytest
import torch

from mesanet.synth.tasks import (
    InContextRegressionConfig,
    bayes_optimal_ridge,
    in_context_regression,
    ridge_prediction_loss,
)


def test_shapes_layout_and_exact_linearity():
    cfg = InContextRegressionConfig(dim=4, num_pairs=12)
    b = in_context_regression(16, 0, cfg, dtype=torch.float64)
    assert b.xs.shape == (16, 12, 4) and b.ys.shape == (16, 12) and b.weights.shape == (16, 4)
    assert b.tokens.shape == (16, 24, 5) and b.targets.shape == b.loss_mask.shape == (16, 24)
    torch.testing.assert_close(b.ys, torch.einsum("bnd,bd->bn", b.xs, b.weights), rtol=0, atol=0)
    assert torch.equal(b.tokens[:, 0::2, :4], b.xs) and (b.tokens[:, 0::2, 4] == 0).all()
    assert torch.equal(b.tokens[:, 1::2, 4], b.ys) and (b.tokens[:, 1::2, :4] == 0).all()
    assert torch.equal(b.targets[b.loss_mask], b.ys.flatten()) and not b.loss_mask[:, 1::2].any()


def test_seeding_and_noise():
    a, b, c = (in_context_regression(4, s) for s in (3, 3, 4))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    noisy = in_context_regression(4, 3, InContextRegressionConfig(noise_std=0.1))
    resid = noisy.ys - torch.einsum("bnd,bd->bn", noisy.xs, noisy.weights)
    assert 0.05 < resid.std().item() < 0.2


def test_weight_prior_scale():
    b = in_context_regression(4000, 5, InContextRegressionConfig(dim=8, num_pairs=2))
    assert abs(b.weights.var().item() - 1 / 8) < 0.01
    assert abs(b.ys.var().item() - 1.0) < 0.1  # E[y^2] = E||w||^2 = 1


def test_least_squares_loss_vanishes_once_identifiable():
    cfg = InContextRegressionConfig(dim=5, num_pairs=10)
    b = in_context_regression(256, 6, cfg, dtype=torch.float64)
    loss = ridge_prediction_loss(b.xs, b.ys)
    assert loss.shape == (10,)
    assert abs(loss[0].item() - 1.0) < 0.25  # predicting 0: E[y^2] = 1
    assert (loss[5:] < 1e-20).all() and (loss[:5] > 1e-3).all()
    # noiseless, isotropic prior: min-norm LSQ error is (d - k)/d * E[y^2] before identification
    assert abs(loss[2].item() - 3 / 5) < 0.2


def test_bayes_ridge_beats_least_squares_with_noise():
    cfg = InContextRegressionConfig(dim=6, num_pairs=12, noise_std=0.5)
    b = in_context_regression(1024, 7, cfg)
    assert bayes_optimal_ridge(cfg) == pytest.approx(1.5)
    lsq = ridge_prediction_loss(b.xs, b.ys)
    bayes = ridge_prediction_loss(b.xs, b.ys, bayes_optimal_ridge(cfg))
    assert (bayes <= lsq + 1e-9).float().mean() > 0.9
    assert bayes[-1] > 0.25 - 0.05  # never below the noise floor


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: InContextRegressionConfig(dim=0), "dim"),
        (lambda: InContextRegressionConfig(noise_std=-1.0), "noise_std"),
        (lambda: in_context_regression(4, 0, dtype=torch.int64), "dtype"),
        (lambda: ridge_prediction_loss(torch.zeros(2, 3), torch.zeros(2, 3)), "xs, ys"),
        (lambda: ridge_prediction_loss(torch.zeros(2, 3, 1), torch.zeros(2, 3), ridge=-1.0), "ridge"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
