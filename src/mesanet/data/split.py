"""Deterministic document selection, train/validation split and packing order.

Every decision is a keyed hash of the document's *name* (relative path, or ``SPLIT/ROW`` for a
dataset row) and the seed, mapped to ``u in [0, 1)``:

* ``max_documents`` keeps the documents with the smallest ``u("subset")`` - a uniform sample that is
  stable when other documents are added (a kept document stays kept unless displaced by a new one);
* a document goes to validation iff ``u("split") < val_fraction``, so adding or removing files never
  moves another file between the splits. If that leaves a split empty (tiny corpora), the document
  closest to the threshold is moved over;
* within each split documents are packed in ``u("order")`` order (a seeded shuffle, so the first
  validation windows sample the whole corpus instead of its alphabetically first files);
* a corpus of a single document is cut inside it, at the first line break after the
  ``1 - val_fraction`` point: the head trains, the tail validates.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

from .config import DataError


def keyed_unit(name: str, seed: int, purpose: str) -> float:
    """Uniform-looking ``u in [0, 1)`` from ``sha256(purpose, seed, name)``; stable across runs and machines."""
    digest = hashlib.sha256(f"{purpose}\0{seed}\0{name}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def select_subset(names: Sequence[str], max_documents: int | None, seed: int) -> list[int]:
    """Indices (ascending) of at most ``max_documents`` documents: those with the smallest subset hash."""
    if max_documents is None or max_documents >= len(names):
        return list(range(len(names)))
    ranked = sorted(range(len(names)), key=lambda i: (keyed_unit(names[i], seed, "subset"), names[i]))
    return sorted(ranked[:max_documents])


def assign_validation(names: Sequence[str], val_fraction: float, seed: int) -> list[bool]:
    """``is_val`` per document (at least two documents): hash threshold, then no split left empty."""
    if len(names) < 2:
        raise ValueError("assign_validation needs at least two documents; cut a single one with cut_document")
    u = [keyed_unit(n, seed, "split") for n in names]
    is_val = [x < val_fraction for x in u]
    if not any(is_val):
        is_val[min(range(len(u)), key=u.__getitem__)] = True
    if all(is_val):
        is_val[max(range(len(u)), key=u.__getitem__)] = False
    return is_val


def packing_order(names: Sequence[str], seed: int) -> list[int]:
    """Indices of ``names`` in packing order (a seeded shuffle by keyed hash)."""
    return sorted(range(len(names)), key=lambda i: (keyed_unit(names[i], seed, "order"), names[i]))


def cut_document(text: str, val_fraction: float, name: str) -> tuple[str, str]:
    """Split one document into a training head and a validation tail at a line break."""
    if len(text) < 2:
        raise DataError(
            f"the corpus is a single document ({name!r}) of {len(text)} character(s); it cannot be "
            f"split into training and validation parts"
        )
    point = min(max(int(round(len(text) * (1.0 - val_fraction))), 1), len(text) - 1)
    cut = text.find("\n", point)
    if cut == -1 or cut + 1 >= len(text):
        back = text.rfind("\n", 0, point)
        cut = back if back > 0 else point - 1
    cut += 1  # the line break stays with the head
    return text[:cut], text[cut:]
