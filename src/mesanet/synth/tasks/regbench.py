"""RegBench (Akyürek et al. 2024): in-context learning of random regular languages, one PFA per sequence.

Spec: ``synthetic-tasks.md`` §3. Each sequence samples its own automaton (:mod:`.pfa`), then
``m ~ U{min_strings..max_strings}`` strings, each a random walk of ``l ~ U{min_len..max_len}`` symbols from
the start state, joined by ``|`` (no leading / trailing separator, no begin-of-sequence token). Inputs are
``tokens[:-1]``, targets ``tokens[1:]``; a target ``|`` becomes ``IGNORE_INDEX`` (predicting a string's end is
neither trained nor scored), the first symbol of each new string is scored. A batch is padded to its
longest sequence with ``.`` (id 0) in the inputs and ``IGNORE_INDEX`` in the targets. Automata are
unique within a batch and can be excluded by key (``exclude``), so a test set never repeats a training language.

Metrics (§3.4), on the positions with a target that is not ``IGNORE_INDEX``:

* **accuracy** (the reference code's ``dfa_accuracy``): the greedy next token is correct iff the automaton
  can read it from the current state, i.e. it has non-zero probability under the true PFA (predicting ``|``
  or ``.`` is wrong). This is NOT argmax agreement with the sampled target; :func:`pfa_scores` reports that
  too, as ``exact``.
* **total variation** ``0.5 * sum_v |p_model(v) - p_true(v)|`` over the whole vocabulary, with ``p_true``
  uniform over the current state's outgoing symbols (the code's ``model_dfa_diff`` is the L1 distance, twice this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from mesanet.utils.validation import check_int

from .base import IGNORE_INDEX, make_rng
from .pfa import LETTER_IDS, PAD_ID, SEP_ID, VOCAB_SIZE, canonical_key, sample_automaton, walks


@dataclass(frozen=True)
class RegBenchConfig:
    """Defaults: the reference sizes (§3.1-3.2): 4-12 states, 4-18 letters, out-degree 1-3, 10-19 strings of
    1-49 symbols (sequences up to ~949 tokens). ``max_attempts_factor``: automata drawn per one needed before
    giving up on finding enough distinct languages (the reference uses 10)."""

    min_states: int = 4
    max_states: int = 12
    min_alphabet: int = 4
    max_alphabet: int = 18
    max_out_degree: int = 3
    min_strings: int = 10
    max_strings: int = 19
    min_len: int = 1
    max_len: int = 49
    max_attempts_factor: int = 10

    def __post_init__(self) -> None:
        deg = check_int("max_out_degree", self.max_out_degree, minimum=1)
        check_int("min_states", self.min_states, minimum=deg + 1, what="max_out_degree + 1: edges go to distinct other states")
        check_int("max_states", self.max_states, minimum=self.min_states, what="min_states")
        check_int("min_alphabet", self.min_alphabet, minimum=deg, maximum=len(LETTER_IDS), what="max_out_degree .. 18 letters")
        check_int(
            "max_alphabet", self.max_alphabet, minimum=self.min_alphabet, maximum=len(LETTER_IDS), what="min_alphabet .. 18"
        )
        check_int("min_strings", self.min_strings, minimum=1)
        check_int("max_strings", self.max_strings, minimum=self.min_strings, what="min_strings")
        check_int("min_len", self.min_len, minimum=1)
        check_int("max_len", self.max_len, minimum=self.min_len, what="min_len")
        check_int("max_attempts_factor", self.max_attempts_factor, minimum=1)

    @property
    def max_seq_len(self) -> int:
        """Longest possible input row: ``max_strings`` strings of ``max_len`` with separators, minus the shift."""
        return self.max_strings * (self.max_len + 1) - 2


class RegBenchBatch(NamedTuple):
    """``inputs`` / ``targets`` int64 ``[N, T]`` as a ``TokenBatch``; ``states`` int64 ``[N, T]``: the automaton
    state after reading the current string up to position t (the state emitting the next symbol; 0 right after
    a ``|``; -1 on padding); ``tables`` int64 ``[N, S_max, V]``: each sequence's minimised transition table
    (-1: no edge; rows past ``num_states[n]`` are all -1); ``num_states`` int64 ``[N]``."""

    inputs: Tensor
    targets: Tensor
    states: Tensor
    tables: Tensor
    num_states: Tensor

    def subset(self, index) -> "RegBenchBatch":
        """The same fields for the rows ``index`` (a slice, indices or a mask)."""
        return RegBenchBatch(*(t[index] for t in self))


def automaton_keys(batch: RegBenchBatch) -> set[bytes]:
    """Canonical keys of the batch's automata (to exclude them from another draw)."""
    return {canonical_key(batch.tables[i, : int(batch.num_states[i])].numpy()) for i in range(batch.tables.shape[0])}


def _sample_unique(count: int, rng: np.random.Generator, cfg: RegBenchConfig, exclude: set[bytes]) -> list[np.ndarray]:
    found: list[np.ndarray] = []
    seen = set(exclude)
    attempts = 0
    while len(found) < count:
        if attempts >= cfg.max_attempts_factor * count:
            raise ValueError(
                f"regbench: expected {count} distinct automata within {attempts} draws, found {len(found)}; "
                "widen the state / alphabet ranges or ask for fewer sequences"
            )
        attempts += 1
        table = sample_automaton(
            rng,
            min_states=cfg.min_states,
            max_states=cfg.max_states,
            min_alphabet=cfg.min_alphabet,
            max_alphabet=cfg.max_alphabet,
            max_out_degree=cfg.max_out_degree,
        )
        key = canonical_key(table)
        if key not in seen:
            seen.add(key)
            found.append(table)
    return found


def _sequence(rng: np.random.Generator, table: np.ndarray, cfg: RegBenchConfig) -> tuple[list[int], list[int]]:
    """``(tokens, emit_states)``: the joined strings and, per token, the state it is emitted from (a ``|`` gets
    the state its string ended in)."""
    tokens: list[int] = []
    emit: list[int] = []
    num = int(rng.integers(cfg.min_strings, cfg.max_strings + 1))
    for i, (symbols, states) in enumerate(walks(rng, table, rng.integers(cfg.min_len, cfg.max_len + 1, size=num))):
        if i:
            tokens.append(SEP_ID)
        tokens += symbols
        emit += states  # one more state than symbols: the end state, which is the next separator's
    emit.pop()  # no separator after the last string
    return tokens, emit


def regbench(
    num_sequences: int, seed: int | np.random.Generator, config: RegBenchConfig | None = None, exclude: Iterable[bytes] = ()
) -> RegBenchBatch:
    """``num_sequences`` RegBench sequences with distinct automata, none of whose key is in ``exclude``."""
    cfg = config or RegBenchConfig()
    if not isinstance(cfg, RegBenchConfig):
        raise ValueError(f"config: expected a RegBenchConfig, got {type(cfg).__name__}")
    count = check_int("num_sequences", num_sequences, minimum=1)
    rng = make_rng(seed)
    tables = _sample_unique(count, rng, cfg, set(exclude))
    seqs = [_sequence(rng, t, cfg) for t in tables]
    T = max(len(tok) for tok, _ in seqs) - 1
    if T < 1:  # every sequence is one symbol long: nothing to predict; keep one padded position
        T = 1
    inputs = np.full((count, T), PAD_ID, dtype=np.int64)
    targets = np.full((count, T), IGNORE_INDEX, dtype=np.int64)
    states = np.full((count, T), -1, dtype=np.int64)
    for n, (tok, emit) in enumerate(seqs):
        k = len(tok) - 1
        if k < 1:
            continue
        tok_a = np.asarray(tok)
        inputs[n, :k] = tok_a[:-1]
        targets[n, :k] = np.where(tok_a[1:] == SEP_ID, IGNORE_INDEX, tok_a[1:])
        states[n, :k] = emit[1:]
    s_max = max(t.shape[0] for t in tables)
    padded = np.full((count, s_max, VOCAB_SIZE), -1, dtype=np.int64)
    for n, t in enumerate(tables):
        padded[n, : t.shape[0]] = t
    return RegBenchBatch(
        torch.from_numpy(inputs),
        torch.from_numpy(targets),
        torch.from_numpy(states),
        torch.from_numpy(padded),
        torch.tensor([t.shape[0] for t in tables], dtype=torch.int64),
    )


def true_next_probs(tables: Tensor, states: Tensor) -> Tensor:
    """``[B, T, V]`` the PFA's next-symbol distribution at every position with ``states >= 0`` (zeros elsewhere)."""
    rows = tables[torch.arange(tables.shape[0])[:, None], states.clamp(min=0)]  # [B, T, V]
    edges = (rows >= 0) & (states >= 0)[..., None]
    return edges.double() / edges.sum(-1, keepdim=True).clamp(min=1)


def pfa_scores(logits: Tensor, targets: Tensor, states: Tensor, tables: Tensor) -> dict[str, float]:
    """Sums over the scored positions (``targets != IGNORE_INDEX``) of one batch: ``correct`` (greedy token
    readable by the automaton), ``exact`` (greedy token == target), ``tv`` (total variation of
    ``softmax(logits)`` from the true distribution) and ``count``. Divide by ``count`` for the means."""
    keep = targets != IGNORE_INDEX
    if bool((states[keep] < 0).any()):
        raise ValueError("pfa_scores: a scored position has no automaton state (states < 0)")
    pred = logits.argmax(-1)
    rows = tables[torch.arange(tables.shape[0])[:, None], states.clamp(min=0)]  # [B, T, V]
    readable = rows.gather(-1, pred[..., None])[..., 0] >= 0
    probs = torch.softmax(logits.double(), dim=-1)
    tv = 0.5 * (probs - true_next_probs(tables, states)).abs().sum(-1)
    return dict(
        correct=float(readable[keep].sum()),
        exact=float((pred == targets)[keep].sum()),
        tv=float(tv[keep].sum()),
        count=float(keep.sum()),
    )


def ngram_probs(batch: RegBenchBatch, order: int = 3) -> Tensor:
    """``[N, T, V]`` next-token distribution of an in-context n-gram model with back-off, a reference point
    that needs no training (the reference code reports a 3-gram too). At position t it counts, earlier in
    the same sequence, the successors of the last ``order - 1`` tokens (``|`` included in contexts, never
    counted as a successor: like the models, it is not asked to predict a string's end); with no match it
    backs off to shorter contexts, then to the symbols seen so far, then to uniform over the letters."""
    check_int("order", order, minimum=1)
    n, T = batch.inputs.shape
    out = torch.zeros(n, T, VOCAB_SIZE, dtype=torch.float64)
    uniform = torch.zeros(VOCAB_SIZE, dtype=torch.float64)
    uniform[list(LETTER_IDS)] = 1 / len(LETTER_IDS)
    for i in range(n):
        length = int((batch.inputs[i] != PAD_ID).sum())
        tokens = batch.inputs[i, :length].tolist() + [int(batch.targets[i, length - 1])] if length else []
        counts: list[dict[tuple, dict[int, int]]] = [{} for _ in range(order)]  # counts[k]: context of k tokens
        for t in range(length):
            dist = None
            for k in range(min(order - 1, t + 1), -1, -1):
                seen = counts[k].get(tuple(tokens[t + 1 - k : t + 1]))
                if seen:
                    total = sum(seen.values())
                    dist = torch.zeros(VOCAB_SIZE, dtype=torch.float64)
                    for sym, c in seen.items():
                        dist[sym] = c / total
                    break
            out[i, t] = uniform if dist is None else dist
            nxt = tokens[t + 1]
            if nxt != SEP_ID:
                for k in range(min(order - 1, t + 1) + 1):
                    table = counts[k].setdefault(tuple(tokens[t + 1 - k : t + 1]), {})
                    table[nxt] = table.get(nxt, 0) + 1
    return out


def ngram_scores(batch: RegBenchBatch, order: int = 3) -> dict[str, float]:
    """:func:`pfa_scores` of the in-context n-gram (:func:`ngram_probs`) on ``batch``: means ``acc``, ``tv``, ``exact_acc``."""
    probs = ngram_probs(batch, order)
    logits = torch.where(probs > 0, probs.log(), torch.full_like(probs, -math.inf))
    s = pfa_scores(logits, batch.targets, batch.states, batch.tables)
    n = s["count"] or math.nan
    return dict(acc=s["correct"] / n, tv=s["tv"] / n, exact_acc=s["exact"] / n)


__all__ = [
    "RegBenchBatch",
    "RegBenchConfig",
    "automaton_keys",
    "ngram_probs",
    "ngram_scores",
    "pfa_scores",
    "regbench",
    "true_next_probs",
]
