"""Random probabilistic finite automata (PFAs) of RegBench: sampling, minimisation, canonical form, walks.

Spec: ``synthetic-tasks.md`` §3.1 (Akyürek et al. 2024). An automaton is a deterministic transition table
``table [S, V]`` over the RegBench vocabulary (:data:`VOCAB`): ``table[s, a]`` is the state reached from ``s`` on
symbol ``a``, or -1 where ``s`` has no edge labelled ``a``. The start state is 0 and every state accepts, so
the language is "every walk from state 0"; as a PFA the next symbol from ``s`` is uniform over ``s``'s
outgoing symbols (no stop probability: string lengths are drawn separately).

Sampling draws n states and an alphabet, gives every state 1..``max_out_degree`` edges with distinct symbols
to distinct other states (no self-loops), then trims the states unreachable from 0, minimises (Moore's
partition refinement) and renumbers the states in breadth-first order from 0, visiting symbols by id. Two
automata with the same language then have the same table, so ``canonical_key`` de-duplicates languages.
Minimising keeps the PFA's distribution over strings: equivalent states have the same outgoing symbols and
equivalent successors. Every state of the result has at least one outgoing edge (walks never get stuck).
"""

from __future__ import annotations

from collections import deque

import numpy as np

#: RegBench vocabulary in id order (ASCII-sorted): pad/no-op ``.``, the 18 letters a-r, separator ``|``.
VOCAB = (".", *"abcdefghijklmnopqr", "|")
PAD_ID = 0
SEP_ID = len(VOCAB) - 1
#: Ids of the letters a-r (the symbols an automaton may use).
LETTER_IDS = tuple(range(1, SEP_ID))
VOCAB_SIZE = len(VOCAB)


def sample_raw_automaton(rng: np.random.Generator, num_states: int, alphabet: np.ndarray, max_out_degree: int) -> np.ndarray:
    """Step 3 of §3.1: ``[num_states, V]`` table, each state with ``d ~ U{1..max_out_degree}`` edges to distinct
    other states on distinct symbols of ``alphabet`` (needs ``num_states - 1`` and ``len(alphabet) >= max_out_degree``)."""
    table = np.full((num_states, VOCAB_SIZE), -1, dtype=np.int64)
    for s in range(num_states):
        d = int(rng.integers(1, max_out_degree + 1))
        symbols = rng.choice(alphabet, size=d, replace=False)
        others = np.delete(np.arange(num_states), s)
        table[s, symbols] = rng.choice(others, size=d, replace=False)
    return table


def reachable(table: np.ndarray, start: int = 0) -> list[int]:
    """States reachable from ``start`` in breadth-first order, symbols visited by id (``start`` first)."""
    order, seen = [start], {start}
    queue = deque([start])
    while queue:
        s = queue.popleft()
        for nxt in table[s][table[s] >= 0]:  # ascending symbol id
            nxt = int(nxt)
            if nxt not in seen:
                seen.add(nxt)
                order.append(nxt)
                queue.append(nxt)
    return order


def minimize(table: np.ndarray) -> np.ndarray:
    """Minimal, trimmed, canonically numbered table of ``table``'s language (all states accepting, start 0).

    Moore's refinement with the missing transitions going to an implicit rejecting sink: two states stay in
    one block while, for every symbol, both lack the edge or both lead into one block."""
    keep = reachable(table)
    index = {s: i for i, s in enumerate(keep)}
    sub = np.array([[index[int(t)] if t >= 0 else -1 for t in table[s]] for s in keep], dtype=np.int64).reshape(len(keep), -1)
    block = np.zeros(len(keep), dtype=np.int64)
    while True:
        succ = np.where(sub >= 0, block[np.maximum(sub, 0)], -1)
        signatures = {}
        new = np.array([signatures.setdefault((int(block[s]), succ[s].tobytes()), len(signatures)) for s in range(len(keep))])
        if len(signatures) == len(np.unique(block)):
            break
        block = new
    first = {int(b): s for s, b in reversed(list(enumerate(block)))}  # a representative per block
    quotient = np.array([np.where(sub[first[b]] >= 0, block[np.maximum(sub[first[b]], 0)], -1) for b in range(len(first))])
    # blocks are numbered by first appearance, so state 0's block is 0; renumber breadth-first from it
    order = reachable(quotient)
    rename = {b: i for i, b in enumerate(order)}
    out = np.full((len(order), table.shape[1]), -1, dtype=np.int64)
    for i, b in enumerate(order):
        edges = quotient[b] >= 0
        out[i, edges] = [rename[int(t)] for t in quotient[b][edges]]
    return out


def canonical_key(table: np.ndarray) -> bytes:
    """Hashable identity of a minimised table (equal keys <=> equal languages)."""
    return np.asarray(table, dtype=np.int64).tobytes()


def sample_automaton(
    rng: np.random.Generator, *, min_states: int, max_states: int, min_alphabet: int, max_alphabet: int, max_out_degree: int
) -> np.ndarray:
    """One minimised automaton (§3.1 steps 1-5): n ~ U{min..max_states}, |Σ| ~ U{min..max_alphabet} letters."""
    n = int(rng.integers(min_states, max_states + 1))
    k = int(rng.integers(min_alphabet, max_alphabet + 1))
    alphabet = rng.choice(np.asarray(LETTER_IDS), size=k, replace=False)
    return minimize(sample_raw_automaton(rng, n, alphabet, max_out_degree))


def next_symbol_probs(table: np.ndarray) -> np.ndarray:
    """``[S, V]`` PFA next-symbol distribution per state: uniform over the state's outgoing symbols."""
    edges = (np.asarray(table) >= 0).astype(np.float64)
    return edges / edges.sum(axis=1, keepdims=True)


def walks(rng: np.random.Generator, table: np.ndarray, lengths) -> list[tuple[list[int], list[int]]]:
    """Independent random walks from state 0, one per length: ``(symbols, states)`` each, with ``states[i]``
    the state that emits ``symbols[i]`` and ``states[-1]`` the state after the last symbol."""
    options = [np.flatnonzero(row >= 0).tolist() for row in table]
    rows = table.tolist()
    out = []
    for length in lengths:
        symbols, states = [], [0]
        state = 0
        for u in rng.random(int(length)).tolist():  # one uniform per step picks among the state's symbols
            choices = options[state]
            a = choices[min(int(u * len(choices)), len(choices) - 1)]
            symbols.append(a)
            state = rows[state][a]
            states.append(state)
        out.append((symbols, states))
    return out


__all__ = [
    "LETTER_IDS",
    "PAD_ID",
    "SEP_ID",
    "VOCAB",
    "VOCAB_SIZE",
    "canonical_key",
    "minimize",
    "next_symbol_probs",
    "reachable",
    "sample_automaton",
    "sample_raw_automaton",
    "walks",
]
