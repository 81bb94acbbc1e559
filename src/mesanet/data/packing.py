"""Tokenise the splits and pack them into memory-mapped token files.

Layout of one split's stream: ``EOD d1 EOD d2 EOD ... dn EOD`` - every document is preceded and
followed by the end-of-document id, so a document start always follows EOD (prompt generation with
``[eod_id] + tokens`` is in distribution). Tokens are stored raw (``uint16`` when ``vocab_size <=
65535``, else ``uint32``, native little-endian) in ``<cache_dir>/tokens/<key>/{train,val}.bin`` with a
``meta.json`` (dtype, token counts, hashes); ``key`` hashes the packing recipe, the corpus hash and
the tokenizer hash, so either changing rebuilds the entry. Files are written in batches (bounded
memory beyond the texts) inside a temporary folder that is renamed into place when complete.

Every file's BLAKE2b digest is recorded in ``meta.json`` when the entry is built and checked on every load
(about 11 ms for the standard-library corpus' 6.6 MB ``train.bin`` on 2 CPU cores): a file changed afterwards, even by one
byte and at the same size, is reported by name and the entry is set aside and rebuilt.
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
#: Bump when the entry format changes (2: content digests in meta.json); part of the key, so older entries
#: are never read (they stay on disk until the cache is deleted).
CACHE_FORMAT = 2
#: Content digest of the token files: BLAKE2b (stdlib, faster than SHA-256), read in blocks of ``HASH_BLOCK``.
HASH_NAME = "blake2b"
HASH_BLOCK = 1 << 22


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def tokens_key(corpus_hash: str, tokenizer_hash: str, dtype: np.dtype) -> str:
    ident = f"{PACKING_RECIPE}\0{CACHE_FORMAT}\0{corpus_hash}\0{tokenizer_hash}\0{dtype.str}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def file_digest(path: Path) -> str:
    """BLAKE2b (32 bytes, hex) of a file's content, read in blocks (bounded memory for any corpus size)."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


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


def pack_split(
    backend: Tokenizer, texts: list[str], eod_id: int, dtype: np.dtype, out: Path, progress: bool = True, desc: str = "tokenising"
) -> int:
    """Write ``EOD d1 EOD ... dn EOD`` for ``texts`` to ``out``; returns the number of tokens."""
    tok = _encoder(backend)
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    limit = np.iinfo(dtype).max
    eod = np.array([eod_id], dtype=dtype)
    total = 0
    with (
        open(out, "wb") as f,
        tqdm(total=sum(len(t) for t in texts), desc=desc, unit="char", unit_scale=True, disable=not progress, leave=False) as bar,
    ):
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


def build_tokens(
    root: Path,
    key: str,
    backend: Tokenizer,
    texts: dict[str, list[str]],
    eod_id: int,
    dtype: np.dtype,
    meta: dict,
    progress: bool = True,
) -> tuple[Path, bool]:
    """Build the cache entry ``root/key``, or find it if another process just did: (folder, built)."""
    folder = root / key
    with cache.lock(root, key):
        loaded, problem = read_tokens(folder)
        if loaded is not None:
            return folder, False
        if folder.exists():  # changed or damaged after it was built (a build is never partial): keep it aside, rebuild
            aside = cache.set_aside(folder)
            log.warning("%s; moved the entry to %s and rebuilding it", problem or f"token cache {folder} is damaged", aside)
        cache.remove_stale_tmp(root, key)
        with cache.atomic_dir(folder) as tmp:
            counts = {
                s: pack_split(backend, texts[s], eod_id, dtype, tmp / f"{s}.bin", progress, desc=f"tokenising {s}")
                for s in SPLITS
            }
            digests = {s: file_digest(tmp / f"{s}.bin") for s in SPLITS}
            cache.write_json_atomic(
                tmp / "meta.json",
                {**meta, "recipe": PACKING_RECIPE, "dtype": dtype.str, "tokens": counts, "eod_id": eod_id, HASH_NAME: digests},
            )
    return folder, True


def read_tokens(folder: Path, verify: bool = True) -> tuple[tuple[dict[str, np.ndarray], dict] | None, str | None]:
    """``((arrays, meta), None)`` for an intact entry (read-only memory maps); ``(None, None)`` when there is none;
    ``(None, problem)`` when it is inconsistent, the problem naming the file. ``verify``: also compare every
    file's content with the digest recorded when it was built (``False``: sizes only, for a quick look)."""
    meta_file = folder / "meta.json"
    if not meta_file.exists():
        return None, (f"token cache {folder} has no meta.json" if folder.exists() else None)
    meta = cache.read_json(meta_file)
    if meta is None:
        return None, f"token cache file {meta_file} is unreadable"
    try:
        dtype = np.dtype(meta["dtype"])
        arrays = {}
        for s in SPLITS:
            path = folder / f"{s}.bin"
            n = int(meta["tokens"][s])
            if not path.is_file() or path.stat().st_size != n * dtype.itemsize:
                return None, f"token cache file {path} is missing or has the wrong size (expected {n} tokens)"
            if verify and file_digest(path) != meta[HASH_NAME][s]:
                return None, (
                    f"token cache file {path} does not match the {HASH_NAME} digest recorded when it was "
                    "built (changed or damaged since)"
                )
            arrays[s] = np.memmap(path, dtype=dtype, mode="r", shape=(n,))
    except (KeyError, TypeError, ValueError, OSError) as e:
        return None, f"token cache file {meta_file} is inconsistent ({type(e).__name__}: {e})"
    return (arrays, meta), None


def load_tokens(folder: Path, verify: bool = True) -> tuple[dict[str, np.ndarray], dict] | None:
    """Read-only memory maps of an intact entry and its meta, or None if missing or inconsistent (:func:`read_tokens`)."""
    return read_tokens(folder, verify)[0]
