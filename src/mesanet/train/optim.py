"""AdamW with decay / no-decay parameter groups, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from .config import OptimConfig


def no_decay_reason(param: nn.Parameter, embeddings: set[int]) -> str | None:
    """Why ``param`` gets no weight decay (``None``: it does). Excluded: parameters tagged
    ``_no_weight_decay`` (Mesa's lambda, gate biases, Hawk's Lambda), the (tied) embedding (paper A.5:
    "no regularisation on the embedding"), and every tensor with fewer than two dimensions (norm gains,
    biases)."""
    if getattr(param, "_no_weight_decay", False):
        return "tagged _no_weight_decay"
    if id(param) in embeddings:
        return "embedding"
    if param.dim() < 2:
        return "norm gain or bias (1-D)"
    return None


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups, ``[decay, no_decay]``, each with ``param_names`` (trainable parameters only;
    a tied parameter appears once)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and getattr(model.config, "tie_word_embeddings", False):
        embeddings.add(id(output.weight))
    decay, no_decay = ([], []), ([], [])
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        names, params = no_decay if no_decay_reason(param, embeddings) else decay
        names.append(name)
        params.append(param)
    return [
        {"params": decay[1], "param_names": decay[0], "weight_decay": weight_decay},
        {"params": no_decay[1], "param_names": no_decay[0], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW on :func:`param_groups`; the fused kernel on CUDA."""
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=fused or None,
    )


def clip_norm(grad_clip: float | None) -> float:
    """The ``max_norm`` of ``clip_grad_norm_`` for ``OptimConfig.grad_clip``: ``None`` (no clipping) is ``inf``.
    ``0`` still means no clipping for the experiment loops that pass it (:func:`~.loop.fit_steps`); a
    :class:`~.config.TrainConfig` rejects it (write ``null``)."""
    return math.inf if grad_clip is None or grad_clip == 0 else float(grad_clip)


def lr_multiplier(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Learning rate of 0-based optimizer step ``step`` as a fraction of the peak.

    Warm-up: ``(step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps`` (from ~0, strictly rising);
    then cosine from 1 at ``step = warmup_steps`` to ``min_lr_ratio`` at the last step ``max_steps - 1``
    (and ``min_lr_ratio`` after it).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max_steps - 1 - warmup_steps
    progress = 1.0 if span <= 0 else min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` on :func:`lr_multiplier` (its state is the step count; the horizon comes from the config)."""
    if cfg.warmup_steps >= max_steps:
        warnings.warn(
            f"optim.warmup_steps ({cfg.warmup_steps}) >= max_steps ({max_steps}): the run never leaves warm-up", stacklevel=2
        )

    def multiplier(step: int) -> float:  # a plain function: LambdaLR does not pickle it into its state
        return lr_multiplier(step, warmup_steps=cfg.warmup_steps, max_steps=max_steps, min_lr_ratio=cfg.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


__all__ = ["build_optimizer", "build_scheduler", "clip_norm", "lr_multiplier", "no_decay_reason", "param_groups"]
