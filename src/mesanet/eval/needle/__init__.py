# Over 400 lines: config, prompts, scoring, aggregation, reports and CLI in one file; its split by job with
# typed result objects is the structure issue's item 3 (this change only added the device argument check).
"""Single-needle needle-in-a-haystack for trained (code) language models, at and beyond the training length.

A prompt of exactly ``length`` tokens is ``[BOS] haystack[:p] needle haystack[p:] query``:

* needle: the line ``\\nSECRET_CODE = "48213"`` (``config.key``; a random value of ``min_digits ..
  max_digits`` digits, first digit non-zero, per trial), inserted at token ``p`` of the ``h``-token haystack,
  the line break nearest to ``depth * h`` (``depth`` 0: right after BOS, 1: right before the query);
* query: ``\\nSECRET_CODE = "``; the answer is the value followed by the closing quote.

Haystacks (both cut to the exact token count, and always ending before a line break):

* ``"noise"``: seeded random Python-like statements, one unindented line each: assignments, calls,
  attribute calls, lists, dicts and string literals of words, imports, asserts, over a fixed list of common
  identifiers with small integers (no digit strings, never the key);
* ``"text"``: real Python source from the built-in corpus (by default the held-out validation documents of
  the standard-library corpus, :func:`corpus_documents`): a seeded random document, from a seeded random line
  on, continued through the following documents (joined by a blank line).

Every piece is tokenised where byte-level BPE splits anyway (the needle is inserted right before a token
that starts with a line break; the value and the quotes are their own pre-tokens), so the prompt is the
tokenizer's own tokenisation of its text and the value has the same tokens in the needle and the answer.

Metrics per (haystack, length, depth), over ``trials`` trials (the haystack and value of a trial are the same
at every depth, so depths are compared on paired samples):

* ``exact_match``: the greedy continuation's text starts with ``value"``;
* ``token_acc``: share of answer tokens (value + closing quote) that are the arg-max under teacher forcing;
* ``value_logprob``: log-probability (nats) of the value's tokens under teacher forcing, and
  ``logprob_per_digit`` = that / digits (a model that only knows "digits come next" scores -ln 10 = -2.30).

``python -m mesanet.eval.needle RUN_DIR [--lengths 0.5 1 2 4] [--depths ...] [--trials N] [--haystack noise
text]`` writes ``needle.csv`` (one row per cell), ``needle_trials.csv``, ``needle.md`` and ``needle.png``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from mesanet.utils.cli_errors import device_arg, one_line, run_cli
from mesanet.utils.validation import check_int, check_list, is_real

from .checkpoint import load_checkpoint
from .evaluate import model_device
from .plots import _save
from .run_files import load_run_config, resolve_model_dir, train_seq_len

HAYSTACKS = ("noise", "text")
NEEDLE_CSV = "needle.csv"
NEEDLE_TRIALS_CSV = "needle_trials.csv"
NEEDLE_MD = "needle.md"
NEEDLE_PNG = "needle.png"

#: Between documents of the text haystack.
DOC_SEPARATOR = "\n\n"
#: log-probability per digit of a model that knows a digit comes next and nothing else.
CHANCE_LOGPROB_PER_DIGIT = -math.log(10.0)

_DECODE = dict(skip_special_tokens=False, clean_up_tokenization_spaces=False)

_NAMES = (
    "data value result items count name path node index size total buffer offset config state parent child text "
    "line token item entry record field label option mode flag level limit width height start stop step delta "
    "source target module handler parser reader writer stream cache queue stack table row column header body "
    "prefix suffix pattern match group args kwargs params options"
).split()
_FUNCS = "get update append extend insert pop join split strip format encode decode read write open close parse load dump copy sort replace find".split()
_MODULES = "os sys re json math time copy types string logging functools itertools collections".split()
_WORDS = "alpha beta gamma delta red green blue north south east west spam eggs ham foo bar baz default utf-8 ascii".split()


@dataclass
class NeedleConfig:
    """What to measure. Lengths are ``round(factor * train_len)`` tokens, BOS, needle and query included."""

    train_len: int = 256  # the model's training length (a run's data.seq_len)
    factors: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    haystacks: list[str] = field(default_factory=lambda: list(HAYSTACKS))
    trials: int = 8  # per (haystack, length, depth)
    key: str = "SECRET_CODE"
    min_digits: int = 4
    max_digits: int = 6
    seed: int = 0
    batch_size: int = 8  # prompts per forward

    def __post_init__(self) -> None:
        where = "NeedleConfig"
        check_int(f"{where}.train_len", self.train_len, minimum=2, what="the training length")
        self.factors = _floats(f"{where}.factors", self.factors)
        for f in self.factors:
            if not math.isfinite(f) or f <= 0:
                raise ValueError(f"{where}.factors: expected positive multiples of the training length, got {self.factors}")
        if len({self._length(f) for f in self.factors}) != len(self.factors):
            raise ValueError(f"{where}.factors: {self.factors} give repeated lengths {[self._length(f) for f in self.factors]}")
        self.depths = _floats(f"{where}.depths", self.depths)
        bad = [d for d in self.depths if not (0.0 <= d <= 1.0)]
        if bad:
            raise ValueError(f"{where}.depths: expected depth fractions in [0, 1] (0: start of the haystack, 1: its end), got {bad}")
        if len(set(self.depths)) != len(self.depths):
            raise ValueError(f"{where}.depths: expected distinct depths, got {self.depths}")
        self.haystacks = list(check_list(f"{where}.haystacks", self.haystacks))
        unknown = [h for h in self.haystacks if h not in HAYSTACKS]
        if unknown:
            raise ValueError(f"{where}.haystacks: unknown haystack(s) {unknown}; expected some of {list(HAYSTACKS)}")
        if len(set(self.haystacks)) != len(self.haystacks):
            raise ValueError(f"{where}.haystacks: expected distinct haystacks, got {self.haystacks}")
        check_int(f"{where}.trials", self.trials, minimum=1, what="the number of trials per cell")
        if not isinstance(self.key, str) or not self.key.isidentifier():
            raise ValueError(f"{where}.key: expected a Python identifier (the needle's variable name), got {self.key!r}")
        check_int(f"{where}.min_digits", self.min_digits, minimum=1, what="the fewest digits of a value")
        check_int(f"{where}.max_digits", self.max_digits, minimum=self.min_digits, what=f"the most digits of a value (>= min_digits = {self.min_digits})")
        if self.max_digits > 18:
            raise ValueError(f"{where}.max_digits: expected at most 18 digits, got {self.max_digits}")
        check_int(f"{where}.seed", self.seed, minimum=0, what="a non-negative seed")
        check_int(f"{where}.batch_size", self.batch_size, minimum=1, what="prompts per forward")

    def _length(self, factor: float) -> int:
        return int(round(factor * self.train_len))

    def lengths(self) -> list[tuple[float, int]]:
        """``(factor, length in tokens)`` in the order given."""
        return [(f, self._length(f)) for f in self.factors]




def _floats(name: str, value) -> list[float]:
    values = check_list(name, value)
    if not all(is_real(v, finite=False) for v in values):
        raise ValueError(f"{name}: expected a list of numbers, got {value!r}")
    return [float(v) for v in values]




# ---------------------------------------------------------------------------------------------- prompts


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
        out.append([
            f"{a} = {b}.{f}({c})", f"{a} = {f}({b}, {n})", f"{a} = {b} + {n}", f"{a} = [{b}, {c}, {n}]",
            f"{a}.{f}({b})", f"{a} = {{'{w}': {b}}}", f"{a} = '{w}'", f"import {pick(_MODULES)}",
            f"{a} = {b} if {c} else None", f"assert {a} is not None", f"{a}, {b} = {c}, {n}",
        ][form])
    return "\n".join(out) + "\n"


def _text_stream(rng: np.random.Generator, documents: Sequence[str], chars: int) -> str:
    """At least ``chars`` characters: a random document from a random line on, then the next documents."""
    index = int(rng.integers(len(documents)))
    doc = documents[index]
    starts = [0] + [m.end() for m in re.finditer("\n", doc) if m.end() < len(doc)]
    parts = [doc[starts[int(rng.integers(len(starts)))]:]]
    total = len(parts[0])
    while total < chars:
        index = (index + 1) % len(documents)
        parts.append(documents[index])
        total += len(documents[index]) + len(DOC_SEPARATOR)
    return DOC_SEPARATOR.join(parts)


def haystack(kind: str, pieces: _Pieces, h: int, rng: np.random.Generator,
             documents: Optional[Sequence[str]] = None) -> tuple[np.ndarray, np.ndarray]:
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
        ids=ids, target=np.asarray(value_ids + pieces.quote, dtype=np.int64), value_tokens=len(value_ids), value=value,
        needle_start=len(bos) + position, needle_len=len(needle), haystack_len=h, position=position, depth=float(depth),
    )


def make_prompts(tokenizer, config: NeedleConfig, kind: str, length: int, trial: int,
                 documents: Optional[Sequence[str]] = None, pieces: Optional[_Pieces] = None) -> list[NeedlePrompt]:
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


# ---------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def score_prompts(model: nn.Module, prompts: Sequence[NeedlePrompt], pad_id: int = 0) -> list[dict]:
    """Greedy answer and teacher-forced answer log-probabilities of same-length prompts, in one batch.

    Uses the model's recurrent cache when its forward returns one (``past_key_values``), else recomputes
    the whole sequence. Returns per prompt ``answer`` (greedy token ids, ``len(target) + 2`` of them),
    ``logprobs`` and ``correct`` (per target token)."""
    if len({len(p.ids) for p in prompts}) != 1:
        raise ValueError(f"score_prompts: expected prompts of one length, got {sorted({len(p.ids) for p in prompts})}")
    device = model_device(model)
    ids = torch.as_tensor(np.stack([p.ids for p in prompts]), device=device)
    width = max(len(p.target) for p in prompts)
    targets = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        targets[i, : len(p.target)] = torch.as_tensor(p.target, device=device)

    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1].float()
    cache = getattr(out, "past_key_values", None)
    logits = [first]
    if width > 1:  # teacher forcing through the answer
        if cache is not None:
            rest = model(input_ids=targets[:, :-1], past_key_values=copy.deepcopy(cache), use_cache=True).logits
        else:
            rest = model(input_ids=torch.cat([ids, targets[:, :-1]], 1), use_cache=False, logits_to_keep=width - 1).logits
        logits += list(rest.float().unbind(1))
    logp = torch.stack(logits, 1).log_softmax(-1)  # [B, width, V]
    token_logp = logp.gather(-1, targets[..., None])[..., 0]
    correct = logp.argmax(-1) == targets

    generated, seq, step = [], ids, first.argmax(-1)
    for i in range(width + 2):  # greedy decoding
        generated.append(step)
        if i == width + 1:
            break
        if cache is not None:
            out = model(input_ids=step[:, None], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
        else:
            seq = torch.cat([seq, step[:, None]], 1)
            out = model(input_ids=seq, use_cache=False, logits_to_keep=1)
        step = out.logits[:, -1].argmax(-1)
    answers = torch.stack(generated, 1).cpu()
    return [
        dict(answer=answers[i].tolist(), logprobs=token_logp[i, : len(p.target)].double().cpu().numpy(),
             correct=correct[i, : len(p.target)].cpu().numpy())
        for i, p in enumerate(prompts)
    ]


@dataclass(frozen=True)
class NeedleTrial:
    haystack: str
    factor: float
    length: int
    depth: float
    trial: int
    value: str
    answer: str  # the greedy continuation's text, up to the closing quote or the line's end
    exact: bool
    token_acc: float
    value_logprob: float
    logprob_per_digit: float
    actual_depth: float
    needle_start: int


@dataclass(frozen=True)
class NeedleCell:
    """Means over the trials of one (haystack, length, depth)."""

    haystack: str
    factor: float
    length: int
    depth: float
    trials: int
    exact_match: float
    token_acc: float
    value_logprob: float
    logprob_per_digit: float
    actual_depth: float


@dataclass
class NeedleResult:
    config: NeedleConfig
    cells: list[NeedleCell]
    trials: list[NeedleTrial]
    text_source: Optional[str] = None
    seconds: float = 0.0

    def cell(self, haystack: str, length: int, depth: float) -> NeedleCell:
        for c in self.cells:
            if c.haystack == haystack and c.length == length and c.depth == depth:
                return c
        raise KeyError(f"no cell ({haystack!r}, {length}, {depth})")

    def to_markdown(self, title: str = "Needle in a haystack") -> str:
        return _markdown(self, title)


def _trial_record(prompt: NeedlePrompt, scored: dict, pieces: _Pieces, kind: str, factor: float, trial: int) -> NeedleTrial:
    text = pieces.tokenizer.decode(scored["answer"], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    answer = re.match(r'[^"\n]*"?', text).group(0)
    value_lp = float(scored["logprobs"][: prompt.value_tokens].sum())
    return NeedleTrial(
        haystack=kind, factor=factor, length=len(prompt.ids), depth=prompt.depth, trial=trial, value=prompt.value,
        answer=answer, exact=text.startswith(prompt.value + '"'), token_acc=float(scored["correct"].mean()),
        value_logprob=value_lp, logprob_per_digit=value_lp / len(prompt.value), actual_depth=prompt.actual_depth,
        needle_start=prompt.needle_start,
    )


def _aggregate(trials: list[NeedleTrial], config: NeedleConfig) -> list[NeedleCell]:
    cells = []
    for kind in config.haystacks:
        for factor, length in config.lengths():
            for depth in config.depths:
                group = [t for t in trials if t.haystack == kind and t.length == length and t.depth == depth]
                mean = lambda name: float(np.mean([getattr(t, name) for t in group]))  # noqa: E731
                cells.append(NeedleCell(
                    haystack=kind, factor=factor, length=length, depth=depth, trials=len(group),
                    exact_match=mean("exact"), token_acc=mean("token_acc"), value_logprob=mean("value_logprob"),
                    logprob_per_digit=mean("logprob_per_digit"), actual_depth=mean("actual_depth"),
                ))
    return cells


def needle_in_a_haystack(model: nn.Module, tokenizer, config: Optional[NeedleConfig] = None, *,
                         documents: Optional[Sequence[str]] = None, progress: bool = True) -> NeedleResult:
    """Run the needle test of ``config`` on ``model`` (any causal LM whose forward returns ``.logits``).

    ``documents``: the text haystack's source texts (default: :func:`corpus_documents`, the held-out
    validation documents of the default standard-library corpus). Lengths too short to hold BOS, needle and
    query raise ``ValueError`` before anything runs."""
    config = config or NeedleConfig()
    if not isinstance(config, NeedleConfig):
        raise ValueError(f"needle_in_a_haystack: expected a NeedleConfig, got {type(config).__name__}")
    started = time.perf_counter()
    pieces = _Pieces(tokenizer, config.key)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(f"needle_in_a_haystack: the tokenizer has {len(tokenizer)} tokens but the model only {vocab}")
    need = pieces.overhead(config.max_digits) + 1
    short = [(f, n) for f, n in config.lengths() if n < need]
    if short:
        raise ValueError(
            f"needle_in_a_haystack: lengths {[n for _, n in short]} (factors {[f for f, _ in short]} x train_len "
            f"{config.train_len}) are shorter than BOS + needle + query + 1 haystack token = {need} tokens"
        )
    text_source = None
    if "text" in config.haystacks and documents is None:
        documents, text_source = corpus_documents()
    elif "text" in config.haystacks:
        documents = [d for d in documents if d.strip()]
        if not documents:
            raise ValueError("needle_in_a_haystack: expected at least one non-empty document for the text haystack")
        text_source = text_source or f"{len(documents)} given documents"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    total = len(config.haystacks) * len(config.lengths()) * config.trials * len(config.depths)
    bar = tqdm(total=total, desc="needle", unit="prompt", disable=not progress)
    trials: list[NeedleTrial] = []
    was_training = model.training
    model.eval()
    try:
        for kind in config.haystacks:
            for factor, length in config.lengths():
                bar.set_postfix_str(f"{kind} {length} tokens")
                batch = []
                for trial in range(config.trials):
                    batch += [(trial, p) for p in make_prompts(tokenizer, config, kind, length, trial, documents, pieces)]
                for start in range(0, len(batch), config.batch_size):
                    chunk = batch[start : start + config.batch_size]
                    for (trial, prompt), scored in zip(chunk, score_prompts(model, [p for _, p in chunk], pad)):
                        trials.append(_trial_record(prompt, scored, pieces, kind, factor, trial))
                    bar.update(len(chunk))
    finally:
        model.train(was_training)
        bar.close()
    return NeedleResult(config=config, cells=_aggregate(trials, config), trials=trials, text_source=text_source,
                        seconds=time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------- corpus


def corpus_documents(data=None, split: str = "val") -> tuple[list[str], str]:
    """``(texts, description)`` of one split of a data config's corpus (``DataConfig``, a run's ``data:``
    mapping, or ``None`` for the default stdlib corpus), read through :mod:`mesanet.data` (no tokenising)."""
    from ..data import DataConfig
    from ..data.corpus import build_corpus
    from ..data.sources import resolve_source
    from ..utils.config import from_dict

    if split not in ("train", "val"):
        raise ValueError(f"corpus_documents: expected split 'train' or 'val', got {split!r}")
    cfg = DataConfig() if data is None else data if isinstance(data, DataConfig) else from_dict(DataConfig, data, "data")
    corpus = build_corpus(cfg, resolve_source(cfg), progress=False)
    docs = getattr(corpus, split)
    texts = [t for t in docs.texts if t.strip()]
    return texts, f"{cfg.source} corpus, {split} split ({len(texts)} documents, seed {cfg.seed}, val_fraction {cfg.val_fraction})"


# ---------------------------------------------------------------------------------------------- files


def _fmt(x: float, spec: str = ".2f") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def _markdown(result: NeedleResult, title: str) -> str:
    cfg = result.config
    lengths = cfg.lengths()
    lines = [
        f"# {title}", "",
        f"- needle: `{cfg.key} = \"<{cfg.min_digits}-{cfg.max_digits} digits>\"` on its own line at depth d of the "
        f"haystack; query `{cfg.key} = \"` at the end; {cfg.trials} trials per cell (seed {cfg.seed})",
        f"- training length {cfg.train_len} tokens; lengths " + ", ".join(f"{n} (x{f:g})" for f, n in lengths),
        "- exact = greedy answer starts with `value\"`; acc = teacher-forced arg-max accuracy over the answer tokens; "
        f"lp/digit = log-probability of the value per digit (nats; a model that only knows that digits come next: "
        f"{CHANCE_LOGPROB_PER_DIGIT:.2f})",
    ]
    if result.text_source:
        lines.append(f"- text haystack: {result.text_source}")
    lines.append("- noise haystack: seeded random unindented Python-like statements")
    for kind in cfg.haystacks:
        lines += ["", f"## {kind} haystack", "", "Exact match (greedy), rows: depth, columns: length", "",
                  "| depth | " + " | ".join(f"{n} (x{f:g})" for f, n in lengths) + " |",
                  "|---:|" + "---:|" * len(lengths)]
        for d in cfg.depths:
            lines.append(f"| {d:g} | " + " | ".join(_fmt(result.cell(kind, n, d).exact_match) for _, n in lengths) + " |")
        lines += ["", "Mean over depths", "", "| length | exact | acc | lp/digit |", "|---:|---:|---:|---:|"]
        for f, n in lengths:
            cells = [result.cell(kind, n, d) for d in cfg.depths]
            lines.append(f"| {n} (x{f:g}) | {np.mean([c.exact_match for c in cells]):.2f} | "
                         f"{np.mean([c.token_acc for c in cells]):.2f} | {np.mean([c.logprob_per_digit for c in cells]):.2f} |")
    lines += ["", "## All cells", "", "| haystack | length | depth | actual depth | exact | acc | lp/digit | value logprob |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in result.cells:
        lines.append(f"| {c.haystack} | {c.length} | {c.depth:g} | {c.actual_depth:.3f} | {c.exact_match:.2f} | "
                     f"{c.token_acc:.2f} | {c.logprob_per_digit:.2f} | {c.value_logprob:.2f} |")
    lines += ["", f"![needle heatmap]({NEEDLE_PNG}) (values: [{NEEDLE_CSV}]({NEEDLE_CSV}), "
              f"per trial: [{NEEDLE_TRIALS_CSV}]({NEEDLE_TRIALS_CSV}))", ""]
    return "\n".join(lines)


def _write_csv(rows: list, path: Path) -> None:
    with path.open("w", newline="") as fh:
        names = list(asdict(rows[0]))
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(row).items()})


def plot_needle(result: NeedleResult, path: str | Path, *, title: str = "Needle in a haystack") -> Path:
    """Heatmaps depth (rows) x length (columns), one column of panels per haystack: exact match (top) and
    teacher-forced answer-token accuracy (bottom), both on [0, 1], each cell annotated."""
    cfg = result.config
    lengths, depths = cfg.lengths(), cfg.depths
    metrics = (("exact_match", "exact match (greedy)"), ("token_acc", "answer-token accuracy"))
    fig = Figure(figsize=(1.2 + 0.9 * len(lengths) * len(cfg.haystacks) + 1.0, 1.0 + 0.45 * len(depths) * 2 + 1.0),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(metrics), len(cfg.haystacks), squeeze=False)
    image = None
    for col, kind in enumerate(cfg.haystacks):
        for row, (name, label) in enumerate(metrics):
            ax = axes[row][col]
            grid = np.array([[getattr(result.cell(kind, n, d), name) for _, n in lengths] for d in depths])
            image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            for i in range(len(depths)):
                for j in range(len(lengths)):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if grid[i, j] < 0.6 else "black")
            inside = [j for j, (f, _) in enumerate(lengths) if f <= 1.0]
            if inside and len(inside) < len(lengths):
                ax.axvline(max(inside) + 0.5, color="red", linestyle="--", linewidth=1)
            ax.set_xticks(range(len(lengths)), [f"{n}\n(x{f:g})" for f, n in lengths], fontsize=7)
            ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
            ax.set_title(f"{kind}: {label}", fontsize=9)
            ax.set_xlabel("context length (tokens)", fontsize=8)
            ax.set_ylabel("needle depth", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8)
    fig.suptitle(f"{title} (dashed: training length {cfg.train_len})", fontsize=10)
    return _save(fig, path)


def write_needle(result: NeedleResult, out_dir: str | Path, *, title: str = "Needle in a haystack") -> dict:
    """Write ``needle.csv``, ``needle_trials.csv``, ``needle.md`` and ``needle.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in (NEEDLE_CSV, NEEDLE_TRIALS_CSV, NEEDLE_MD, NEEDLE_PNG)}
    _write_csv(result.cells, files[NEEDLE_CSV])
    _write_csv(result.trials, files[NEEDLE_TRIALS_CSV])
    files[NEEDLE_MD].write_text(result.to_markdown(title))
    plot_needle(result, files[NEEDLE_PNG], title=title)
    return {name: str(p) for name, p in files.items()}


def run_needle(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    factors: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    trials: int = 8,
    haystacks: Sequence[str] = HAYSTACKS,
    seed: int = 0,
    key: str = "SECRET_CODE",
    batch_size: int = 8,
    train_len: Optional[int] = None,
    device: str = "cpu",
    progress: bool = True,
) -> NeedleResult:
    """Load a run (``runs/<name>``) or model directory, run the needle test, write its files into ``out_dir``
    (default: the run directory, or the model directory outside a run).

    The training length is the run's ``data.seq_len`` (``train_len=`` for a model directory outside a run). The
    text haystack comes from the held-out validation documents of the run's own corpus when it is a file source
    (``stdlib`` or a local path), else from the default stdlib corpus's validation split."""
    model_dir, run = resolve_model_dir(run_dir)
    run_config = load_run_config(run) if run is not None else None
    if train_len is None:
        if run_config is None:
            raise ValueError(f"{str(run_dir)!r} is a model directory outside a run: pass train_len=")
        train_len = train_seq_len(run_config, str(Path(run) / "config.yaml"))
    config = NeedleConfig(train_len=train_len, factors=list(factors), depths=list(depths), haystacks=list(haystacks),
                          trials=trials, key=key, seed=seed, batch_size=batch_size)
    loaded = load_checkpoint(model_dir, device=device)
    documents = source = None
    if "text" in config.haystacks:
        data = (run_config or {}).get("data")
        own = isinstance(data, dict) and not str(data.get("source", "stdlib")).startswith("hf:")
        documents, source = corpus_documents(data if own else None)
    result = needle_in_a_haystack(loaded.model, loaded.tokenizer, config, documents=documents, progress=progress)
    result.text_source = source
    name = (Path(run) if run is not None else Path(model_dir)).resolve().name
    write_needle(result, out_dir if out_dir is not None else (run if run is not None else model_dir),
                 title=f"Needle in a haystack: {name}")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m mesanet.eval.needle RUN_DIR [options]``; prints the markdown report."""
    parser = argparse.ArgumentParser(prog="mesanet needle", description="Single-needle needle-in-a-haystack on a trained run.")
    parser.add_argument("run_dir", help="run directory (runs/<name>) or model directory")
    parser.add_argument("--lengths", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0],
                        help="context lengths as multiples of the training length (default: 0.5 1 2 4)")
    parser.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                        help="needle depths in [0, 1] (0: start, 1: right before the query)")
    parser.add_argument("--trials", type=int, default=8, help="trials per cell (default 8)")
    parser.add_argument("--haystack", nargs="+", default=list(HAYSTACKS), help="haystacks: noise and/or text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key", default="SECRET_CODE", help="the needle's variable name")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-len", type=int, default=None, help="training length (for a model directory outside a run)")
    parser.add_argument("--out", default=None, help="output folder (default: the run directory)")
    parser.add_argument("--device", type=device_arg, default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = run_needle(
            args.run_dir, args.out, factors=args.lengths, depths=args.depths, trials=args.trials, haystacks=args.haystack,
            seed=args.seed, key=args.key, batch_size=args.batch_size, train_len=args.train_len, device=args.device,
            progress=not args.no_progress,
        )
    except ValueError as e:
        print(f"{parser.prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(result.to_markdown())
    print(f"({result.seconds:.1f} s)")
    return 0


__all__ = [
    "CHANCE_LOGPROB_PER_DIGIT", "HAYSTACKS", "NeedleCell", "NeedleConfig", "NeedlePrompt", "NeedleResult", "NeedleTrial",
    "build_prompt", "corpus_documents", "haystack", "main", "make_prompts", "needle_in_a_haystack", "noise_lines",
    "plot_needle", "random_value", "run_needle", "score_prompts", "write_needle",
]

if __name__ == "__main__":
    raise SystemExit(run_cli("mesanet needle", main))
