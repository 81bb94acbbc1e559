"""Training data: corpora (stdlib / local text / Hugging Face datasets), byte-level BPE, cached token streams.

``prepare_data(DataConfig(...))`` -> ``PreparedData`` (tokenizer, memory-mapped train/val token
arrays, hashes, stats); ``TokenBatches`` streams deterministic, resumable, DDP-sliced training
batches; ``eval_windows`` cuts evaluation windows.

Mesa-optimization tasks (continuous tokens): ``generate_lds(LDSConfig(kind=...))`` (linear, partial,
nonlinear, contracting, fixed-W dynamical systems) with the token constructions, and ``generate_fewshot``
few-shot regression prompts with their least-squares controls.
"""

from .batches import TokenBatches, eval_windows
from .config import EOD_TOKEN, MIN_VOCAB_SIZE, PAD_TOKEN, DataConfig, DataError
from .dynamics import (
    LDS_KINDS,
    LDSBatch,
    LDSConfig,
    constructed_tokens,
    constructed_tokens_4slot,
    generate_lds,
    kshift_tokens,
    lds_preset,
    random_orthogonal,
    unconstructed_tokens,
)
from .fewshot import (
    LSQ_MODES,
    FewShotBatch,
    FewShotConfig,
    fewshot_lsq_loss,
    fewshot_lsq_predictions,
    generate_fewshot,
)
from .prepare import PreparedData, prepare_data
from .tokenizer import load_tokenizer

__all__ = [
    "DataConfig", "DataError", "PreparedData", "prepare_data", "TokenBatches", "eval_windows", "load_tokenizer",
    "EOD_TOKEN", "PAD_TOKEN", "MIN_VOCAB_SIZE",
    "LDS_KINDS", "LDSConfig", "LDSBatch", "lds_preset", "generate_lds", "random_orthogonal", "constructed_tokens",
    "constructed_tokens_4slot", "kshift_tokens", "unconstructed_tokens",
    "FewShotConfig", "FewShotBatch", "generate_fewshot", "LSQ_MODES", "fewshot_lsq_predictions", "fewshot_lsq_loss",
]
