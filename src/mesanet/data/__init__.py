"""Training data: corpora (stdlib / local text / Hugging Face datasets), byte-level BPE, cached token streams.

``prepare_data(DataConfig(...))`` -> ``PreparedData`` (tokenizer, memory-mapped train/val token
arrays, hashes, stats); ``TokenBatches`` streams deterministic, resumable, DDP-sliced training
batches; ``eval_windows`` cuts evaluation windows.
"""

from .batches import TokenBatches, eval_windows
from .config import EOD_TOKEN, MIN_VOCAB_SIZE, PAD_TOKEN, DataConfig, DataError
from .prepare import PreparedData, prepare_data
from .tokenizer import load_tokenizer

__all__ = [
    "DataConfig",
    "DataError",
    "PreparedData",
    "prepare_data",
    "TokenBatches",
    "eval_windows",
    "load_tokenizer",
    "EOD_TOKEN",
    "PAD_TOKEN",
    "MIN_VOCAB_SIZE",
]
