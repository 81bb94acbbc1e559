"""Memo of corpus hashes for file sources, so a fully cached ``prepare_data`` need not re-read the corpus.

Keyed by the source, the selection/split settings and every selected file's (name, size, mtime_ns),
like git's index. To rule out edits within one timestamp tick ("racy" files), an entry is trusted only
if every file's mtime is at least ``RACY_MARGIN_NS`` older than the moment the entry was written;
otherwise the corpus is read and hashed as usual. Any change of a file's size or mtime, or any file
added or removed, changes the key.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .cache import read_json, write_json_atomic
from .config import DataConfig
from .corpus import CORPUS_RECIPE, Corpus, SplitDocs, needle_settings
from .sources import Candidates

RACY_MARGIN_NS = 2_000_000_000


def memo_key(cfg: DataConfig, candidates: Candidates, fingerprint: list) -> str:
    ident = {
        "recipe": CORPUS_RECIPE,
        "kind": candidates.kind,
        "description": candidates.description,
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "max_documents": cfg.max_documents,
        "candidates": len(candidates.names),
        "files": fingerprint,
    }
    if cfg.needle_fraction > 0:  # absent otherwise, so memos written before the needle fields stay valid
        ident["needle"] = needle_settings(cfg)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def lookup(root: Path, key: str) -> Corpus | None:
    """The memoised corpus (hashes and stats only, no texts), or None."""
    entry = read_json(root / f"{key}.json")
    if entry is None or entry.get("max_mtime_ns", 0) > entry.get("written_ns", 0) - RACY_MARGIN_NS:
        return None
    try:
        splits = {
            s: SplitDocs(names=entry[s]["names"], texts=None, hash=entry[s]["hash"], stats=entry[s]["stats"])
            for s in ("train", "val")
        }
        return Corpus(train=splits["train"], val=splits["val"], corpus_hash=entry["corpus_hash"], stats=entry["stats"])
    except (KeyError, TypeError):
        return None


def store(root: Path, key: str, corpus: Corpus, fingerprint: list) -> None:
    entry = {
        "corpus_hash": corpus.corpus_hash,
        "stats": corpus.stats,
        "written_ns": time.time_ns(),
        "max_mtime_ns": max((f[2] for f in fingerprint), default=0),
    }
    for s, docs in (("train", corpus.train), ("val", corpus.val)):
        entry[s] = {"names": docs.names, "hash": docs.hash, "stats": docs.stats}
    write_json_atomic(root / f"{key}.json", entry)
