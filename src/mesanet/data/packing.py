"""Tokenise the splits and pack them into memory-mapped token files.

Layout of one split's stream: ``EOD d1 EOD d2 EOD ... dn EOD`` - every document is preceded and
followed by the end-of-document id, so a document start always follows EOD (prompt generation with
``[eod_id] + tokens`` is in distribution). Tokens are stored raw (``uint16`` when ``vocab_size <=
65535``, else ``uint32``, native little-endian) in ``<cache_dir>/tokens/<key>/{train,val}.bin`` with a
``meta.json`` (dtype, token counts, hashes); ``key`` hashes the packing recipe, the corpus hash and
the tokenizer hash, so either changing rebuilds the entry. Files are written in batches (bounded
memory beyond the texts) inside a temporary folder that is renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterable

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from . import cache

log = logging.getLogger(__name__)

#: Bump when the stream layout changes (invalidates token caches).
PACKING_RECIPE = "eod-around-v1"
SPLITS = ("train", "val")
#: Characters per ``encode_batch`` call (bounded memory, a progress tick per batch).
BATCH_CHARS = 1 << 20


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def tokens_key(corpus_hash: str, tokenizer_hash: str, dtype: np.dtype) -> str:
    return hashlib.sha256(f"{PACKING_RECIPE}\0{corpus_hash}\0{tokenizer_hash}\0{dtype.str}".encode()).hexdigest()[:24]


def _batches(texts: list[str]) -> Iterable[list[str]]:
    batch, size = [], 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encoder(backend: Tokenizer) -> Tokenizer:
    """A private copy of the backend with truncation and padding off (documents are never cut)."""
    tok = Tokenizer.from_str(backend.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok


def pack_split(backend: Tokenizer, texts: list[str], eod_id: int, dtype: np.dtype, out: Path,
               progress: bool = True, desc: str = "tokenising") -> int:
    """Write ``EOD d1 EOD ... dn EOD`` for ``texts`` to ``out``; returns the number of tokens."""
    tok = _encoder(backend)
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    limit = np.iinfo(dtype).max
    eod = np.array([eod_id], dtype=dtype)
    total = 0
    with open(out, "wb") as f, tqdm(total=sum(len(t) for t in texts), desc=desc, unit="char",
                                     unit_scale=True, disable=not progress, leave=False) as bar:
        f.write(eod.tobytes())
        total += 1
        for batch in _batches(texts):
            pieces = []
            for enc in encode(batch, add_special_tokens=False):
                ids = np.asarray(enc.ids, dtype=np.int64)
                if ids.size and ids.max() > limit:
                    raise ValueError(f"token id {int(ids.max())} does not fit {dtype}")
                pieces.append(ids.astype(dtype))
                pieces.append(eod)
            chunk = np.concatenate(pieces)
            f.write(chunk.tobytes())
            total += int(chunk.size)
            bar.update(sum(len(t) for t in batch))
    return total


def build_tokens(root: Path, key: str, backend: Tokenizer, texts: dict[str, list[str]], eod_id: int,
                 dtype: np.dtype, meta: dict, progress: bool = True) -> tuple[Path, bool]:
    """Build the cache entry ``root/key``, or find it if another process just did: (folder, built)."""
    folder = root / key
    with cache.lock(root, key):
        if load_tokens(folder) is not None:
            return folder, False
        if folder.exists():  # damaged by hand (a complete build is never partial): keep it aside, rebuild
            aside = cache.set_aside(folder)
            log.warning("token cache %s is damaged; moved it to %s and rebuilding", folder, aside)
        cache.remove_stale_tmp(root, key)
        with cache.atomic_dir(folder) as tmp:
            counts = {s: pack_split(backend, texts[s], eod_id, dtype, tmp / f"{s}.bin", progress,
                                    desc=f"tokenising {s}") for s in SPLITS}
            cache.write_json_atomic(tmp / "meta.json", {**meta, "recipe": PACKING_RECIPE, "dtype": dtype.str,
                                                        "tokens": counts, "eod_id": eod_id})
    return folder, True


def load_tokens(folder: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    """Read-only memory maps of a complete entry and its meta, or None if missing/inconsistent."""
    meta = cache.read_json(folder / "meta.json")
    if meta is None:
        return None
    try:
        dtype = np.dtype(meta["dtype"])
        arrays = {}
        for s in SPLITS:
            path = folder / f"{s}.bin"
            n = int(meta["tokens"][s])
            if path.stat().st_size != n * dtype.itemsize:
                return None
            arrays[s] = np.memmap(path, dtype=dtype, mode="r", shape=(n,))
    except (KeyError, TypeError, ValueError, OSError):
        return None
    return arrays, meta
