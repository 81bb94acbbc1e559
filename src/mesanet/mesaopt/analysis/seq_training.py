"""Training and evaluating :class:`~mesanet.mesaopt.models.SequenceModel` on linear dynamical systems (paper B, eq. 1).

``L(theta) = E [ 1/2 sum_t || s_{t+1} - f_t(e_{1:t}) ||^2 ]``: continuous next-token regression; here averaged
over the ``T - 1`` positions that have a target (and over the batch). Every optimizer step draws a fresh
seeded batch from :func:`mesanet.mesaopt.data.dynamics.generate_lds`, so the data stream is a pure function of
``(seed, step)``; evaluation seeds are small integers, training seeds live at ``>= 10**9``, so they never meet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor

from mesanet.train import OptimConfig, fit_steps
from mesanet.train.loop import LoopResult
from mesanet.utils.validation import check_int, is_int

from ..data.dynamics import LDSConfig, generate_lds
from ..models import SeqModelConfig, SequenceModel

__all__ = [
    "TOKEN_FORMATS",
    "SeqTrainConfig",
    "lds_batch_fn",
    "training_states",
    "tokens_of",
    "next_token_mse",
    "per_position_loss",
    "train_sequence_model",
    "build_model",
]

#: ``"constructed"``: ``[0, s_t, s_{t-1}]`` (3 n_s dims, Proposition 1's layout); ``"constructed4"``: the official
#: code's ``[0, s_t, s_t, s_{t-1}]`` (4 n_s dims: a spare copy of ``s_t`` that later layers may overwrite);
#: ``"unconstructed"``: ``s_t``.
TOKEN_FORMATS = ("constructed", "constructed4", "unconstructed")
_TOKEN_SLOTS = {"constructed": 3, "constructed4": 4, "unconstructed": 1}
_TRAIN_SEED_BASE = 10**9


@dataclass
class SeqTrainConfig:
    """One training run on fresh LDS batches. ``lr`` is the peak of a linear warm-up over ``warmup_steps``
    followed by a cosine decay to ``min_lr_ratio * lr`` (``warmup_steps = 0`` and ``min_lr_ratio = 1``: the
    paper's fixed learning rate). AdamW with ``betas`` (paper: 0.9 / 0.999), global-norm clip ``grad_clip``."""

    steps: int
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    tokens: str = "constructed"
    task: LDSConfig = field(default_factory=LDSConfig)
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            check_int(f"SeqTrainConfig.{name}", v, minimum=1)
        check_int("SeqTrainConfig.warmup_steps", self.warmup_steps, minimum=0)
        check_int("SeqTrainConfig.seed", self.seed, minimum=0)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"SeqTrainConfig.lr: expected a finite float > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"SeqTrainConfig.weight_decay: expected a finite float >= 0, got {self.weight_decay!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"SeqTrainConfig.min_lr_ratio: expected a float in [0, 1], got {self.min_lr_ratio!r}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"SeqTrainConfig.grad_clip: expected a finite float >= 0 (0 = off), got {self.grad_clip!r}")
        if self.tokens not in TOKEN_FORMATS:
            raise ValueError(f"SeqTrainConfig.tokens: expected one of {TOKEN_FORMATS}, got {self.tokens!r}")
        if not isinstance(self.task, LDSConfig):
            raise ValueError(f"SeqTrainConfig.task: expected an LDSConfig, got {type(self.task).__name__}")
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"SeqTrainConfig.betas: expected two floats in [0, 1), got {self.betas!r}")

    def optim(self) -> OptimConfig:
        return OptimConfig(
            lr=self.lr,
            weight_decay=self.weight_decay,
            betas=self.betas,
            warmup_steps=self.warmup_steps,
            min_lr_ratio=self.min_lr_ratio,
            grad_clip=self.grad_clip,
        )


def tokens_of(states: Tensor, tokens: str) -> Tensor:
    """``states [B, T, n]`` -> model input tokens: constructed ``[B, T, 3n]``, constructed4 ``[B, T, 4n]`` or
    unconstructed ``[B, T, n]``."""
    from ..data.dynamics import constructed_tokens, constructed_tokens_4slot, unconstructed_tokens

    if tokens == "constructed":
        return constructed_tokens(states)
    if tokens == "constructed4":
        return constructed_tokens_4slot(states)
    if tokens == "unconstructed":
        return unconstructed_tokens(states)
    raise ValueError(f"tokens: expected one of {TOKEN_FORMATS}, got {tokens!r}")


def lds_batch_fn(cfg: SeqTrainConfig) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``step -> (tokens [B, T, d], targets [B, T-1, n])``: a fresh batch seeded by ``(cfg.seed, step)``."""
    if not isinstance(cfg, SeqTrainConfig):
        raise ValueError(f"lds_batch_fn: expected a SeqTrainConfig, got {type(cfg).__name__}")

    def batch(step: int) -> tuple[Tensor, Tensor]:
        data = generate_lds(cfg.task, cfg.batch_size, seed=_TRAIN_SEED_BASE * (1 + cfg.seed) + int(step))
        return tokens_of(data.states, cfg.tokens), data.targets

    return batch


def training_states(cfg: SeqTrainConfig, num_sequences: int) -> Tensor:
    """The first ``num_sequences`` state sequences ``[N, T, n]`` of the recipe's own training stream (the
    batches of steps 0, 1, ...), e.g. to tune a reference algorithm on the data a model was trained on."""
    if not is_int(num_sequences, 1):
        raise ValueError(f"training_states: expected num_sequences >= 1, got {num_sequences!r}")
    batch = lds_batch_fn(replace(cfg, tokens="unconstructed"))  # unconstructed tokens are the states
    chunks, total, step = [], 0, 0
    while total < num_sequences:
        states, _ = batch(step)
        chunks.append(states)
        total += states.shape[0]
        step += 1
    return torch.cat(chunks)[:num_sequences]


def next_token_mse(pred: Tensor, targets: Tensor) -> Tensor:
    """Eq. 1: ``1/2 sum_dims ||pred_t - s_{t+1}||^2`` averaged over batch and positions.

    ``targets [B, T', n]``; ``pred [B, T, n]`` with ``T >= T'`` (only its first ``T'`` positions are scored:
    the last position of a sequence has no target).
    """
    if (
        pred.dim() != 3
        or targets.dim() != 3
        or pred.shape[0] != targets.shape[0]
        or pred.shape[2] != targets.shape[2]
        or pred.shape[1] < targets.shape[1]
    ):
        raise ValueError(
            f"next_token_mse: expected pred [B, T, n] and targets [B, T' <= T, n], got {tuple(pred.shape)} and {tuple(targets.shape)}"
        )
    diff = pred[:, : targets.shape[1]] - targets.to(pred.dtype)
    return 0.5 * diff.square().sum(-1).mean()


def build_model(model_cfg: SeqModelConfig, seed: int = 0) -> SequenceModel:
    """A freshly initialised model; the initialisation depends only on ``seed`` (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SequenceModel(model_cfg)


def _check_dims(model_cfg: SeqModelConfig, train_cfg: SeqTrainConfig) -> None:
    n = train_cfg.task.state_dim
    want_in = _TOKEN_SLOTS[train_cfg.tokens] * n
    if model_cfg.input_dim != want_in or model_cfg.output_dim != n:
        raise ValueError(
            f"model/task mismatch: {train_cfg.tokens} tokens of n_s = {n} need input_dim = {want_in} and output_dim = {n}, "
            f"got input_dim = {model_cfg.input_dim}, output_dim = {model_cfg.output_dim}"
        )
    if model_cfg.max_len < train_cfg.task.seq_len:
        raise ValueError(f"model max_len = {model_cfg.max_len} < task seq_len = {train_cfg.task.seq_len}")


def train_sequence_model(
    model_cfg: SeqModelConfig, train_cfg: SeqTrainConfig, *, progress: bool = True, desc: str = "train"
) -> tuple[SequenceModel, LoopResult]:
    """Build (seeded by ``train_cfg.seed``) and train a model with :func:`mesanet.train.fit_steps`;
    returns it in ``eval()`` mode with the per-step losses."""
    _check_dims(model_cfg, train_cfg)
    model = build_model(model_cfg, train_cfg.seed)
    next_batch = lds_batch_fn(train_cfg)

    def loss_fn(m: SequenceModel, batch: tuple[Tensor, Tensor]) -> Tensor:
        tokens, targets = batch
        return next_token_mse(m(tokens), targets)

    result = fit_steps(model, next_batch, loss_fn, train_cfg.optim(), train_cfg.steps, progress=progress, desc=desc)
    model.eval()
    return model, result


@torch.no_grad()
def per_position_loss(
    predict: Callable[[Tensor], Tensor],
    lds_cfg: LDSConfig,
    *,
    num_sequences: int = 1024,
    seed: int = 1,
    tokens: str = "constructed",
    chunk: int = 512,
) -> Tensor:
    """Test loss per position, ``[T - 1]``: ``1/2 ||predict(tokens)_t - s_{t+1}||^2`` averaged over
    ``num_sequences`` fresh sequences (seeded by ``seed``), evaluated ``chunk`` sequences at a time.
    ``predict`` maps ``[b, T, d]`` tokens to ``[b, T, n]`` (or ``[b, T-1, n]``) predictions."""
    if not is_int(num_sequences, 1):
        raise ValueError(f"per_position_loss: num_sequences expected an int >= 1, got {num_sequences!r}")
    states = generate_lds(lds_cfg, num_sequences, seed=seed).states
    total = torch.zeros(lds_cfg.seq_len - 1, dtype=torch.float64)
    for start in range(0, num_sequences, chunk):
        s = states[start : start + chunk]
        pred = predict(tokens_of(s, tokens))
        targets = s[:, 1:]
        if (
            pred.dim() != 3
            or pred.shape[0] != s.shape[0]
            or pred.shape[2] != targets.shape[2]
            or pred.shape[1] < targets.shape[1]
        ):
            raise ValueError(
                f"per_position_loss: predict returned {tuple(pred.shape)}, expected [b, >= {targets.shape[1]}, {targets.shape[2]}]"
            )
        err = 0.5 * (pred[:, : targets.shape[1]].double() - targets.double()).square().sum(-1)
        total += err.sum(0)
    return total / num_sequences
