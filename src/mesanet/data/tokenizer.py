"""Byte-level BPE tokenizer: trained with ``tokenizers`` on the training split, cached, HF-loadable.

Recipe: GPT-2 style byte-level pre-tokenisation (regex split, no prefix space) and decoder, BPE over
the 256 byte symbols, ``vocab_size`` including the special tokens ``<|endoftext|>`` (id 0: end of
document, also bos/eos) and ``<|pad|>`` (id 1: padding only, never in the training stream). No
special tokens are added on encoding (like GPT-2): ``decode(encode(text)) == text`` for any text.

Cache: ``<cache_dir>/tokenizer/<key>/`` with ``tokenizer.json`` + ``tokenizer_config.json`` (what
``save_pretrained`` writes, so ``AutoTokenizer.from_pretrained`` loads it) and ``meta.json``;
``key`` hashes the recipe, the training split's content hash and ``vocab_size``. The tokenizer's
identity, ``tokenizer_hash``, is the sha256 of its ``tokenizer.json``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from . import cache
from .config import EOD_TOKEN, PAD_TOKEN, SPECIAL_TOKENS

#: Bump when the training recipe changes (invalidates cached tokenizers).
TOKENIZER_RECIPE = "bytelevel-bpe-v1"


def tokenizer_key(train_hash: str, vocab_size: int) -> str:
    return hashlib.sha256(f"{TOKENIZER_RECIPE}\0{train_hash}\0{vocab_size}".encode()).hexdigest()[:24]


def train_bpe(texts: list[str], vocab_size: int, progress: bool = True) -> Tokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` (deterministic for fixed input)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=progress,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers fast tokenizer around ``tok`` with mesanet's special-token roles."""
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOD_TOKEN, bos_token=EOD_TOKEN,
                                   pad_token=PAD_TOKEN)


def file_hash(folder: Path) -> str:
    return hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """Load a saved mesanet tokenizer (the same path users take: ``AutoTokenizer.from_pretrained``)."""
    tok = AutoTokenizer.from_pretrained(str(folder))
    for token in SPECIAL_TOKENS:
        if tok.convert_tokens_to_ids(token) is None:
            raise ValueError(f"tokenizer at {folder}: special token {token!r} is missing")
    return tok


def load_or_train(root: Path, train_hash: str, vocab_size: int, texts: Callable[[], list[str]],
                  progress: bool = True) -> tuple[PreTrainedTokenizerFast, Path, str, bool]:
    """(tokenizer, its folder, tokenizer_hash, cache_hit); ``texts()`` is called only when training."""
    key = tokenizer_key(train_hash, vocab_size)
    folder = root / key
    hit = _complete(folder)
    if not hit:
        with cache.lock(root, key):
            hit = _complete(folder)
            if not hit:
                if folder.exists():  # damaged by hand (a build is never partial): keep it aside
                    cache.set_aside(folder)
                cache.remove_stale_tmp(root, key)
                tok = train_bpe(texts(), vocab_size, progress=progress)
                with cache.atomic_dir(folder) as tmp:
                    wrap(tok).save_pretrained(str(tmp))
                    meta = {"recipe": TOKENIZER_RECIPE, "train_hash": train_hash, "vocab_size": vocab_size,
                            "actual_vocab_size": tok.get_vocab_size(with_added_tokens=True),
                            "tokenizer_hash": file_hash(tmp)}
                    cache.write_json_atomic(tmp / "meta.json", meta)
    return load_tokenizer(folder), folder, file_hash(folder), hit


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("meta.json", "tokenizer.json", "tokenizer_config.json"))


def special_ids(tok: PreTrainedTokenizerFast) -> tuple[int, int]:
    """(eod_id, pad_id)."""
    return tok.convert_tokens_to_ids(EOD_TOKEN), tok.convert_tokens_to_ids(PAD_TOKEN)
