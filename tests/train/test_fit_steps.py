"""``fit_steps``: the in-memory loop used by the synthetic suites and analyses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mesanet.train import NonFiniteLossError, OptimConfig, fit_steps


def _regression_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 1, generator=g)
    x = torch.randn(256, 4, generator=g)
    return x, x @ w


def test_fit_steps_learns_a_linear_map():
    x, y = _regression_problem()
    model = nn.Linear(4, 1, bias=False)
    optim = OptimConfig(lr=0.05, weight_decay=0.0, warmup_steps=5, min_lr_ratio=0.1)
    result = fit_steps(model, lambda step: (x, y), lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), optim, 300, progress=False)
    assert len(result.losses) == len(result.grad_norms) == 300
    assert result.losses[0] > 0.5 and result.final_loss < 1e-3 * result.losses[0]


def test_fit_steps_rejects_bad_arguments_and_non_finite_losses():
    model = nn.Linear(2, 1)
    optim = OptimConfig()
    with pytest.raises(ValueError, match="steps"):
        fit_steps(model, lambda s: None, lambda m, b: m.weight.sum(), optim, 0, progress=False)
    with pytest.raises(ValueError, match="scalar"):
        fit_steps(model, lambda s: None, lambda m, b: m.weight, optim, 2, progress=False)
    with pytest.raises(NonFiniteLossError, match="step 0"):
        fit_steps(model, lambda s: None, lambda m, b: m.weight.sum() * float("nan"), optim, 2, progress=False)
