"""Needle prompts: the two haystacks (seeded noise statements, corpus text), the needle and the query, tokenised
where byte-level BPE splits anyway; ``corpus_documents`` supplies the text haystack."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .config import _DECODE, _FUNCS, _MODULES, _NAMES, _WORDS, DOC_SEPARATOR, HAYSTACKS, NeedleConfig


@dataclass(frozen=True)
class NeedlePrompt:
    """One prompt: ``ids [length]`` = BOS, haystack with the needle at ``needle_start``, query.

    ``target``: the answer's token ids (value, closing quote); ``value_tokens`` of them are the value's.
    ``haystack_len``: ``h``, haystack tokens; ``position``: the needle's insertion point in the haystack
    (``actual_depth = position / h``)."""

    ids: np.ndarray
    target: np.ndarray
    value_tokens: int
    value: str
    needle_start: int
    needle_len: int
    haystack_len: int
    position: int
    depth: float

    @property
    def actual_depth(self) -> float:
        return self.position / self.haystack_len


class _Pieces:
    """Token pieces and vocabulary facts of one tokenizer, computed once."""

    def __init__(self, tokenizer, key: str):
        self.tokenizer = tokenizer
        self.key = key
        self.bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.head = self.encode(f'\n{key} = "')  # needle start and query
        self.quote = self.encode('"')
        size = len(tokenizer)
        self.starts_line = np.array([tokenizer.decode([i], **_DECODE).startswith("\n") for i in range(size)], dtype=bool)
        self.key_pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(key)}(?![A-Za-z0-9_])")

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], **_DECODE)

    def overhead(self, max_digits: int) -> int:
        """Tokens besides the haystack, at most (a value has at most one token per digit)."""
        return (self.bos is not None) + 2 * len(self.head) + max_digits + len(self.quote)


def _rng(seed: int, haystack: str, length: int, trial: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, HAYSTACKS.index(haystack), length, trial]))


def random_value(rng: np.random.Generator, min_digits: int, max_digits: int) -> str:
    """A decimal string of ``min_digits .. max_digits`` digits without a leading zero."""
    digits = int(rng.integers(min_digits, max_digits + 1))
    return str(int(rng.integers(1, 10))) + "".join(str(int(d)) for d in rng.integers(0, 10, size=digits - 1))


def noise_lines(rng: np.random.Generator, count: int) -> str:
    """``count`` random unindented Python-like statements, one per line (the noise haystack's text)."""
    out = []
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    for _ in range(count):
        a, b, c = pick(_NAMES), pick(_NAMES), pick(_NAMES)
        f, n, w = pick(_FUNCS), int(rng.integers(0, 100)), pick(_WORDS)
        form = int(rng.integers(11))
        out.append(
            [
                f"{a} = {b}.{f}({c})",
                f"{a} = {f}({b}, {n})",
                f"{a} = {b} + {n}",
                f"{a} = [{b}, {c}, {n}]",
                f"{a}.{f}({b})",
                f"{a} = {{'{w}': {b}}}",
                f"{a} = '{w}'",
                f"import {pick(_MODULES)}",
                f"{a} = {b} if {c} else None",
                f"assert {a} is not None",
                f"{a}, {b} = {c}, {n}",
            ][form]
        )
    return "\n".join(out) + "\n"


def _text_stream(rng: np.random.Generator, documents: Sequence[str], chars: int) -> str:
    """At least ``chars`` characters: a random document from a random line on, then the next documents."""
    index = int(rng.integers(len(documents)))
    doc = documents[index]
    starts = [0] + [m.end() for m in re.finditer("\n", doc) if m.end() < len(doc)]
    parts = [doc[starts[int(rng.integers(len(starts)))] :]]
    total = len(parts[0])
    while total < chars:
        index = (index + 1) % len(documents)
        parts.append(documents[index])
        total += len(documents[index]) + len(DOC_SEPARATOR)
    return DOC_SEPARATOR.join(parts)


def haystack(
    kind: str, pieces: _Pieces, h: int, rng: np.random.Generator, documents: Optional[Sequence[str]] = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens [h], boundaries)``: ``h`` haystack tokens that end right before a line break, and the
    insertion points (0, ``h`` and every token that starts with a line break), ascending."""
    if kind not in HAYSTACKS:
        raise ValueError(f"unknown haystack {kind!r}; expected one of {list(HAYSTACKS)}")
    if kind == "text" and not documents:
        raise ValueError("the text haystack needs documents (e.g. corpus_documents())")
    for _ in range(20):  # a draw that contains the key is drawn again
        chars = 8 * (h + 64)
        for _grow in range(16):
            text = noise_lines(rng, chars // 16) if kind == "noise" else _text_stream(rng, documents, chars)
            ids = np.asarray(pieces.encode(text), dtype=np.int64)
            lines = np.flatnonzero(pieces.starts_line[ids])
            ends = lines[lines >= h]
            if len(ends):
                break
            chars *= 2
        else:
            raise ValueError(f"the {kind} haystack's text has too few line breaks to cut {h} tokens ending before one")
        end = int(ends[0])
        tokens = ids[end - h : end]
        if pieces.key_pattern.search(pieces.decode(tokens)) is None:
            inner = lines[(lines > end - h) & (lines < end)] - (end - h)
            return tokens, np.unique(np.concatenate([[0], inner, [h]])).astype(np.int64)
    raise ValueError(f"the {kind} haystack keeps containing the needle's key {pieces.key!r}: choose another key")


def build_prompt(pieces: _Pieces, hay: np.ndarray, boundaries: np.ndarray, value: str, depth: float) -> NeedlePrompt:
    """Insert ``value``'s needle into ``hay`` at the boundary nearest to ``depth * len(hay)``."""
    h = len(hay)
    position = int(boundaries[np.argmin(np.abs(boundaries - depth * h))])
    value_ids = pieces.encode(value)
    needle = pieces.head + value_ids + pieces.quote
    bos = [] if pieces.bos is None else [pieces.bos]
    ids = np.concatenate([bos, hay[:position], needle, hay[position:], pieces.head]).astype(np.int64)
    return NeedlePrompt(
        ids=ids,
        target=np.asarray(value_ids + pieces.quote, dtype=np.int64),
        value_tokens=len(value_ids),
        value=value,
        needle_start=len(bos) + position,
        needle_len=len(needle),
        haystack_len=h,
        position=position,
        depth=float(depth),
    )


def make_prompts(
    tokenizer,
    config: NeedleConfig,
    kind: str,
    length: int,
    trial: int,
    documents: Optional[Sequence[str]] = None,
    pieces: Optional[_Pieces] = None,
) -> list[NeedlePrompt]:
    """The prompts of one trial at every depth of ``config`` (same haystack and value), ``length`` tokens each."""
    pieces = pieces or _Pieces(tokenizer, config.key)
    rng = _rng(config.seed, kind, length, trial)
    value = random_value(rng, config.min_digits, config.max_digits)
    needle_len = len(pieces.head) + len(pieces.encode(value)) + len(pieces.quote)
    h = length - (pieces.bos is not None) - needle_len - len(pieces.head)
    if h < 1:
        raise ValueError(
            f"length {length} is too short: BOS, the needle ({needle_len} tokens) and the query ({len(pieces.head)} "
            f"tokens) leave no haystack; expected at least {length - h + 1} tokens"
        )
    hay, boundaries = haystack(kind, pieces, h, rng, documents)
    return [build_prompt(pieces, hay, boundaries, value, d) for d in config.depths]


def corpus_documents(data=None, split: str = "val") -> tuple[list[str], str]:
    """``(texts, description)`` of one split of a data config's corpus (``DataConfig``, a run's ``data:``
    mapping, or ``None`` for the default stdlib corpus), read through :mod:`mesanet.data` (no tokenising)."""
    from mesanet.data import DataConfig
    from mesanet.data.corpus import build_corpus
    from mesanet.data.sources import resolve_source
    from mesanet.utils.config import from_dict

    if split not in ("train", "val"):
        raise ValueError(f"corpus_documents: expected split 'train' or 'val', got {split!r}")
    cfg = DataConfig() if data is None else data if isinstance(data, DataConfig) else from_dict(DataConfig, data, "data")
    # Without the generated needle documents of a needle training mix: they hold other keys and values. The
    # split of the source's own documents does not depend on them (DataConfig.needle_fraction).
    cfg = dataclasses.replace(cfg, needle_fraction=0.0)
    corpus = build_corpus(cfg, resolve_source(cfg), progress=False)
    docs = getattr(corpus, split)
    texts = [t for t in docs.texts if t.strip()]
    return texts, f"{cfg.source} corpus, {split} split ({len(texts)} documents, seed {cfg.seed}, val_fraction {cfg.val_fraction})"
