"""Analysis tools: hand-built reference algorithms and weight compressions for mesa-optimization studies."""

from .compressed import (
    BlockScalarCompression,
    chebyshev_solve,
    compress_block_scalar,
    compress_head,
    compressed_alg_prediction,
    reconstruct_block_scalar,
    ridge_loss,
    ridge_prediction,
)
from .one_step_gd import GDConstruction, linear_self_attention, one_step_gd_prediction, optimal_eta
from .ridge_construction import ridge_equivalent_lambda, set_ridge_construction
from .seq_training import SeqTrainConfig, lds_batch_fn, next_token_mse, per_position_loss, train_sequence_model
from .zoo import ZOO, load_or_train

__all__ = [
    "GDConstruction",
    "linear_self_attention",
    "one_step_gd_prediction",
    "optimal_eta",
    "BlockScalarCompression",
    "compress_block_scalar",
    "reconstruct_block_scalar",
    "compress_head",
    "chebyshev_solve",
    "ridge_prediction",
    "ridge_loss",
    "set_ridge_construction",
    "ridge_equivalent_lambda",
    "compressed_alg_prediction",
    "SeqTrainConfig",
    "lds_batch_fn",
    "next_token_mse",
    "per_position_loss",
    "train_sequence_model",
    "ZOO",
    "load_or_train",
]
