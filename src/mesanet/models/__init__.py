"""Language models: ``MesaNetConfig`` / ``MesaNetForCausalLM``, registered with the Auto classes on import."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import MesaNetCache
from .configuration_mesanet import MIXER_KINDS, MesaNetConfig
from .modeling_mesanet import MesaNetForCausalLM, MesaNetModel, MesaNetPreTrainedModel
from .presets import PRESETS, preset_config

AutoConfig.register(MesaNetConfig.model_type, MesaNetConfig, exist_ok=True)
AutoModel.register(MesaNetConfig, MesaNetModel, exist_ok=True)
AutoModelForCausalLM.register(MesaNetConfig, MesaNetForCausalLM, exist_ok=True)

__all__ = [
    "MIXER_KINDS", "MesaNetCache", "MesaNetConfig", "MesaNetForCausalLM", "MesaNetModel", "MesaNetPreTrainedModel",
    "PRESETS", "preset_config",
]
