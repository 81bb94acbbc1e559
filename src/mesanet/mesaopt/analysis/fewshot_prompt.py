"""The tuned prompt of the few-shot analysis: ``P`` learned vectors prepended to every example's tokens
(:class:`PromptTokens`), the model's predictions with them, and Adam on the prompt alone with the model frozen
(:func:`tune_prompt`). The analysis: :mod:`.fewshot`."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from mesanet.utils.validation import is_int

from ..data.fewshot import FewShotBatch, FewShotConfig, generate_fewshot

_TUNE_SEED_BASE = 10**6  # tuning batches; evaluation seeds are small integers


class PromptTokens(nn.Module):
    """Learned prompt vectors in token space: ``eos [n]`` and ``prefix [P, n]`` (``P = 0``: none), both
    initialised ``N(0, I)`` from ``seed``. ``forward(batch) -> tokens [B, T, n]`` with the EOS / prefix slots
    (``batch.eos_mask`` / ``batch.prefix_mask``) filled in."""

    def __init__(self, dim: int, prefix_len: int = 0, seed: int = 0) -> None:
        super().__init__()
        if not is_int(dim) or dim < 1 or not is_int(prefix_len) or prefix_len < 0:
            raise ValueError(f"PromptTokens: expected dim >= 1 and prefix_len >= 0, got {dim!r}, {prefix_len!r}")
        gen = torch.Generator().manual_seed(seed)
        self.eos = nn.Parameter(torch.randn(dim, generator=gen))
        self.prefix = nn.Parameter(torch.randn(prefix_len, dim, generator=gen)) if prefix_len else None

    def forward(self, batch: FewShotBatch) -> Tensor:
        tokens = batch.tokens.to(self.eos.dtype)
        b, t, n = tokens.shape
        if n != self.eos.shape[0]:
            raise ValueError(f"PromptTokens: expected tokens of width {self.eos.shape[0]}, got {n}")
        tokens = torch.where(batch.eos_mask[..., None], self.eos, tokens)
        p = int(batch.prefix_mask[0].sum())
        if p:
            if self.prefix is None or self.prefix.shape[0] != p or not batch.prefix_mask[:, :p].all():
                have = 0 if self.prefix is None else self.prefix.shape[0]
                raise ValueError(f"PromptTokens: batch has {p} leading prefix slots, this prompt has {have} tokens")
            filled = torch.cat([self.prefix, self.prefix.new_zeros(t - p, n)], dim=0)
            tokens = torch.where(batch.prefix_mask[..., None], filled, tokens)
        return tokens


def predict_with_prompt(model: Callable[[Tensor], Tensor], batch: FewShotBatch, prompt: PromptTokens | None = None) -> Tensor:
    """Model output ``[B, T, n]`` on the batch tokens (EOS / prefix slots filled by ``prompt`` if given)."""
    tokens = batch.tokens if prompt is None else prompt(batch)
    return model(tokens)


def _frozen(model: nn.Module):
    class _Ctx:
        def __enter__(self):
            self.flags = [(p, p.requires_grad) for p in model.parameters()]
            for p, _ in self.flags:
                p.requires_grad_(False)
            return model

        def __exit__(self, *exc):
            for p, flag in self.flags:
                p.requires_grad_(flag)
            return False

    return _Ctx()


def tune_prompt(
    model: nn.Module,
    fs_cfg: FewShotConfig,
    prompt: PromptTokens,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    progress: bool = False,
    desc: str = "tune",
) -> list[float]:
    """Adam on ``prompt``'s vectors only (the model is frozen and left bit-identical) minimising the mean
    pair loss ``L_i`` over fresh batches of ``fs_cfg`` prompts (seeds ``10**6 * (1 + seed) + step``).
    Returns the per-step training losses."""
    from tqdm.auto import tqdm

    if not is_int(steps) or steps < 0:
        raise ValueError(f"steps: expected an int >= 0, got {steps!r}")
    opt = torch.optim.Adam(prompt.parameters(), lr=lr)
    losses: list[float] = []
    was_training = model.training
    model.eval()
    with _frozen(model):
        for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
            batch = generate_fewshot(fs_cfg, batch_size, seed=_TUNE_SEED_BASE * (1 + seed) + step)
            loss = batch.pair_losses(predict_with_prompt(model, batch, prompt)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    model.train(was_training)
    return losses
