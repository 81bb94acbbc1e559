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

Modules: ``config`` (NeedleConfig, constants), ``prompts`` (haystacks, needle, query, corpus), ``scoring``
(model answers, aggregation), ``results`` (typed results, markdown), ``report`` (files), ``run`` (CLI).
"""

from .config import (
    CHANCE_LOGPROB_PER_DIGIT,
    DOC_SEPARATOR,
    HAYSTACKS,
    NEEDLE_CSV,
    NEEDLE_MD,
    NEEDLE_PNG,
    NEEDLE_TRIALS_CSV,
    NeedleConfig,
)
from .prompts import NeedlePrompt, build_prompt, corpus_documents, haystack, make_prompts, noise_lines, random_value
from .report import plot_needle, write_needle
from .results import NeedleCell, NeedleResult, NeedleTrial
from .run import main, run_needle
from .scoring import needle_in_a_haystack, score_prompts

__all__ = [
    "DOC_SEPARATOR",
    "NEEDLE_CSV",
    "NEEDLE_MD",
    "NEEDLE_PNG",
    "NEEDLE_TRIALS_CSV",
    "CHANCE_LOGPROB_PER_DIGIT",
    "HAYSTACKS",
    "NeedleCell",
    "NeedleConfig",
    "NeedlePrompt",
    "NeedleResult",
    "NeedleTrial",
    "build_prompt",
    "corpus_documents",
    "haystack",
    "main",
    "make_prompts",
    "needle_in_a_haystack",
    "noise_lines",
    "plot_needle",
    "random_value",
    "run_needle",
    "score_prompts",
    "write_needle",
]
