"""``prepare_data``: corpus -> split -> cached tokenizer -> cached packed token arrays.

Cache layout under ``DataConfig.cache_dir`` (safe to delete; everything is rebuilt on demand)::

    corpus/<memo>.json                  corpus hashes of unchanged files (skips re-reading them)
    tokenizer/<key>/                    tokenizer.json, tokenizer_config.json, meta.json
                                        key = sha256(recipe, train-split hash, vocab_size)
    tokens/<key>/                       train.bin, val.bin (raw uint16/uint32), meta.json
                                        key = sha256(recipe, format, corpus hash, tokenizer hash, dtype)

Entries are written atomically and never overwritten or deleted, so a failed or interrupted run (or
a bad config) loses nothing already built. Each entry records content digests when it is built and is
checked against them on load; an entry changed afterwards is set aside (``.damaged-*``, named in a
warning) and rebuilt. Token ids beyond the tokenizer's vocabulary are an error naming the file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerFast

from . import cache, corpus_memo, packing
from .config import EOD_TOKEN, PAD_TOKEN, DataConfig, DataError
from .corpus import Corpus, build_corpus, source_stats
from .sources import resolve_source
from .split import select_subset
from .tokenizer import load_or_train, special_ids, tokenizer_key

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Everything a run needs from the data side.

    ``train`` / ``val`` are read-only 1-D memory maps of token ids (``EOD d1 EOD d2 ... EOD``).
    ``stats`` is JSON-serialisable and meant to be saved with every run (it holds the corpus and
    tokenizer hashes, per-split documents / files / bytes / tokens, and the source description).
    ``cache_hits`` says which stages were reused (``corpus_memo``, ``tokenizer``, ``tokens``);
    ``documents`` lists each split's document names (relative paths / dataset rows) in packing order.
    """

    tokenizer: PreTrainedTokenizerFast
    train: np.ndarray
    val: np.ndarray
    eod_id: int
    corpus_hash: str
    tokenizer_hash: str
    stats: dict
    pad_id: int = 1
    tokenizer_dir: Path | None = None
    tokens_dir: Path | None = None
    cache_hits: dict = field(default_factory=dict)
    documents: dict = field(default_factory=dict)  # split -> document names, in packing order

    @property
    def vocab_size(self) -> int:
        """Tokens in the tokenizer (= ``DataConfig.vocab_size`` unless the corpus ran out of merges)."""
        return len(self.tokenizer)

    def save_tokenizer(self, folder: str | Path) -> None:
        """Write the tokenizer beside a model, loadable with ``AutoTokenizer.from_pretrained(folder)``."""
        self.tokenizer.save_pretrained(str(folder))


def prepare_data(cfg: DataConfig, *, progress: bool = True) -> PreparedData:
    """Load, split, tokenise and cache ``cfg``'s corpus (see the module docstring for the caches)."""
    if not isinstance(cfg, DataConfig):
        raise TypeError(f"prepare_data: expected a DataConfig, got {type(cfg).__name__}")
    start = time.perf_counter()
    root = cfg.cache_root
    candidates = resolve_source(cfg)
    dtype = packing.token_dtype(cfg.vocab_size)
    hits = {"corpus_memo": False, "tokenizer": False, "tokens": False}

    # Fast path: unchanged files whose corpus, tokenizer and tokens are all cached.
    corpus: Corpus | None = None
    memo_key = None
    selected = select_subset(candidates.names, cfg.max_documents, cfg.seed)
    fingerprint = candidates.fingerprint(selected)
    if fingerprint is not None:
        memo_key = corpus_memo.memo_key(cfg, candidates, fingerprint)
        memo = corpus_memo.lookup(root / "corpus", memo_key)
        if memo is not None and _fully_cached(root, memo, cfg.vocab_size, dtype):
            corpus, hits["corpus_memo"] = memo, True
            corpus.stats.update(source_stats(cfg, candidates, len(selected)))
    if corpus is None:
        corpus = build_corpus(cfg, candidates, progress=progress)
        if memo_key is not None:
            corpus_memo.store(root / "corpus", memo_key, corpus, fingerprint)

    def texts() -> dict[str, list[str]]:
        """The splits' texts; read now if only the memo was loaded (e.g. a cache entry was damaged)."""
        nonlocal corpus
        if corpus.train.texts is None or corpus.val.texts is None:
            fresh = build_corpus(cfg, candidates, progress=progress)
            if fresh.corpus_hash != corpus.corpus_hash:
                raise DataError(f"the corpus {candidates.description} changed while being prepared; run again")
            corpus = fresh
        return {"train": corpus.train.texts, "val": corpus.val.texts}

    tokenizer, tok_dir, tok_hash, hits["tokenizer"] = load_or_train(
        root / "tokenizer",
        corpus.train.hash,
        cfg.vocab_size,
        lambda: texts()["train"],
        progress=progress,
    )
    eod_id, pad_id = special_ids(tokenizer)
    key = packing.tokens_key(corpus.corpus_hash, tok_hash, dtype)
    loaded = packing.load_tokens(root / "tokens" / key)  # content digests checked
    hits["tokens"] = loaded is not None
    if loaded is None:
        meta = {"corpus_hash": corpus.corpus_hash, "tokenizer_hash": tok_hash}
        folder, built = packing.build_tokens(
            root / "tokens", key, tokenizer.backend_tokenizer, texts(), eod_id, dtype, meta, progress=progress
        )
        hits["tokens"] = not built
        loaded = packing.load_tokens(folder, verify=False)  # just built or verified by build_tokens
        if loaded is None:
            raise RuntimeError(f"token cache {folder} is incomplete right after building it")
    arrays, meta = loaded
    _check_ids(arrays, len(tokenizer), root / "tokens" / key)

    stats = dict(corpus.stats)
    for s, docs in (("train", corpus.train), ("val", corpus.val)):
        stats[s] = {**docs.stats, "tokens": int(arrays[s].size), "windows": int(arrays[s].size) // cfg.seq_len, "hash": docs.hash}
    stats.update(
        corpus_hash=corpus.corpus_hash,
        tokenizer_hash=tok_hash,
        eod_id=eod_id,
        pad_id=pad_id,
        special_tokens={"eod": EOD_TOKEN, "pad": PAD_TOKEN},
        vocab_size={"requested": cfg.vocab_size, "actual": len(tokenizer)},
        token_dtype=dtype.name,
        packing=f"{packing.PACKING_RECIPE}: EOD d1 EOD d2 ... dn EOD",
    )
    if len(tokenizer) < cfg.vocab_size:
        log.warning(
            "the training split ran out of BPE merges: the tokenizer has %d tokens, not vocab_size=%d",
            len(tokenizer),
            cfg.vocab_size,
        )
    _check_seq_len(cfg, arrays)
    log.info("data ready in %.2fs (cache hits: %s): %s", time.perf_counter() - start, hits, corpus.stats["description"])
    return PreparedData(
        tokenizer=tokenizer,
        train=arrays["train"],
        val=arrays["val"],
        eod_id=eod_id,
        pad_id=pad_id,
        corpus_hash=corpus.corpus_hash,
        tokenizer_hash=tok_hash,
        stats=stats,
        tokenizer_dir=tok_dir,
        tokens_dir=root / "tokens" / key,
        cache_hits=hits,
        documents={"train": list(corpus.train.names), "val": list(corpus.val.names)},
    )


def _fully_cached(root: Path, memo: Corpus, vocab_size: int, dtype: np.dtype) -> bool:
    """Whether tokenizer and tokens of a memoised corpus are cached (so no text is needed)."""
    tok_meta = cache.read_json(root / "tokenizer" / tokenizer_key(memo.train.hash, vocab_size) / "meta.json")
    tok_hash = tok_meta.get("tokenizer_hash") if tok_meta else None
    if not isinstance(tok_hash, str):
        return False
    key = packing.tokens_key(memo.corpus_hash, tok_hash, dtype)  # a quick look: the real loads verify the contents
    return packing.load_tokens(root / "tokens" / key, verify=False) is not None


def _check_ids(arrays: dict[str, np.ndarray], vocab_size: int, folder: Path) -> None:
    """``DataError`` naming the file when a token id does not exist in the tokenizer (the model would fail on it)."""
    for split, arr in arrays.items():
        top = int(arr.max()) if arr.size else -1
        if top >= vocab_size:
            raise DataError(
                f"token cache file {folder / f'{split}.bin'} holds token id {top}, but the tokenizer has only {vocab_size} "
                f"tokens: the cache does not belong to this tokenizer; delete {folder} to rebuild it"
            )


def _check_seq_len(cfg: DataConfig, arrays: dict[str, np.ndarray]) -> None:
    for split in ("val", "train"):
        n = int(arrays[split].size)
        if n < cfg.seq_len:
            raise DataError(
                f"seq_len={cfg.seq_len} is larger than the whole {split} split ({n} tokens, "
                f"{'validation' if split == 'val' else 'training'} needs at least one window of seq_len tokens); "
                f"use seq_len <= {n}, or more data"
                + (" or a larger val_fraction" if split == "val" else "")
                + " (the caches already built were kept)"
            )
