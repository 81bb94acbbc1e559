"""Byte-level BPE tokenizer: trained with ``tokenizers`` on the training split, cached, HF-loadable.

Recipe: GPT-2 style byte-level pre-tokenisation (regex split, no prefix space) and decoder, BPE over
the 256 byte symbols, ``vocab_size`` including the special tokens ``<|endoftext|>`` (id 0: end of
document, also bos/eos) and ``<|pad|>`` (id 1: padding only, never in the training stream). No
special tokens are added on encoding (like GPT-2): ``decode(encode(text)) == text`` for any text.

Cache: ``<cache_dir>/tokenizer/<key>/`` with ``tokenizer.json`` + ``tokenizer_config.json`` (what
``save_pretrained`` writes, so ``AutoTokenizer.from_pretrained`` loads it) and ``meta.json``;
``key`` hashes the recipe, the training split's content hash and ``vocab_size``. The tokenizer's
identity, ``tokenizer_hash``, is the sha256 of its ``tokenizer.json``; ``meta.json`` records it, and a cached
``tokenizer.json`` that no longer matches it (or does not load) is named in a warning, set aside and retrained.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from . import cache
from .config import EOD_TOKEN, PAD_TOKEN, SPECIAL_TOKENS

log = logging.getLogger(__name__)

#: Bump when the training recipe changes (invalidates cached tokenizers).
TOKENIZER_RECIPE = "bytelevel-bpe-v1"
#: The files of a cache entry (``save_pretrained`` output plus the entry's meta).
ENTRY_FILES = ("meta.json", "tokenizer.json", "tokenizer_config.json")


def tokenizer_key(train_hash: str, vocab_size: int) -> str:
    return hashlib.sha256(f"{TOKENIZER_RECIPE}\0{train_hash}\0{vocab_size}".encode()).hexdigest()[:24]


def train_bpe(texts: list[str], vocab_size: int, progress: bool = True) -> Tokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` (deterministic for fixed input)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers fast tokenizer around ``tok`` with mesanet's special-token roles."""
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOD_TOKEN, bos_token=EOD_TOKEN, pad_token=PAD_TOKEN)


def file_hash(folder: Path) -> str:
    return hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """Load a saved mesanet tokenizer (the same path users take: ``AutoTokenizer.from_pretrained``)."""
    tok = AutoTokenizer.from_pretrained(str(folder))
    for token in SPECIAL_TOKENS:
        if tok.convert_tokens_to_ids(token) is None:
            raise ValueError(f"tokenizer at {folder}: special token {token!r} is missing")
    return tok


def load_or_train(
    root: Path, train_hash: str, vocab_size: int, texts: Callable[[], list[str]], progress: bool = True
) -> tuple[PreTrainedTokenizerFast, Path, str, bool]:
    """(tokenizer, its folder, tokenizer_hash, cache_hit); ``texts()`` is called only when training."""
    key = tokenizer_key(train_hash, vocab_size)
    folder = root / key
    tok, _ = _load_cached(folder)
    hit = tok is not None
    if not hit:
        with cache.lock(root, key):
            tok, problem = _load_cached(folder)
            hit = tok is not None
            if not hit:
                if folder.exists():  # damaged after it was built (a build is never partial): keep it aside
                    aside = cache.set_aside(folder)
                    log.warning("%s; moved the entry to %s and retraining the tokenizer", problem, aside)
                cache.remove_stale_tmp(root, key)
                bpe = train_bpe(texts(), vocab_size, progress=progress)
                with cache.atomic_dir(folder) as tmp:
                    wrap(bpe).save_pretrained(str(tmp))
                    meta = {
                        "recipe": TOKENIZER_RECIPE,
                        "train_hash": train_hash,
                        "vocab_size": vocab_size,
                        "actual_vocab_size": bpe.get_vocab_size(with_added_tokens=True),
                        "tokenizer_hash": file_hash(tmp),
                    }
                    cache.write_json_atomic(tmp / "meta.json", meta)
                tok = load_tokenizer(folder)
    return tok, folder, file_hash(folder), hit


def _load_cached(folder: Path) -> tuple[PreTrainedTokenizerFast | None, str | None]:
    """``(tokenizer, None)`` from an intact cache entry; ``(None, None)`` without one; ``(None, problem)`` for a
    damaged one, the problem naming the file (missing, changed since it was built, or not loadable)."""
    if not folder.exists():
        return None, None
    missing = [name for name in ENTRY_FILES if not (folder / name).is_file()]
    if missing:
        return None, f"cached tokenizer {folder} is incomplete: {', '.join(missing)} missing"
    meta = cache.read_json(folder / "meta.json")
    if meta is None:
        return None, f"cached tokenizer file {folder / 'meta.json'} is unreadable"
    if file_hash(folder) != meta.get("tokenizer_hash"):
        return None, (
            f"cached tokenizer file {folder / 'tokenizer.json'} does not match the sha256 recorded in "
            "meta.json when it was built (changed or damaged since)"
        )
    try:
        return load_tokenizer(folder), None
    except Exception as e:  # noqa: BLE001 - whatever a broken file raises (UnicodeDecodeError, JSON, tokenizers)
        return None, f"cached tokenizer {folder / 'tokenizer.json'} does not load ({type(e).__name__}: {e})"


def special_ids(tok: PreTrainedTokenizerFast) -> tuple[int, int]:
    """(eod_id, pad_id)."""
    return tok.convert_tokens_to_ids(EOD_TOKEN), tok.convert_tokens_to_ids(PAD_TOKEN)
