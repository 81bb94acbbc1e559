"""``nn.Module`` token mixers and building blocks; see :mod:`mesanet.layers.base` for their contract."""

from .base import KVState, RecurrentState
from .mlp import GatedMLP
from .norms import RMSNorm
from .short_conv import ShortConvolution

__all__ = ["GatedMLP", "KVState", "RMSNorm", "RecurrentState", "ShortConvolution"]
