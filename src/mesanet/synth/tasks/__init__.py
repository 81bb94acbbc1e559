"""Seeded generators for synthetic in-context-learning tasks (no training code here).

* MAD (Poli et al. 2024) as MesaNet used it: ``in_context_recall``, ``noisy_recall``, ``fuzzy_recall``,
  ``selective_copying``, ``compression``, ``memorization``; baselines are the config defaults and
  ``mad_settings(task)`` lists the difficulty grid.
* ``mqar``: Zoology's multi-query associative recall.
* ``regbench``: RegBench in-context language learning (one random PFA per sequence, kept in the batch) and
  ``pfa_scores`` (accuracy and total variation against each automaton's true next-token distribution).
* ``in_context_regression`` (continuous tokens) and ``ridge_prediction_loss`` (its optimal reference).

Token tasks return ``TokenBatch(inputs, targets)``: int64 ``[N, T]`` with ``IGNORE_INDEX`` (-100) where no
loss applies. Every generator takes ``(num_sequences, seed, config=None)``; ``seed`` is an int or a
``numpy.random.Generator`` (pass one generator to draw a training set and then a disjoint test set).
"""

from .base import IGNORE_INDEX, MAD_DATA_SEED, TokenBatch, make_rng
from .compression import CompressionConfig, compression
from .fuzzy_recall import FuzzyRecallConfig, fuzzy_recall
from .mad_settings import MAD_NUM_TEST, MAD_TASKS, MadSetting, mad_settings
from .memorization import MemorizationConfig, memorization, memorization_map
from .mqar import MQARConfig, mqar
from .pfa import PAD_ID, SEP_ID, VOCAB, VOCAB_SIZE
from .recall import InContextRecallConfig, NoisyRecallConfig, generate_recall, in_context_recall, noisy_recall
from .regbench import (
    RegBenchBatch,
    RegBenchConfig,
    automaton_keys,
    ngram_probs,
    ngram_scores,
    pfa_scores,
    regbench,
    true_next_probs,
)
from .regression import (
    InContextRegressionConfig,
    RegressionBatch,
    bayes_optimal_ridge,
    in_context_regression,
    ridge_prediction_loss,
)
from .selective_copying import SelectiveCopyingConfig, selective_copying

__all__ = [
    "IGNORE_INDEX",
    "MAD_DATA_SEED",
    "TokenBatch",
    "make_rng",
    "InContextRecallConfig",
    "NoisyRecallConfig",
    "generate_recall",
    "in_context_recall",
    "noisy_recall",
    "FuzzyRecallConfig",
    "fuzzy_recall",
    "SelectiveCopyingConfig",
    "selective_copying",
    "CompressionConfig",
    "compression",
    "MemorizationConfig",
    "memorization",
    "memorization_map",
    "MAD_NUM_TEST",
    "MAD_TASKS",
    "MadSetting",
    "mad_settings",
    "MQARConfig",
    "mqar",
    "PAD_ID",
    "SEP_ID",
    "VOCAB",
    "VOCAB_SIZE",
    "RegBenchBatch",
    "RegBenchConfig",
    "automaton_keys",
    "ngram_probs",
    "ngram_scores",
    "pfa_scores",
    "regbench",
    "true_next_probs",
    "InContextRegressionConfig",
    "RegressionBatch",
    "bayes_optimal_ridge",
    "in_context_regression",
    "ridge_prediction_loss",
]
