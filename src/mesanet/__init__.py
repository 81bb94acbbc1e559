"""mesanet: the Mesa layer and MesaNet in PyTorch.

``import mesanet`` is cheap: the subpackages and ``mesa`` / ``mesa_step`` are imported on first use, and
``model_type: mesanet`` is registered with the Hugging Face Auto classes as soon as ``transformers`` loads them
(:mod:`mesanet.models.auto_registration`)."""

from __future__ import annotations

import importlib

from .models.auto_registration import register_when_transformers_loads

__version__ = "0.1.0"
__all__ = ["layers", "models", "ops", "mesa", "mesa_step", "__version__"]

_SUBPACKAGES = ("layers", "models", "ops")
_FROM_OPS = ("mesa", "mesa_step")

register_when_transformers_loads()


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _FROM_OPS:
        return getattr(importlib.import_module(f"{__name__}.ops"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
