"""Pure functions and autograd Functions on tensors: the Mesa operator and its references.

Layout ``[B, T, H, D]``; states ``[B, H, Dk, Dk]`` and ``[B, H, Dk, Dv]``; decay as ``g = log gamma``.
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
