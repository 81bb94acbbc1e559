"""Proposition 2 / CompressedAlg-k with learned step sizes; block-scalar compression and interpolation of
trained linear-attention models ("Uncovering mesa-optimization algorithms in Transformers").

(1) CompressedAlg-k (eq. 9): ``k`` steps of a second-order Richardson iteration from ``x_0 = x_{-1} = 0``
    towards ``X_t^{-1} s_t`` with ``X_t = S_{t-1} S_{t-1}^T + I/lam`` (all positions in parallel), then one GD
    step of size ``eta`` from zero on the preconditioned loss (the iteration, Chebyshev's coefficients and the
    fixed baselines: :mod:`~mesanet.mesaopt.analysis.compressed`). :class:`LearnedCompressedAlg` learns scalar
    ``alpha_j > 0``, ``beta_j``, ``lam > 0`` and ``eta`` with Adam on the LDS next-token loss; it starts at
    Chebyshev's coefficients for one global spectrum bound, and is compared with Chebyshev on the exact
    per-position bounds (an oracle no scalar weight can implement).
(2) Block-scalar compression of every head's ``W_k^T W_q`` and ``P W_v`` of a trained linear model (each
    ``n x n`` block -> mean diagonal value ``x I``; the orthogonal projection onto block-scalar matrices). The
    tokens here are ``[0, s_t, s_{t-1}]``: 3 x 3 = 9 scalars per product (18 per head) instead of the paper's
    4-slot 4 x 4 = 16. The compressed model runs the same layers with overridden products.
(3) Interpolation: per-head products ``(1 - w) * trained + w * compressed``; the paper averages products
    (``w = 1/2``) while retraining; here the trained endpoint is fixed (post-hoc).

Modules: ``learned`` (LearnedCompressedAlg, its training), ``products`` (read / compress / interpolate / run
with weight products), ``config`` (CompressedAlgConfig), ``experiment`` (the measurements), ``results`` (typed
results, checks), ``report`` (CSVs, figures, summary.md), ``run`` (``run_compressed_alg``, CLI ``main``).
``mesanet mesaopt compressed-alg [--quick] [--out DIR]`` writes CSVs, ``summary.md`` and PNG figures.
"""

from ..compressed import block_scalar_energy, chebyshev_coefficients, compressed_alg_k, prefix_gram_cross, second_order_richardson
from .config import CompressedAlgConfig
from .learned import LearnedCompressedAlg, states_of_tokens, train_learned_compressed_alg
from .products import Products, compress_products, interpolate_products, model_products, run_with_products
from .results import (
    Check,
    CompressedAlgResult,
    HeadCompression,
    HeatmapPanel,
    InterpolationPoint,
    LearnedK,
    ModelCompression,
)
from .run import main, run_compressed_alg

__all__ = [
    "prefix_gram_cross",
    "second_order_richardson",
    "chebyshev_coefficients",
    "compressed_alg_k",
    "block_scalar_energy",
    "LearnedCompressedAlg",
    "states_of_tokens",
    "train_learned_compressed_alg",
    "Products",
    "model_products",
    "compress_products",
    "interpolate_products",
    "run_with_products",
    "CompressedAlgConfig",
    "CompressedAlgResult",
    "LearnedK",
    "ModelCompression",
    "HeadCompression",
    "InterpolationPoint",
    "HeatmapPanel",
    "Check",
    "run_compressed_alg",
    "main",
]
