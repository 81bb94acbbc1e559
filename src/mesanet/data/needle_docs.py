"""Needle (passkey) documents mixed into a corpus, so that a small model can learn retrieval (``DataConfig.needle_*``).

A needle document is filler text with one line ``KEY = "VALUE"`` hidden at a random line break, asked for again
at its end (the query, followed by its answer)::

    <filler lines>
    ACCESS_PIN = "48213"
    <filler lines>
    ACCESS_PIN = "48213"

* filler: whole lines of the split's own documents (from a random line of a random document on, continued through
  the following documents), between 1 and ``needle_doc_chars`` characters (uniform), so training needle documents
  never draw on held-out text and validation ones never on training text;
* key: a seeded draw from ``needle_keys``, by default :data:`DEFAULT_KEYS` (UPPER_SNAKE names that are never the
  needle test's ``SECRET_CODE``: the test measures retrieval of a key no training document holds); a key that
  occurs in the filler is drawn again;
* value: ``needle_min_digits .. needle_max_digits`` random digits, the first non-zero.

This is the needle test's format (``mesanet.eval.needle``: ``\\nSECRET_CODE = "48213"`` in the haystack, the
query ``\\nSECRET_CODE = "`` at the end) with other keys and real-code filler only. Per split, documents are added
until they hold at least ``needle_fraction`` of the split's characters (:func:`needle_chars_target`); the last one
overshoots by less than one document. Everything is a function of the data seed, the split and the split's texts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: Bump when the generation rules change (part of every needle document's name, so of the corpus hash).
NEEDLE_RECIPE = "needle-v1"
#: Needle documents' names start with this (never a relative file path: it holds ``<`` and ``>``).
NEEDLE_PREFIX = "<needle>/"
_KEY_HEADS = (
    "ACCESS ADMIN ALARM API AUTH BACKUP BANK CARD DOOR GATE GUEST LICENSE LOCKER LOGIN MASTER OFFICE ORDER PARKING "
    "PHONE PROMO RESET ROUTER SAFE SERVER SESSION TICKET VAULT WIFI"
).split()
_KEY_TAILS = "CODE KEY NUMBER PIN TOKEN ID PASSCODE".split()
#: The built-in training keys: every HEAD_TAIL pair (196 names). The needle test's SECRET_CODE is not one of them.
DEFAULT_KEYS = tuple(f"{h}_{t}" for h in _KEY_HEADS for t in _KEY_TAILS)
_SPLIT_IDS = {"train": 1, "val": 2}
_WORD = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class NeedleDoc:
    """One needle document: ``text[needle_at:]`` starts with ``KEY = "VALUE"`` (the hidden line) and the text ends
    with that line again, starting at ``query_at`` (the query ``KEY = "`` and its answer ``VALUE"``)."""

    name: str
    text: str
    key: str
    value: str
    needle_at: int
    query_at: int

    @property
    def line(self) -> str:
        return f'{self.key} = "{self.value}"'


def is_needle_document(name: str) -> bool:
    """Whether a document name (``PreparedData.documents``, ``SplitDocs.names``) is a generated needle document."""
    return name.startswith(NEEDLE_PREFIX)


def needle_chars_target(base_chars: int, fraction: float) -> float:
    """Characters of needle documents that make ``fraction`` of a split of ``base_chars`` other characters."""
    return fraction / (1.0 - fraction) * base_chars


def _value(rng: np.random.Generator, min_digits: int, max_digits: int) -> str:
    digits = int(rng.integers(min_digits, max_digits + 1))
    return str(int(rng.integers(1, 10))) + "".join(str(int(d)) for d in rng.integers(0, 10, size=digits - 1))


class _Filler:
    """Whole lines of a split's documents, from a random line of a random document on."""

    def __init__(self, texts: Sequence[str]):
        self.lines = [t.split("\n") for t in texts if t.strip()]
        if not self.lines:
            raise ValueError("needle documents need filler: the split has no non-empty document")

    def draw(self, rng: np.random.Generator, chars: int) -> list[str]:
        doc = int(rng.integers(len(self.lines)))
        line = int(rng.integers(len(self.lines[doc])))
        out, total = [], 0
        while total < chars:
            if line >= len(self.lines[doc]):
                doc, line = (doc + 1) % len(self.lines), 0
                continue
            out.append(self.lines[doc][line])
            total += len(out[-1]) + 1
            line += 1
        return out


def needle_document(
    rng: np.random.Generator,
    filler: _Filler,
    name: str,
    keys: Sequence[str],
    max_chars: int,
    min_digits: int,
    max_digits: int,
) -> NeedleDoc:
    """One needle document (see the module docstring)."""
    for _ in range(100):
        lines = filler.draw(rng, int(rng.integers(1, max_chars + 1)))
        body = "\n".join(lines)
        words = set(_WORD.findall(body))
        free = [k for k in keys if k not in words]
        if free:
            break
    else:
        raise ValueError(f"the filler keeps containing every needle key {list(keys)[:5]}...: choose other keys")
    key = free[int(rng.integers(len(free)))]
    value = _value(rng, min_digits, max_digits)
    line = f'{key} = "{value}"'
    at = int(rng.integers(len(lines) + 1))
    head = "\n".join(lines[:at])
    needle_at = len(head) + 1 if at else 0
    text = "\n".join([*lines[:at], line, *lines[at:]])
    query_at = len(text) + 1
    return NeedleDoc(name=name, text=f"{text}\n{line}", key=key, value=value, needle_at=needle_at, query_at=query_at)


def needle_documents(
    texts: Sequence[str],
    split: str,
    *,
    fraction: float,
    seed: int,
    keys: Sequence[str] | None = None,
    max_chars: int = 800,
    min_digits: int = 4,
    max_digits: int = 6,
) -> list[NeedleDoc]:
    """The needle documents of one split whose other documents are ``texts``: together at least ``fraction`` of the
    split's characters, less than one document more. Deterministic in (``seed``, ``split``, ``texts``, settings)."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"needle_documents: expected split 'train' or 'val', got {split!r}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"needle_documents: expected a fraction in [0, 1), got {fraction!r}")
    if fraction == 0.0:
        return []
    keys = list(keys) if keys else list(DEFAULT_KEYS)
    filler = _Filler(texts)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS[split], 0x6E656564]))
    target = needle_chars_target(sum(len(t) for t in texts), fraction)
    docs: list[NeedleDoc] = []
    total = 0
    while total < target:
        name = f"{NEEDLE_PREFIX}{NEEDLE_RECIPE}/{split}/{len(docs):07d}"
        docs.append(needle_document(rng, filler, name, keys, max_chars, min_digits, max_digits))
        total += len(docs[-1].text)
    return docs


def needle_stats(docs: Sequence[NeedleDoc], base_chars: int) -> dict:
    """JSON-serialisable facts of one split's needle documents (recorded with the corpus stats)."""
    chars = sum(len(d.text) for d in docs)
    return {
        "documents": len(docs),
        "chars": chars,
        "char_share": chars / (chars + base_chars) if chars + base_chars else 0.0,
        "distinct_keys": len({d.key for d in docs}),
    }
