"""Text generation from a model (or a checkpoint directory), optionally streamed piece by piece.

Sampling uses Hugging Face ``generate`` (MesaNet decodes with its constant-size recurrent cache):
``temperature == 0`` is greedy; otherwise softmax sampling at that temperature, optionally truncated to the
``top_k`` most likely tokens and / or the smallest set of mass ``top_p``. ``seed`` makes sampling
reproducible without touching the global RNG. ``stream`` receives the text as it is produced; the pieces
concatenate to the returned text.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from mesanet.utils.validation import is_int, is_real

from .checkpoint import load_checkpoint
from .evaluate import model_device

#: Special tokens (EOS / padding) are not part of the text.
DECODE_KWARGS = dict(skip_special_tokens=True)


class CallbackStreamer(BaseStreamer):
    """``generate`` streamer calling ``callback(text_piece)`` as tokens arrive (the prompt is skipped).

    The generated tokens are decoded as a whole each time, and the new end of that text is emitted once it no
    longer ends in an incomplete character (U+FFFD from a multi-byte character split across tokens). With a
    prefix-stable decoder (byte-level BPE, as here) the pieces concatenate to ``decode(all generated tokens)``.
    """

    def __init__(self, tokenizer, callback: Callable[[str], None], **decode_kwargs):
        self.tokenizer, self.callback, self.decode_kwargs = tokenizer, callback, decode_kwargs
        self.tokens: list[int] = []
        self.emitted = ""
        self._prompt_pending = True

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1:
            if value.shape[0] > 1:
                raise ValueError("CallbackStreamer: streaming supports a single sequence (batch size 1)")
            value = value[0]
        if self._prompt_pending:  # generate() hands over the prompt first
            self._prompt_pending = False
            return
        self.tokens.extend(int(t) for t in value.tolist())
        text = self.text()
        if not text.endswith("\ufffd"):
            self._emit(text)

    def end(self) -> None:
        self._emit(self.text())

    def text(self) -> str:
        return self.tokenizer.decode(self.tokens, **self.decode_kwargs)

    def _emit(self, text: str) -> None:
        if text.startswith(self.emitted) and len(text) > len(self.emitted):
            piece = text[len(self.emitted) :]
            self.emitted = text
            self.callback(piece)


def _check_arguments(prompt, max_new_tokens, temperature, top_k, top_p, seed) -> None:
    where = "generate_text"
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: expected prompt to be a string, got {type(prompt).__name__}")
    if not is_int(max_new_tokens, 1):
        raise ValueError(f"{where}: expected max_new_tokens to be an integer >= 1, got {max_new_tokens!r}")
    if not is_real(temperature, finite=False) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{where}: expected temperature to be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and not is_int(top_k, 1):
        raise ValueError(f"{where}: expected top_k to be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and (not is_real(top_p, finite=False) or not 0 < top_p <= 1):
        raise ValueError(f"{where}: expected top_p to be None or a number with 0 < top_p <= 1, got {top_p!r}")
    if seed is not None and (not is_int(seed)):
        raise ValueError(f"{where}: expected seed to be None or an integer, got {seed!r}")


def _prompt_ids(tokenizer, prompt: str, device: torch.device) -> torch.Tensor:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ValueError("generate_text: the prompt is empty and the tokenizer has no BOS/EOS token to start from")
        ids = torch.tensor([[start]])
    return ids.to(device)


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    stream: Optional[Callable[[str], None]] = None,
    stop_at_eos: bool = True,
) -> list[int]:
    """The new token ids (without the prompt, and without the EOS that ended generation); arguments as for
    :func:`generate_text`."""
    _check_arguments(prompt, max_new_tokens, temperature, top_k, top_p, seed)
    device = model_device(model)
    ids = _prompt_ids(tokenizer, prompt, device)
    eos = tokenizer.eos_token_id
    if eos is None:  # fall back on the model's own EOS
        eos = getattr(model.generation_config, "eos_token_id", None) if hasattr(model, "generation_config") else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if isinstance(eos, int) else 0)
    greedy = temperature == 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        num_beams=1,
        temperature=None if greedy else float(temperature),
        top_k=None if greedy else top_k,
        top_p=None if greedy else (None if top_p is None else float(top_p)),
        # [] (not None): None would be filled in with the model's default EOS and stop generation after all
        eos_token_id=eos if stop_at_eos and eos is not None else [],
        pad_token_id=pad,
        use_cache=True,
    )
    streamer = CallbackStreamer(tokenizer, stream, **DECODE_KWARGS) if stream is not None else None
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config, streamer=streamer)
    finally:
        model.train(was_training)
    new_tokens = out[0, ids.shape[1] :].tolist()
    stops = set(eos if isinstance(eos, list) else [eos]) if stop_at_eos and eos is not None else set()
    if new_tokens and new_tokens[-1] in stops:
        new_tokens = new_tokens[:-1]
    return new_tokens


def generate_text(
    model: nn.Module,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    stream: Optional[Callable[[str], None]] = None,
    stop_at_eos: bool = True,
) -> str:
    """Continue ``prompt`` by up to ``max_new_tokens`` tokens; returns the generated text (without the prompt).

    ``temperature == 0``: greedy (``top_k`` / ``top_p`` ignored); otherwise sampling at that temperature,
    truncated to the ``top_k`` most likely tokens and / or the nucleus of mass ``top_p``. ``seed``: reproducible
    sampling (the global RNG is left as it was). ``stream``: called with each new piece of text as it is
    decoded, e.g. ``lambda s: print(s, end="", flush=True)``; the pieces concatenate to the returned text.
    ``stop_at_eos``: stop at the tokenizer's EOS token (the data pipeline's end-of-document marker)."""
    ids = generate_ids(
        model,
        tokenizer,
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stream=stream,
        stop_at_eos=stop_at_eos,
    )
    return tokenizer.decode(ids, **DECODE_KWARGS)


def generate_from_checkpoint(path: str | Path, prompt: str, *, device: str = "cpu", verify: bool = True, **kwargs) -> str:
    """:func:`generate_text` with the model and tokenizer loaded from a model directory (``runs/<name>/final``);
    ``verify=False`` loads files that no longer match the SHA-256 training recorded."""
    loaded = load_checkpoint(path, device=device, verify=verify)
    return generate_text(loaded.model, loaded.tokenizer, prompt, **kwargs)


__all__ = ["CallbackStreamer", "generate_from_checkpoint", "generate_ids", "generate_text"]
