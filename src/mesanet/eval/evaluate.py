"""Validation loss / perplexity, the per-position NLL curve, and perplexity beyond the training length.

``evaluate_lm`` works for any causal LM whose forward returns ``.logits`` (MesaNet or a Hugging Face model):
windows ``[N, T]`` are scored as next-token prediction, ``T - 1`` targets each, in eval mode without gradients.
Position ``t`` of the per-position curve (``t = 0 .. T-2``) is the mean NLL of token ``t + 1`` given the
``t + 1`` tokens before it in its window, averaged over the windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from mesanet.utils.validation import is_int


def perplexity(loss: float) -> float:
    """``exp(loss)`` (``inf`` where that overflows)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class LMEvalResult:
    """Mean next-token NLL (nats) over ``tokens = windows * (seq_len - 1)`` targets; ``ppl = exp(loss)``."""

    loss: float
    ppl: float
    tokens: int
    windows: int
    seq_len: int
    per_position_nll: np.ndarray = field(repr=False)  # [seq_len - 1]

    def to_dict(self, per_position: bool = False) -> dict:
        out = dict(loss=self.loss, ppl=self.ppl, tokens=self.tokens, windows=self.windows, seq_len=self.seq_len)
        if per_position:
            out["per_position_nll"] = self.per_position_nll.tolist()
        return out


@dataclass(frozen=True)
class ExtrapolationResult:
    """Evaluation at ``seq_len = factor * train_len``; ``result`` is ``None`` when it was not possible,
    ``reason`` then says why (e.g. a validation split shorter than one window)."""

    factor: int
    seq_len: int
    result: Optional[LMEvalResult]
    reason: Optional[str] = None

    @property
    def available(self) -> bool:
        return self.result is not None

    @property
    def loss(self) -> Optional[float]:
        return self.result.loss if self.result else None

    @property
    def ppl(self) -> Optional[float]:
        return self.result.ppl if self.result else None

    @property
    def per_position_nll(self) -> Optional[np.ndarray]:
        return self.result.per_position_nll if self.result else None

    def to_dict(self) -> dict:
        out = dict(factor=self.factor, seq_len=self.seq_len, available=self.available)
        if self.result is not None:
            out.update(self.result.to_dict())
        else:
            out["reason"] = self.reason
        return out


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def check_windows(windows, vocab_size: Optional[int] = None, where: str = "evaluate_lm") -> Tensor:
    """``windows`` as a LongTensor ``[N, T]`` (N >= 1, T >= 2, ids in ``[0, vocab_size)``)."""
    if isinstance(windows, np.ndarray):
        windows = torch.from_numpy(np.ascontiguousarray(windows))
    if not isinstance(windows, Tensor):
        raise ValueError(f"{where}: expected windows to be a LongTensor [N, T], got {type(windows).__name__}")
    if windows.dim() != 2:
        raise ValueError(f"{where}: expected windows of shape [N, T], got {list(windows.shape)}")
    if windows.dtype.is_floating_point or windows.dtype.is_complex or windows.dtype == torch.bool:
        raise ValueError(f"{where}: expected integer token ids, got dtype {windows.dtype}")
    if windows.shape[0] < 1 or windows.shape[1] < 2:
        raise ValueError(f"{where}: expected at least one window of at least 2 tokens, got shape {list(windows.shape)}")
    low, high = int(windows.min()), int(windows.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        raise ValueError(f"{where}: token ids must lie in [0, {vocab_size}), got ids in [{low}, {high}]")
    return windows.long()


def _check_batch_size(batch_size, where: str) -> None:
    if not is_int(batch_size, 1):
        raise ValueError(f"{where}: expected batch_size to be an integer >= 1, got {batch_size!r}")


@torch.no_grad()
def evaluate_lm(model: nn.Module, windows, batch_size: int = 8, progress: bool = True, desc: str = "eval") -> LMEvalResult:
    """Next-token loss, perplexity and per-position NLL of ``model`` on ``windows [N, T]``.

    Runs in eval mode (the model's training flag is restored afterwards) without gradients, ``batch_size``
    windows per forward. NLLs are accumulated in float64.
    """
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    windows = check_windows(windows, vocab)
    _check_batch_size(batch_size, "evaluate_lm")
    num, length = windows.shape
    device = model_device(model)
    sums = torch.zeros(length - 1, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        starts = range(0, num, batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
            ids = windows[start : start + batch_size].to(device)
            logits = model(input_ids=ids, use_cache=False).logits
            nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
            sums += nll.double().sum(0).cpu()
    finally:
        model.train(was_training)
    per_position = (sums / num).numpy()
    loss = float(sums.sum() / (num * (length - 1)))
    return LMEvalResult(
        loss=loss, ppl=perplexity(loss), tokens=num * (length - 1), windows=num, seq_len=length, per_position_nll=per_position
    )


def check_tokens(tokens, where: str) -> np.ndarray:
    if isinstance(tokens, Tensor):
        tokens = tokens.detach().cpu().numpy()
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D array of token ids, got shape {list(tokens.shape)}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{where}: expected integer token ids, got dtype {tokens.dtype}")
    return tokens


def extrapolation(
    model: nn.Module,
    val_tokens,
    train_len: int,
    factors: Sequence[int] = (1, 2, 4),
    max_windows: Optional[int] = 32,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[int, ExtrapolationResult]:
    """Loss, perplexity and per-position NLL at ``factor * train_len`` for every factor.

    Every factor scores the same tokens, so the losses compare lengths and nothing else: the first
    ``max_windows`` windows at the longest available length fix the token span, and each shorter length cuts
    that span into its own windows (:func:`mesanet.data.eval_windows`). The batch shrinks with the factor
    (``max(1, batch_size // factor)`` windows) so memory stays about constant. A factor whose windows cannot be
    cut (validation split shorter than one window) is reported unavailable with the reason.
    """
    from ..data import eval_windows

    where = "extrapolation"
    tokens = check_tokens(val_tokens, where)
    if not is_int(train_len, 2):
        raise ValueError(f"{where}: expected train_len to be an integer >= 2, got {train_len!r}")
    if not factors:
        raise ValueError(f"{where}: expected at least one factor")
    for f in factors:
        if not is_int(f, 1):
            raise ValueError(f"{where}: expected factors to be integers >= 1, got {list(factors)}")
    if max_windows is not None and not is_int(max_windows, 1):
        raise ValueError(f"{where}: expected max_windows to be None or an integer >= 1, got {max_windows!r}")
    _check_batch_size(batch_size, where)

    split_len = len(tokens)
    available = [f for f in factors if split_len >= f * train_len]
    if available:  # one token span for every factor: whole windows of the longest available length
        longest = max(available) * train_len
        count = len(tokens) // longest if max_windows is None else min(max_windows, len(tokens) // longest)
        tokens = tokens[: count * longest]
    results: dict[int, ExtrapolationResult] = {}
    for factor in sorted(set(factors)):
        seq_len = factor * train_len
        if factor not in available:
            reason = (
                f"the validation split has {split_len} tokens, fewer than one window of {seq_len} tokens "
                f"({factor} x the training length {train_len})"
            )
            results[factor] = ExtrapolationResult(factor, seq_len, None, reason)
            continue
        try:
            windows = eval_windows(tokens, seq_len)
        except ValueError as e:
            results[factor] = ExtrapolationResult(factor, seq_len, None, f"no evaluation windows of {seq_len} tokens: {e}")
            continue
        if len(windows) == 0:
            results[factor] = ExtrapolationResult(factor, seq_len, None, f"no evaluation windows of {seq_len} tokens")
            continue
        result = evaluate_lm(
            model, windows, batch_size=max(1, batch_size // factor), progress=progress, desc=f"eval x{factor} ({seq_len} tokens)"
        )
        results[factor] = ExtrapolationResult(factor, seq_len, result)
    return results


__all__ = [
    "ExtrapolationResult",
    "LMEvalResult",
    "check_tokens",
    "check_windows",
    "evaluate_lm",
    "extrapolation",
    "model_device",
    "perplexity",
]
