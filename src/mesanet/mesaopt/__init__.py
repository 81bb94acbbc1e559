"""The toolkit of "Uncovering mesa-optimization algorithms in Transformers" (``mesanet mesaopt <analysis>``,
= ``python -m mesanet.mesaopt <analysis>``).

* :mod:`~mesanet.mesaopt.data`: linear-dynamics sequences and few-shot regression prompts (continuous tokens);
* :mod:`~mesanet.mesaopt.layers`: linear / softmax self-attention and the regression Mesa layer;
* :mod:`~mesanet.mesaopt.models`: ``SequenceModel(SeqModelConfig(layers=[...]))``, the paper's sequence models;
* :mod:`~mesanet.mesaopt.analysis`: reference algorithms (one-step GD, CompressedAlg, compression), training and
  the model zoo, and one module per analysis (file name = CLI command with ``_`` for ``-``).

The toolkit builds on the language-model core (``ops``, ``layers``, ``train``, ``utils``); nothing in the core
imports it.
"""

from .data import LDSConfig, generate_fewshot, generate_lds
from .layers import LinearSelfAttention, RegressionMesa, SoftmaxSelfAttention
from .models import LAYER_KINDS, SeqModelConfig, SequenceModel

__all__ = [
    "LAYER_KINDS",
    "LDSConfig",
    "LinearSelfAttention",
    "RegressionMesa",
    "SeqModelConfig",
    "SequenceModel",
    "SoftmaxSelfAttention",
    "generate_fewshot",
    "generate_lds",
]
