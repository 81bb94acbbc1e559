"""In-context linear regression with continuous tokens, and its optimal (ridge) reference loss.

Per sequence: ``w ~ N(0, I_d / d)``, ``x_i ~ N(0, I_d)``, ``y_i = w^T x_i + noise_std * eps_i``. Tokens
interleave ``[x_1, y_1, x_2, y_2, ...]`` as ``(d + 1)``-vectors: an x-token is ``[x_i, 0]``, a y-token
``[0, y_i]``. The model predicts ``y_i`` at the x_i-token (position ``2i``), seeing only earlier pairs;
``loss_mask`` marks those positions and ``targets`` holds ``y_i`` there (0 elsewhere).

``ridge_prediction_loss`` gives, per number k of in-context pairs, the mean squared error of the ridge
estimate fitted on the first k pairs when predicting pair k. With ``ridge = noise_std**2 * d``
(``bayes_optimal_ridge``) this is the posterior-mean predictor, the optimal one under this prior;
``ridge = 0`` is min-norm least squares (the noiseless optimum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mesanet.utils.validation import check_int, is_real

from .base import make_rng


@dataclass(frozen=True)
class InContextRegressionConfig:
    """``dim`` (d) input features, ``num_pairs`` (x, y) pairs per sequence, observation ``noise_std``."""

    dim: int = 10
    num_pairs: int = 40
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        check_int("dim", self.dim, minimum=1)
        check_int("num_pairs", self.num_pairs, minimum=1)
        if not is_real(self.noise_std, finite=False) or self.noise_std < 0:
            raise ValueError(f"noise_std: expected a float >= 0, got {self.noise_std!r}")


@dataclass(frozen=True)
class RegressionBatch:
    """``xs [N, n, d]``, ``ys [N, n]``, ``weights [N, d]``; model view ``tokens [N, 2n, d+1]``,
    ``targets [N, 2n]`` and ``loss_mask [N, 2n]`` (True at x-token positions)."""

    xs: Tensor
    ys: Tensor
    weights: Tensor
    tokens: Tensor
    targets: Tensor
    loss_mask: Tensor


def in_context_regression(
    num_sequences: int,
    seed: int | np.random.Generator,
    config: InContextRegressionConfig | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> RegressionBatch:
    """``num_sequences`` regression sequences; ``ys`` is computed as ``xs @ w`` in ``dtype`` (+ noise)."""
    cfg = config or InContextRegressionConfig()
    if not isinstance(cfg, InContextRegressionConfig):
        raise ValueError(f"config: expected an InContextRegressionConfig, got {type(cfg).__name__}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    count = check_int("num_sequences", num_sequences, minimum=1)
    rng = make_rng(seed)
    n, d = cfg.num_pairs, cfg.dim
    weights = torch.as_tensor(rng.standard_normal((count, d)) / np.sqrt(d), dtype=dtype)
    xs = torch.as_tensor(rng.standard_normal((count, n, d)), dtype=dtype)
    ys = torch.einsum("bnd,bd->bn", xs, weights)
    if cfg.noise_std > 0:
        ys = ys + cfg.noise_std * torch.as_tensor(rng.standard_normal((count, n)), dtype=dtype)
    tokens = torch.zeros(count, 2 * n, d + 1, dtype=dtype)
    tokens[:, 0::2, :d] = xs
    tokens[:, 1::2, d] = ys
    targets = torch.zeros(count, 2 * n, dtype=dtype)
    targets[:, 0::2] = ys
    loss_mask = torch.zeros(count, 2 * n, dtype=torch.bool)
    loss_mask[:, 0::2] = True
    return RegressionBatch(xs, ys, weights, tokens, targets, loss_mask)


def bayes_optimal_ridge(config: InContextRegressionConfig) -> float:
    """Ridge strength of the posterior mean under ``w ~ N(0, I/d)``: ``noise_std**2 * d``."""
    return float(config.noise_std) ** 2 * config.dim


def ridge_prediction_loss(xs: Tensor, ys: Tensor, ridge: float = 0.0) -> Tensor:
    """``[n]`` mean (over sequences) squared error of predicting ``y_k`` from the first k pairs.

    Entry k fits ``w_k = argmin ||X_{<k} w - y_{<k}||^2 + ridge ||w||^2`` (min-norm least squares when
    ``ridge == 0``) and scores ``(y_k - w_k^T x_k)^2``; entry 0 predicts 0. Computed in float64.
    """
    if xs.ndim != 3 or ys.shape != xs.shape[:2]:
        raise ValueError(f"xs, ys: expected shapes [N, n, d] and [N, n], got {tuple(xs.shape)} and {tuple(ys.shape)}")
    if not is_real(ridge, finite=False) or ridge < 0:
        raise ValueError(f"ridge: expected a float >= 0, got {ridge!r}")
    x, y = xs.double(), ys.double()
    _, n, d = x.shape
    eye = torch.eye(d, dtype=torch.float64)
    losses = torch.empty(n, dtype=torch.float64)
    for k in range(n):
        if k == 0:
            pred = torch.zeros_like(y[:, 0])
        else:
            xk, yk = x[:, :k], y[:, :k]
            if ridge > 0:
                w = torch.linalg.solve(xk.transpose(1, 2) @ xk + ridge * eye, (xk.transpose(1, 2) @ yk[..., None]))[..., 0]
            else:
                w = (torch.linalg.pinv(xk) @ yk[..., None])[..., 0]
            pred = (x[:, k] * w).sum(-1)
        losses[k] = ((y[:, k] - pred) ** 2).mean()
    return losses
