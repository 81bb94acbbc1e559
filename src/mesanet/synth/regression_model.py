"""``MesaNetForRegression``: the MesaNet backbone on continuous tokens (in-context regression and the like).

``Linear(in_dim -> hidden)`` -> :class:`MesaNetModel` (``inputs_embeds``; its token embedding is unused, so the
config's ``vocab_size`` may be 1) -> ``Linear(hidden -> out_dim)``. Inputs ``[B, T, in_dim]`` -> ``[B, T, out_dim]``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from mesanet.models.configuration_mesanet import MesaNetConfig
from mesanet.models.modeling_mesanet import MesaNetModel
from mesanet.utils.validation import is_int


class MesaNetForRegression(nn.Module):
    """Continuous-token model: ``forward(inputs [B, T, in_dim], attention_mask=None) -> [B, T, out_dim]``.

    The input projection is initialised so that, after the backbone's ``sqrt(D)`` scaling, unit-variance
    inputs give a unit-variance residual stream (the same scale as the token embedding); the output head is
    fan-in normal with a zero bias.
    """

    def __init__(self, config: MesaNetConfig, in_dim: int, out_dim: int = 1):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim)):
            if not is_int(value, 1):
                raise ValueError(f"MesaNetForRegression: expected {name} an int >= 1, got {value!r}")
        if not isinstance(config, MesaNetConfig):
            raise ValueError(f"MesaNetForRegression: expected a MesaNetConfig, got {type(config).__name__}")
        self.config = config
        self.in_dim, self.out_dim = in_dim, out_dim
        self.in_proj = nn.Linear(in_dim, config.hidden_size)
        self.model = MesaNetModel(config)
        self.model.embed_tokens.weight.requires_grad_(False)  # unused: inputs come as embeddings
        self.head = nn.Linear(config.hidden_size, out_dim)
        with torch.no_grad():
            nn.init.normal_(self.in_proj.weight, std=1.0 / math.sqrt(in_dim * config.hidden_size))
            nn.init.zeros_(self.in_proj.bias)
            nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(config.hidden_size))
            nn.init.zeros_(self.head.bias)

    def forward(self, inputs: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        if inputs.dim() != 3 or inputs.shape[-1] != self.in_dim:
            raise ValueError(f"MesaNetForRegression: expected inputs of shape [B, T, {self.in_dim}], got {list(inputs.shape)}")
        hidden = self.model(inputs_embeds=self.in_proj(inputs), attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.head(hidden)


__all__ = ["MesaNetForRegression"]
