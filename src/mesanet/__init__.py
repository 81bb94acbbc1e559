"""mesanet: the Mesa layer and MesaNet in PyTorch."""

from . import layers, models, ops
from .ops import mesa, mesa_step

__version__ = "0.1.0"
__all__ = ["layers", "models", "ops", "mesa", "mesa_step", "__version__"]
