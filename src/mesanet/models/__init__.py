"""Language models: ``MesaNetConfig`` / ``MesaNetForCausalLM``, known to the Hugging Face Auto classes once
``mesanet`` is imported (:mod:`.auto_registration`). The names below are imported on first use, so that
``import mesanet`` stays cheap (README, "Import time")."""

from __future__ import annotations

import importlib

#: public name -> submodule that defines it
_LAZY = {
    "MesaNetCache": "cache",
    "MIXER_KINDS": "configuration_mesanet",
    "MesaNetConfig": "configuration_mesanet",
    "MesaNetForCausalLM": "modeling_mesanet",
    "MesaNetModel": "modeling_mesanet",
    "MesaNetPreTrainedModel": "modeling_mesanet",
    "PRESETS": "presets",
    "preset_config": "presets",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "MIXER_KINDS",
    "MesaNetCache",
    "MesaNetConfig",
    "MesaNetForCausalLM",
    "MesaNetModel",
    "MesaNetPreTrainedModel",
    "PRESETS",
    "preset_config",
]
