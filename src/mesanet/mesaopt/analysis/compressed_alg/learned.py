"""CompressedAlg-k with learned scalar coefficients (:class:`LearnedCompressedAlg`) and its training on the LDS
next-token loss (:func:`train_learned_compressed_alg`); the iteration itself is
:func:`~mesanet.mesaopt.analysis.compressed.compressed_alg_k`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mesanet.train import OptimConfig, fit_steps
from mesanet.utils.validation import check_int

from ..compressed import chebyshev_coefficients, compressed_alg_k, prefix_gram_cross
from ..seq_training import SeqTrainConfig, lds_batch_fn, next_token_mse

__all__ = ["LearnedCompressedAlg", "states_of_tokens", "train_learned_compressed_alg"]


class LearnedCompressedAlg(nn.Module):
    """CompressedAlg-``steps`` with learned scalars: ``alpha_j = exp(log_alpha_j) > 0``, ``beta_j``,
    ``lam = exp(log_lam)``, ``eta``. ``forward(states [B, T, n]) -> [B, T, n]``."""

    def __init__(self, steps: int, lam: float = 1.0, eta: float = 1.0) -> None:
        super().__init__()
        check_int("steps", steps, minimum=1)
        if not (math.isfinite(lam) and lam > 0):
            raise ValueError(f"lam: expected a finite float > 0, got {lam!r}")
        self.steps = steps
        self.log_alpha = nn.Parameter(torch.zeros(steps, dtype=torch.float64))
        self.beta = nn.Parameter(torch.zeros(steps, dtype=torch.float64))
        self.log_lam = nn.Parameter(torch.tensor(math.log(lam), dtype=torch.float64))
        self.eta = nn.Parameter(torch.tensor(float(eta), dtype=torch.float64))

    @property
    def lam(self) -> Tensor:
        return self.log_lam.exp()

    @property
    def alphas(self) -> Tensor:
        return self.log_alpha.exp()

    @torch.no_grad()
    def set_chebyshev(self, lam_max: float, lam: float | None = None, eta: float = 1.0) -> "LearnedCompressedAlg":
        """Set ``alpha, beta`` to Chebyshev's on ``[1/lam, lam_max]`` (``lam`` also set when given), ``eta``."""
        if lam is not None:
            self.log_lam.fill_(math.log(lam))
        alphas, betas = chebyshev_coefficients(1.0 / float(self.lam), float(lam_max), self.steps)
        self.log_alpha.copy_(alphas.log())
        self.beta.copy_(betas)
        self.eta.fill_(eta)
        return self

    def forward(self, states: Tensor) -> Tensor:
        dtype = self.beta.dtype
        pred = compressed_alg_k(states.to(dtype), self.alphas, self.beta, self.lam, self.eta)
        return pred.to(states.dtype)

    def extra_repr(self) -> str:
        return f"steps={self.steps}"


def states_of_tokens(tokens: Tensor) -> Tensor:
    """Constructed tokens ``[B, T, 3n] = [0, s_t, s_{t-1}]`` -> ``s [B, T, n]``."""
    if tokens.dim() != 3 or tokens.shape[-1] % 3:
        raise ValueError(f"tokens: expected constructed tokens [B, T, 3n], got {tuple(tokens.shape)}")
    n = tokens.shape[-1] // 3
    return tokens[..., n : 2 * n]


def train_learned_compressed_alg(
    steps: int,
    train_cfg: SeqTrainConfig,
    *,
    lam: float = 1.0,
    init_lam_max: float | None = None,
    progress: bool = True,
) -> tuple[LearnedCompressedAlg, list[float]]:
    """Train :class:`LearnedCompressedAlg` (``steps`` iterations) on fresh LDS batches of ``train_cfg`` (constructed
    tokens; ``lr``, ``steps``, warm-up/cosine from it; no weight decay). Initialised at Chebyshev on
    ``[1/lam, init_lam_max]`` (default: 1.05 x the largest ``X_t`` eigenvalue of the first batch)."""
    if train_cfg.tokens != "constructed":
        raise ValueError(f"train_cfg.tokens: expected 'constructed', got {train_cfg.tokens!r}")
    next_batch = lds_batch_fn(train_cfg)
    alg = LearnedCompressedAlg(steps, lam=lam)
    if init_lam_max is None:
        s0 = states_of_tokens(next_batch(0)[0]).double()
        gram, _ = prefix_gram_cross(s0)
        init_lam_max = 1.05 * float(torch.linalg.eigvalsh(gram)[..., -1].max()) + 1.0 / lam
    alg.set_chebyshev(init_lam_max)

    def loss_fn(m: LearnedCompressedAlg, batch: tuple[Tensor, Tensor]) -> Tensor:
        tokens, targets = batch
        return next_token_mse(m(states_of_tokens(tokens).double()), targets.double())

    optim = OptimConfig(
        lr=train_cfg.lr,
        weight_decay=0.0,
        betas=train_cfg.betas,
        warmup_steps=train_cfg.warmup_steps,
        min_lr_ratio=train_cfg.min_lr_ratio,
        grad_clip=train_cfg.grad_clip,
    )
    result = fit_steps(alg, next_batch, loss_fn, optim, train_cfg.steps, progress=progress, desc=f"CompressedAlg-{steps}")
    alg.eval()
    return alg, result.losses
