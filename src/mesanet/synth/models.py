"""Models of the synthetic suite: one ``MesaNetConfig`` backbone per (setting, mixer) with the setting's head.

* ``lm``: :class:`MesaNetForCausalLM` logits at every position (targets are already aligned per position).
* ``autoencoder`` (MAD compression): :class:`CompressionAutoEncoder`, the backbone's last hidden state
  decoded to every position with fixed sinusoidal position embeddings (MAD's auto-encoder head).
* ``regression``: :class:`~mesanet.synth.regression_model.MesaNetForRegression` (continuous tokens -> one output).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mesanet.layers.norms import RMSNorm
from mesanet.models import MesaNetConfig, MesaNetForCausalLM, MesaNetModel

from .config import SynthConfig, split_mixer
from .regression_model import MesaNetForRegression
from .settings import Setting


def backbone_config(cfg: SynthConfig, mixer: str, vocab_size: int) -> MesaNetConfig:
    """The paper's small MAD model shape from ``cfg`` with ``mixer`` (or a hybrid) in every layer."""
    return MesaNetConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        mixer_types=split_mixer(mixer, cfg.num_layers),
        mlp_expansion=cfg.mlp_expansion,
        chunk_size=cfg.chunk_size,
        solver_training=dict(cfg.solver_training),
        solver_inference=dict(cfg.solver_inference),
        use_cache=False,
        **dict(cfg.model_options),
    )


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """``[length, dim]`` fixed sin/cos position embedding (Transformer style)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    out = torch.zeros(length, dim)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out


class CompressionAutoEncoder(nn.Module):
    """``input_ids [B, T] -> logits [B, T, V]``: backbone, keep the last position's state, add a position
    embedding per output position, then RMSNorm-Linear-GELU twice, RMSNorm and a Linear to ``V``."""

    def __init__(self, config: MesaNetConfig, seq_len: int):
        super().__init__()
        d = config.hidden_size
        self.encoder = MesaNetModel(config)
        self.register_buffer("positions", sinusoidal_positions(seq_len, d), persistent=False)
        self.decoder = nn.Sequential(RMSNorm(d), nn.Linear(d, d), nn.GELU(), RMSNorm(d), nn.Linear(d, d), nn.GELU(), RMSNorm(d))
        self.out = nn.Linear(d, config.vocab_size)

    def forward(self, input_ids: Tensor) -> Tensor:
        if input_ids.shape[1] != self.positions.shape[0]:
            raise ValueError(
                f"CompressionAutoEncoder: expected sequences of length {self.positions.shape[0]}, got {input_ids.shape[1]}"
            )
        pooled = self.encoder(input_ids=input_ids, use_cache=False).last_hidden_state[:, -1]
        return self.out(self.decoder(pooled[:, None, :] + self.positions[None]))


def build_model(cfg: SynthConfig, setting: Setting, mixer: str) -> nn.Module:
    """Fresh model for ``setting`` with ``mixer`` (seed torch before calling for a reproducible init)."""
    if setting.head == "regression":
        return MesaNetForRegression(backbone_config(cfg, mixer, 1), in_dim=setting.in_dim, out_dim=1)
    config = backbone_config(cfg, mixer, setting.vocab_size)
    if setting.head == "autoencoder":
        return CompressionAutoEncoder(config, setting.config.seq_len)
    return MesaNetForCausalLM(config)


def predict(model: nn.Module, setting: Setting, inputs: Tensor) -> Tensor:
    """Token tasks: logits ``[B, T, V]``; regression: predictions ``[B, T]``."""
    if setting.head == "regression":
        return model(inputs)[..., 0]
    if setting.head == "autoencoder":
        return model(inputs)
    return model(input_ids=inputs, use_cache=False).logits


def loss_on(model: nn.Module, setting: Setting, batch) -> Tensor:
    """Training loss of one batch: cross-entropy on non-ignored targets, or MSE at the x-token positions."""
    if setting.kind == "regression":
        tokens, targets, mask = batch
        pred = predict(model, setting, tokens)
        return ((pred - targets) ** 2)[mask].mean()
    inputs, targets = batch
    logits = predict(model, setting, inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


__all__ = ["CompressionAutoEncoder", "backbone_config", "build_model", "loss_on", "predict", "sinusoidal_positions"]
