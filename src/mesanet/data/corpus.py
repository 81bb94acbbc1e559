"""The corpus: selected documents, split into train / validation, in packing order, with content hashes.

``build_corpus`` reads the documents chosen by ``split`` and hashes each split's (name, text) pairs in
packing order: ``train_hash`` keys the tokenizer, ``corpus_hash`` (both splits) keys the token cache
and is recorded with every run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .config import DataConfig, DataError
from .needle_docs import NEEDLE_RECIPE, is_needle_document, needle_documents, needle_stats
from .sources import Candidates, FileCandidates
from .split import assign_validation, cut_document, packing_order, select_subset

#: Bump when the meaning of the corpus hash changes (selection, split or ordering rules).
CORPUS_RECIPE = "corpus-v1"
SPLIT_RULE = (
    "keyed-hash: val iff sha256('split', seed, name) < val_fraction (no split left empty; a "
    "single document is cut at a line break); max_documents keeps the smallest "
    "sha256('subset', seed, name); packing order by sha256('order', seed, name)"
)


@dataclass
class SplitDocs:
    """One split's documents in packing order (``texts`` is None when only the hashes are known)."""

    names: list[str]
    texts: list[str] | None
    hash: str
    stats: dict  # documents, files, bytes (UTF-8 of the decoded text)


@dataclass
class Corpus:
    train: SplitDocs
    val: SplitDocs
    corpus_hash: str
    stats: dict = field(default_factory=dict)  # source facts, selection and skip counts


def split_hash(names: list[str], texts: list[str]) -> str:
    """sha256 over the length-prefixed (name, text) pairs, in order."""
    h = hashlib.sha256(CORPUS_RECIPE.encode())
    for name, text in zip(names, texts):
        for part in (name.encode("utf-8", "surrogatepass"), text.encode("utf-8", "surrogatepass")):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


def combine_hashes(train_hash: str, val_hash: str) -> str:
    return hashlib.sha256(f"{CORPUS_RECIPE}\0{train_hash}\0{val_hash}".encode()).hexdigest()


def source_stats(cfg: DataConfig, candidates: Candidates, selected: int) -> dict:
    return {
        "source": cfg.source,
        "source_kind": candidates.kind,
        "description": candidates.description,
        "source_info": dict(candidates.info),
        "candidate_documents": len(candidates.names),
        "selected_documents": selected,
        "max_documents": cfg.max_documents,
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "split_rule": SPLIT_RULE,
    }


def needle_settings(cfg: DataConfig) -> dict:
    """The needle fields of ``cfg`` (empty without needle documents): part of the corpus memo key and the stats."""
    if cfg.needle_fraction == 0:
        return {}
    return {
        "recipe": NEEDLE_RECIPE,
        "fraction": cfg.needle_fraction,
        "doc_chars": cfg.needle_doc_chars,
        "min_digits": cfg.needle_min_digits,
        "max_digits": cfg.needle_max_digits,
        "keys": cfg.needle_keys,
    }


def build_corpus(cfg: DataConfig, candidates: Candidates, progress: bool = True) -> Corpus:
    """Read the selected documents and split them (see ``split`` for the rules)."""
    indices = select_subset(candidates.names, cfg.max_documents, cfg.seed)
    raw = candidates.read(indices, progress=progress)
    binary = sum(t is None for t in raw)
    docs = [(candidates.names[i], t) for i, t in zip(indices, raw) if t is not None and t.strip()]
    empty = len(raw) - binary - len(docs)
    if not docs:
        raise DataError(
            f"no non-empty text documents in {candidates.description} ({len(raw)} selected: "
            f"{binary} binary, {empty} empty or whitespace-only)"
        )
    files = isinstance(candidates, FileCandidates)
    if len(docs) == 1:
        name, text = docs[0]
        head, tail = cut_document(text, cfg.val_fraction, name)
        train = [(f"{name}[head]", head)]
        val = [(f"{name}[tail]", tail)]
    else:
        is_val = assign_validation([n for n, _ in docs], cfg.val_fraction, cfg.seed)
        train = [d for d, v in zip(docs, is_val) if not v]
        val = [d for d, v in zip(docs, is_val) if v]
    needles = {}
    if cfg.needle_fraction > 0:  # generated from each split's own text, after the split (DataConfig.needle_fraction)
        for name, split in (("train", train), ("val", val)):
            made = needle_documents(
                [t for _, t in split],
                name,
                fraction=cfg.needle_fraction,
                seed=cfg.seed,
                keys=cfg.needle_keys,
                max_chars=cfg.needle_doc_chars,
                min_digits=cfg.needle_min_digits,
                max_digits=cfg.needle_max_digits,
            )
            needles[name] = needle_stats(made, sum(len(t) for _, t in split))
            split.extend((d.name, d.text) for d in made)

    def make(split: list[tuple[str, str]]) -> SplitDocs:
        order = packing_order([n for n, _ in split], cfg.seed)
        names = [split[i][0] for i in order]
        texts = [split[i][1] for i in order]
        stats = {
            "documents": len(names),
            "files": sum(not is_needle_document(n) for n in names) if files else None,
            "bytes": sum(len(t.encode("utf-8", "surrogatepass")) for t in texts),
        }
        return SplitDocs(names=names, texts=texts, hash=split_hash(names, texts), stats=stats)

    tr, va = make(train), make(val)
    stats = source_stats(cfg, candidates, len(indices))
    stats.update(skipped_binary=binary, skipped_empty=empty, single_document_cut=len(docs) == 1)
    if needles:
        stats["needle"] = {**needle_settings(cfg), **needles}
    return Corpus(train=tr, val=va, corpus_hash=combine_hashes(tr.hash, va.hash), stats=stats)
