"""A minimal in-memory training loop for small models on generated data (synthetic suites, analyses).

The language-model :class:`~mesanet.train.Trainer` owns corpora, checkpoints and DDP; experiments on
generated batches need none of that, only the same optimizer recipe: AdamW with decay / no-decay groups,
warm-up + cosine (:mod:`mesanet.train.optim`), global-norm clipping and a guard against non-finite losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mesanet.utils.validation import check_int

from .config import OptimConfig
from .optim import build_optimizer, build_scheduler, clip_norm


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; raised at the step where it happened (the weights are left as they were)."""


@dataclass
class LoopResult:
    """``losses``: the training loss of every step; ``grad_norms``: the pre-clipping global norm per step."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        """Mean of the last (up to) 10 step losses: a less noisy end point than the last step alone."""
        tail = self.losses[-10:]
        return sum(tail) / len(tail) if tail else math.nan


def fit_steps(
    model: nn.Module,
    next_batch: Callable[[int], Any],
    loss_fn: Callable[[nn.Module, Any], Tensor],
    optim: OptimConfig,
    steps: int,
    *,
    progress: bool = True,
    desc: str = "train",
) -> LoopResult:
    """Train ``model`` for ``steps`` optimizer steps; ``next_batch(step)`` (0-based) returns the batch that
    ``loss_fn(model, batch)`` turns into a scalar loss. The model is left in ``train()`` mode.

    Raises ``ValueError`` for ``steps < 1`` and :class:`NonFiniteLossError` if a loss or gradient norm is
    not finite (no silent NaN training).
    """
    check_int("steps", steps, minimum=1)
    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, optim, steps)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: expected at least one trainable parameter, got none")
    result = LoopResult()
    model.train()
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, dynamic_ncols=True, leave=False)
    for step in bar:
        loss = loss_fn(model, next_batch(step))
        if loss.dim() != 0:
            raise ValueError(f"loss_fn: expected a scalar loss, got shape {tuple(loss.shape)}")
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(f"{desc}: non-finite loss {value} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = clip_norm(optim.grad_clip)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(f"{desc}: non-finite gradient norm {grad_norm} at step {step}")
        optimizer.step()
        scheduler.step()
        result.losses.append(value)
        result.grad_norms.append(grad_norm)
        if progress and (step % 10 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{value:.4g}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
    bar.close()
    return result


__all__ = ["LoopResult", "NonFiniteLossError", "fit_steps"]
