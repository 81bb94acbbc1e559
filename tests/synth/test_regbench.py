"""RegBench: automata (distributions, reachability, determinism, minimality, language kept), sequences (only allowed
transitions, layout, padding), seeding, disjoint splits, and the accuracy / total-variation metrics on hand-made cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mesanet.synth.tasks import IGNORE_INDEX, RegBenchConfig, automaton_keys, pfa_scores, regbench, true_next_probs
from mesanet.synth.tasks.pfa import (
    LETTER_IDS,
    PAD_ID,
    SEP_ID,
    VOCAB,
    VOCAB_SIZE,
    canonical_key,
    minimize,
    next_symbol_probs,
    reachable,
    sample_automaton,
    sample_raw_automaton,
    walks,
)

from tolerances import SAMPLED_FREQUENCY_ATOL

A, B, C = (VOCAB.index(ch) for ch in "abc")
SMALL = RegBenchConfig(min_strings=2, max_strings=5, max_len=12)


def _table(edges: dict[int, dict[int, int]], num_states: int) -> np.ndarray:
    t = np.full((num_states, VOCAB_SIZE), -1, dtype=np.int64)
    for s, out in edges.items():
        for sym, dest in out.items():
            t[s, sym] = dest
    return t


def _string_probs(table: np.ndarray, max_len: int) -> dict[tuple[int, ...], float]:
    """Probability of every string of length <= max_len under the PFA semantics (walk from 0, uniform symbol)."""
    probs = next_symbol_probs(table)
    out = {(): 1.0}
    frontier = {(): (0, 1.0)}
    for _ in range(max_len):
        nxt = {}
        for word, (state, p) in frontier.items():
            for sym in np.flatnonzero(table[state] >= 0):
                nxt[word + (int(sym),)] = (int(table[state, sym]), p * probs[state, sym])
        out.update({w: p for w, (_, p) in nxt.items()})
        frontier = nxt
    return out


def _distinguishable_pairs(table: np.ndarray) -> set[tuple[int, int]]:
    """Table-filling (Myhill-Nerode) with an implicit rejecting sink: independent of ``minimize``'s refinement."""
    n = table.shape[0]
    sink = n
    full = np.vstack([np.where(table >= 0, table, sink), np.full((1, table.shape[1]), sink)])
    marked = {(p, q) for p in range(n) for q in range(n + 1) if p != q and q == sink}  # every real state accepts
    changed = True
    while changed:
        changed = False
        for p, q in itertools.combinations(range(n + 1), 2):
            if (p, q) in marked:
                continue
            for sym in range(table.shape[1]):
                a, b = sorted((int(full[p, sym]), int(full[q, sym])))
                if a != b and (a, b) in marked:
                    marked.add((p, q))
                    changed = True
                    break
    return marked


# --- automata --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_sampled_automaton_properties(seed):
    cfg = RegBenchConfig()
    rng = np.random.default_rng(seed)
    t = sample_automaton(
        rng,
        min_states=cfg.min_states,
        max_states=cfg.max_states,
        min_alphabet=cfg.min_alphabet,
        max_alphabet=cfg.max_alphabet,
        max_out_degree=cfg.max_out_degree,
    )
    n = t.shape[0]
    assert t.shape == (n, VOCAB_SIZE) and 1 <= n <= cfg.max_states
    assert ((t >= -1) & (t < n)).all()  # deterministic: one destination (or none) per (state, symbol)
    assert (t[:, PAD_ID] == -1).all() and (t[:, SEP_ID] == -1).all()  # only letters label edges
    degree = (t >= 0).sum(1)
    assert (degree >= 1).all() and (degree <= cfg.max_out_degree).all()  # walks never get stuck
    assert len(np.unique(np.flatnonzero((t >= 0).any(0)))) <= cfg.max_alphabet
    probs = next_symbol_probs(t)
    assert np.allclose(probs.sum(1), 1.0) and (probs >= 0).all() and ((probs > 0) == (t >= 0)).all()
    assert reachable(t) == list(range(n))  # every state reachable from 0, numbered breadth-first
    assert len(_distinguishable_pairs(t)) == n * (n + 1) // 2  # minimal: every pair of states (and the sink) differs
    assert np.array_equal(minimize(t), t)


@pytest.mark.parametrize("seed", range(6))
def test_minimisation_keeps_language_and_pfa_distribution(seed):
    rng = np.random.default_rng(100 + seed)
    raw = sample_raw_automaton(rng, 6, np.array([A, B, C]), 3)
    small = minimize(raw)
    assert small.shape[0] <= 6
    p_raw, p_small = _string_probs(raw, 5), _string_probs(small, 5)
    assert p_raw.keys() == p_small.keys()  # same language (up to length 5)
    assert all(math.isclose(p_raw[w], p_small[w], rel_tol=1e-12) for w in p_raw)  # same PFA distribution


def test_minimisation_hand_made():
    # 0 -a-> 1, 0 -b-> 2; 1 and 2 both -c-> 0 (equivalent); 3 is unreachable
    raw = _table({0: {A: 1, B: 2}, 1: {C: 0}, 2: {C: 0}, 3: {A: 0}}, 4)
    assert np.array_equal(minimize(raw), _table({0: {A: 1, B: 1}, 1: {C: 0}}, 2))
    # a 2-cycle on one letter is the language a*: one state with a self-loop
    assert np.array_equal(minimize(_table({0: {A: 1}, 1: {A: 0}}, 2)), _table({0: {A: 0}}, 1))


def test_canonical_key_ignores_state_numbering():
    rng = np.random.default_rng(7)
    raw = sample_raw_automaton(rng, 8, np.array(LETTER_IDS[:6]), 3)
    perm = np.concatenate([[0], 1 + rng.permutation(7)])  # relabel every state but the start
    relabelled = np.full_like(raw, -1)
    for s in range(8):
        relabelled[perm[s]] = np.where(raw[s] >= 0, perm[np.maximum(raw[s], 0)], -1)
    assert canonical_key(minimize(raw)) == canonical_key(minimize(relabelled))


def test_walks_follow_edges_and_pick_uniformly():
    t = _table({0: {A: 1, B: 2, C: 0}, 1: {A: 0}, 2: {B: 0}}, 3)
    rng = np.random.default_rng(0)
    out = walks(rng, t, [1] * 6000 + [30] * 50)
    for symbols, states in out:
        assert states[0] == 0 and len(states) == len(symbols) + 1
        assert all(t[s, a] == s2 for s, a, s2 in zip(states, symbols, states[1:]))
    first = np.bincount([w[0][0] for w in out[:6000]], minlength=VOCAB_SIZE)[[A, B, C]] / 6000
    assert np.allclose(first, 1 / 3, atol=SAMPLED_FREQUENCY_ATOL)


# --- sequences -------------------------------------------------------------------------------------------


def _check_row(inp, tgt, st, table, cfg):
    k = int((inp != PAD_ID).sum())
    assert (inp[k:] == PAD_ID).all() and (tgt[k:] == IGNORE_INDEX).all() and (st[k:] == -1).all()
    tokens = list(inp[:k]) + [int(tgt[k - 1])]  # the last token is a symbol (no trailing separator)
    assert tokens[0] != SEP_ID and tokens[-1] != SEP_ID
    strings = [list(g) for sep, g in itertools.groupby(tokens, lambda x: x == SEP_ID) if not sep]
    assert tokens.count(SEP_ID) == len(strings) - 1  # no empty string
    assert cfg.min_strings <= len(strings) <= cfg.max_strings
    assert all(cfg.min_len <= len(s) <= cfg.max_len for s in strings)
    state = 0
    for t in range(k):
        tok = tokens[t]
        if tok == SEP_ID:
            state = 0
        else:
            assert table[state, tok] >= 0, "a symbol the automaton cannot read"
            state = int(table[state, tok])
        assert st[t] == state
        nxt = tokens[t + 1]
        assert tgt[t] == (IGNORE_INDEX if nxt == SEP_ID else nxt)
        if nxt != SEP_ID:
            assert table[state, nxt] >= 0


def test_sequences_use_only_allowed_transitions():
    batch = regbench(64, 3, SMALL)
    n, T = batch.inputs.shape
    assert batch.targets.shape == batch.states.shape == (n, T) and batch.tables.shape[:2] == (n, int(batch.num_states.max()))
    assert T == max(int((row != PAD_ID).sum()) for row in batch.inputs)  # padded to the longest row
    for i in range(n):
        table = batch.tables[i, : int(batch.num_states[i])].numpy()
        assert (batch.tables[i, int(batch.num_states[i]) :] == -1).all()
        _check_row(batch.inputs[i].numpy(), batch.targets[i].numpy(), batch.states[i].numpy(), table, SMALL)
    assert len(automaton_keys(batch)) == n  # one distinct automaton per sequence


def test_default_sizes_follow_the_spec():
    cfg = RegBenchConfig()
    batch = regbench(16, 0, cfg)
    assert batch.inputs.shape[1] <= cfg.max_seq_len == 949 - 1
    for i in range(16):
        table = batch.tables[i, : int(batch.num_states[i])].numpy()
        _check_row(batch.inputs[i].numpy(), batch.targets[i].numpy(), batch.states[i].numpy(), table, cfg)


def test_seeding_and_disjoint_splits():
    a, b, c = regbench(8, 11, SMALL), regbench(8, 11, SMALL), regbench(8, 12, SMALL)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.tables, c.tables) or not torch.equal(a.inputs, c.inputs)
    rng = np.random.default_rng(5)
    train = regbench(50, rng, SMALL)
    test = regbench(50, rng, SMALL, exclude=automaton_keys(train))
    assert not automaton_keys(train) & automaton_keys(test)


def test_too_few_languages_is_an_error():
    tiny = RegBenchConfig(min_states=2, max_states=2, min_alphabet=1, max_alphabet=1, max_out_degree=1)
    regbench(5, 0, tiny)  # one letter -> 18 languages (x*), enough for 5
    with pytest.raises(ValueError, match="distinct automata"):
        regbench(19, 0, tiny)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_states": 3}, "min_states"),  # 3 states cannot give 3 edges to distinct other states
        ({"max_alphabet": 19}, "max_alphabet"),
        ({"min_strings": 5, "max_strings": 4}, "max_strings"),
        ({"min_len": 0}, "min_len"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RegBenchConfig(**kwargs)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_sequences"):
        regbench(0, 0)
    with pytest.raises(ValueError, match="RegBenchConfig"):
        regbench(1, 0, object())


# --- metrics ---------------------------------------------------------------------------------------------


def _hand_batch():
    """One sequence ``a c | b`` of ``0 -a-> 1, 0 -b-> 1, 1 -c-> 0``: inputs a c | , targets c (a) ... by hand."""
    table = torch.from_numpy(_table({0: {A: 1, B: 1}, 1: {C: 0}}, 2))[None]
    inputs = torch.tensor([[A, C, SEP_ID]])
    targets = torch.tensor([[C, IGNORE_INDEX, B]])  # after "a": c; after "a c": "|" (unscored); after "|": b
    states = torch.tensor([[1, 0, 0]])
    return inputs, targets, states, table


def _logits(rows):
    p = torch.tensor(rows, dtype=torch.float64)
    return torch.where(p > 0, p.log(), torch.full_like(p, -math.inf))[None]


def test_true_distribution_gives_tv_zero_and_accuracy_one():
    _, targets, states, table = _hand_batch()
    truth = true_next_probs(table, states)
    assert torch.allclose(truth.sum(-1), torch.ones(1, 3, dtype=torch.float64))
    assert truth[0, 0, C] == 1 and truth[0, 2, A] == truth[0, 2, B] == 0.5
    s = pfa_scores(_logits(truth[0].tolist()), targets, states, table)
    assert s["count"] == 2 and s["correct"] == 2 and s["tv"] == pytest.approx(0.0, abs=1e-12)


def test_off_distribution_hand_computed():
    _, targets, states, table = _hand_batch()
    rows = np.zeros((3, VOCAB_SIZE))
    rows[0, [C, SEP_ID]] = [0.25, 0.75]  # true: c w.p. 1 -> TV = 0.5 (0.75 + 0.75) = 0.75; greedy "|" is wrong
    rows[1, PAD_ID] = 1.0  # unscored position (target "|"): must not count
    rows[2, [A, C, SEP_ID]] = [0.7, 0.2, 0.1]  # true: a, b w.p. 0.5 -> TV = 0.5 (0.2 + 0.5 + 0.2 + 0.1) = 0.5; greedy a ok
    s = pfa_scores(_logits(rows.tolist()), targets, states, table)
    assert s["count"] == 2
    assert s["correct"] == 1  # position 2 (a is readable from state 0); position 0 predicted "|"
    assert s["exact"] == 0  # neither greedy token equals the sampled target (c, b)
    assert s["tv"] == pytest.approx(0.75 + 0.5, abs=1e-12)


def test_scored_position_without_state_is_an_error():
    _, targets, states, table = _hand_batch()
    with pytest.raises(ValueError, match="no automaton state"):
        pfa_scores(torch.zeros(1, 3, VOCAB_SIZE), targets, torch.tensor([[-1, 0, 0]]), table)


def test_in_context_ngram_hand_made():
    # tokens a b a b | a (from 0 -a-> 1 -b-> 0): inputs are the first five, targets the shift with "|" ignored
    from mesanet.synth.tasks import RegBenchBatch, ngram_probs, ngram_scores

    table = torch.from_numpy(_table({0: {A: 1}, 1: {B: 0}}, 2))[None]
    batch = RegBenchBatch(
        torch.tensor([[A, B, A, B, SEP_ID, PAD_ID]]),
        torch.tensor([[B, A, B, IGNORE_INDEX, A, IGNORE_INDEX]]),
        torch.tensor([[1, 0, 1, 0, 0, -1]]),
        table,
        torch.tensor([2]),
    )
    p = ngram_probs(batch, 3)
    letters = torch.zeros(VOCAB_SIZE, dtype=torch.float64)
    letters[list(LETTER_IDS)] = 1 / 18
    assert torch.equal(p[0, 0], letters)  # nothing seen yet: uniform over the letters
    assert p[0, 1, A] == 0 and p[0, 1, B] == 1  # context "a b" new, "b" new -> unigram of successors so far: {b}
    assert p[0, 2, B] == 1  # context "b a" new -> back off to "a", followed by b once
    assert p[0, 3, A] == 1  # context "a b" seen once, followed by a
    assert p[0, 4, B] == pytest.approx(2 / 3) and p[0, 4, A] == pytest.approx(1 / 3)  # "|" never a successor
    assert (p[0, 5] == 0).all()  # padding
    s = ngram_scores(batch, 3)
    # scored positions 0, 1, 2, 4 (3's target is "|"): 0 greedy a (uniform tie) but state 1 reads only b; 1 greedy b,
    # state 0 reads only a; 2 greedy b from state 1: right; 4 greedy b from state 0: wrong
    assert s["acc"] == pytest.approx(1 / 4)
    tv = [0.5 * (17 / 18 + 17 / 18), 1.0, 0.0, 0.5 * (2 / 3 + 2 / 3)]
    assert s["tv"] == pytest.approx(sum(tv) / 4)
