"""Pure functions and autograd Functions on tensors: the Mesa operator and its references.

Shape notation, used by every module of the package (docstrings and error messages refer to it):

=========  ==========================================================================================
``B``      batch (number of sequences; 1 with packed sequences, see ``cu_seqlens``)
``T``      time (tokens per sequence)
``H``      heads
``Dk``     key / query head size (``D`` when keys and values share it)
``Dv``     value head size
``C``      chunk size (tokens per chunk of the chunkwise form)
``N``      number of chunks (``ceil(T / C)``); also the number of sequences of an initial state
=========  ==========================================================================================

Inputs are laid out ``[B, T, H, D]`` (``q``, ``k`` ``[B, T, H, Dk]``; ``v`` ``[B, T, H, Dv]``); per-token gates
``[B, T, H]``. The Mesa states are ``[B, H, Dk, Dk]`` (``H_t``, the forget-weighted key Gram matrix) and
``[B, H, Dk, Dv]`` (``G_t``, keys times values); chunked tensors are ``[B, H, N, C, D]``. Decay is stored in log
space: ``g = log gamma <= 0`` per token, so products of forget gates are sums of ``g`` (``exp(cumsum(g))``).
"""

from .cg import CGOptions, CGResult, conjugate_gradient, implicit_solve
from .delta_rule import delta_rule, delta_rule_step
from .gla import gla, gla_step
from .linear_attention import linear_attention_from_products
from .mesa import mesa
from .mesa_decode import mesa_step
from .mesa_reference import mesa_reference
from .recurrent_reference import delta_rule_reference, gla_reference
from .results import MesaOutput, SolverStats
from .sherman_morrison import mesa_sherman_morrison
from .solver_settings import INFERENCE, TRAINING, SolverSettings

__all__ = [
    "CGOptions",
    "INFERENCE",
    "SolverSettings",
    "TRAINING",
    "CGResult",
    "MesaOutput",
    "SolverStats",
    "conjugate_gradient",
    "delta_rule",
    "delta_rule_reference",
    "delta_rule_step",
    "gla",
    "gla_reference",
    "gla_step",
    "implicit_solve",
    "linear_attention_from_products",
    "mesa",
    "mesa_reference",
    "mesa_sherman_morrison",
    "mesa_step",
]
