"""The token mixers of the mesa-optimization studies: linear and softmax self-attention without RoPE or gating,
and the Mesa layer as the paper states it (``RegressionMesa``: plain, with forgetting, or Sherman-Morrison).
They share the projections of :mod:`mesanet.layers.head_projections` and the kernels of :mod:`mesanet.ops`."""

from .linear_self_attention import LinearSelfAttention
from .regression_mesa import REGRESSION_MESA_VARIANTS, RegressionMesa
from .softmax_self_attention import SoftmaxSelfAttention

__all__ = ["LinearSelfAttention", "REGRESSION_MESA_VARIANTS", "RegressionMesa", "SoftmaxSelfAttention"]
