"""Mesa-optimization tasks on continuous tokens.

``generate_lds(LDSConfig(kind=...))``: linear, partial, nonlinear, contracting and fixed-W dynamical systems with
the token constructions (``constructed_tokens`` and the like); ``generate_fewshot``: few-shot regression prompts
with their least-squares controls.
"""

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

__all__ = [
    "LDS_KINDS",
    "LDSConfig",
    "LDSBatch",
    "lds_preset",
    "generate_lds",
    "random_orthogonal",
    "constructed_tokens",
    "constructed_tokens_4slot",
    "kshift_tokens",
    "unconstructed_tokens",
    "FewShotConfig",
    "FewShotBatch",
    "generate_fewshot",
    "LSQ_MODES",
    "fewshot_lsq_predictions",
    "fewshot_lsq_loss",
]
