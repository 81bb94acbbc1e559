"""Continuous-token sequence models of "Uncovering mesa-optimization algorithms in Transformers" (paper B).

A :class:`SequenceModel` maps tokens ``[B, T, input_dim]`` to next-token predictions ``[B, T, output_dim]``
(the prediction at position ``t`` is for ``s_{t+1}``) through a stack of blocks, one mixer kind per layer:

* ``"linear"``: :class:`~mesanet.mesaopt.layers.LinearSelfAttention` (causal, unnormalised);
* ``"softmax"``: :class:`~mesanet.mesaopt.layers.SoftmaxSelfAttention` (causal MHA, no RoPE);
* ``"mesa"`` / ``"mesa_forget"`` / ``"sherman_morrison"``: :class:`~mesanet.mesaopt.layers.RegressionMesa`.

Block (GPT-2 style when ``layer_norm`` / ``mlp`` are on)::

    e <- e + mixer(LN(e));   e <- e + W2 GELU(W1 LN(e))   (MLP 4x wide, only with mlp=True)
    e <- clip(e, -c, c)                                    (only with activation_clip=c)

``embed_dim=None``: no embeddings, the residual stream is the token itself and the prediction is its first
``output_dim`` dimensions (constructed-token models, ``[0, s_t, s_{t-1}]`` -> first block). ``embed_dim=E``:
``Linear(input_dim -> E)`` plus an optional sinusoidal positional encoding, then (with ``layer_norm``) a final
LayerNorm and ``Linear(E -> output_dim)``. All weight matrices are ``N(0, init_std^2)``; no biases anywhere
(paper: biases fixed at zero) except the LayerNorms and the forget-gate bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mesanet.utils.validation import check_int

from .layers.linear_self_attention import LinearSelfAttention
from .layers.regression_mesa import RegressionMesa
from .layers.softmax_self_attention import SoftmaxSelfAttention

__all__ = ["LAYER_KINDS", "POSITIONAL_KINDS", "SeqModelConfig", "SequenceModel", "SeqBlock", "sinusoidal_encoding"]

LAYER_KINDS = ("linear", "softmax", "mesa", "mesa_forget", "sherman_morrison")
POSITIONAL_KINDS = ("none", "sinusoidal")


@dataclass
class SeqModelConfig:
    """See the module docstring; every field is validated in ``__post_init__`` (``ValueError``)."""

    layers: list[str] = field(default_factory=lambda: ["linear"])
    input_dim: int = 30
    output_dim: int = 10
    embed_dim: int | None = None
    num_heads: int = 4
    key_size: int = 20
    mlp: bool = False
    layer_norm: bool = False
    positional: str = "none"
    max_len: int = 256
    activation_clip: float | None = None
    init_std: float = 0.05
    lam_init: float = 1.0
    qk_norm: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.layers, tuple):
            self.layers = list(self.layers)
        if not isinstance(self.layers, list) or not self.layers:
            raise ValueError(f"SeqModelConfig.layers: expected a non-empty list of layer kinds, got {self.layers!r}")
        bad = [k for k in self.layers if k not in LAYER_KINDS]
        if bad:
            raise ValueError(f"SeqModelConfig.layers: expected kinds from {LAYER_KINDS}, got {bad}")
        for name in ("input_dim", "output_dim", "num_heads", "key_size", "max_len"):
            check_int(f"SeqModelConfig.{name}", getattr(self, name), minimum=1)
        if self.embed_dim is not None:
            check_int("SeqModelConfig.embed_dim", self.embed_dim, minimum=1)
        width = self.input_dim if self.embed_dim is None else self.embed_dim
        if self.embed_dim is None and self.output_dim > self.input_dim:
            raise ValueError(
                f"SeqModelConfig.output_dim: without embeddings the prediction is the first output_dim dims of the "
                f"token, so expected output_dim <= input_dim = {self.input_dim}, got {self.output_dim}"
            )
        if self.positional not in POSITIONAL_KINDS:
            raise ValueError(f"SeqModelConfig.positional: expected one of {POSITIONAL_KINDS}, got {self.positional!r}")
        if self.positional != "none" and self.embed_dim is None:
            raise ValueError("SeqModelConfig.positional: a positional encoding needs embed_dim (got embed_dim=None)")
        if self.positional == "sinusoidal" and width % 2:
            raise ValueError(f"SeqModelConfig.embed_dim: sinusoidal encoding expects an even width, got {width}")
        if self.activation_clip is not None and not (math.isfinite(self.activation_clip) and self.activation_clip > 0):
            raise ValueError(f"SeqModelConfig.activation_clip: expected None or a finite float > 0, got {self.activation_clip!r}")
        if not (math.isfinite(self.init_std) and self.init_std > 0):
            raise ValueError(f"SeqModelConfig.init_std: expected a finite float > 0, got {self.init_std!r}")
        if not (math.isfinite(self.lam_init) and self.lam_init > 0):
            raise ValueError(f"SeqModelConfig.lam_init: expected a finite float > 0, got {self.lam_init!r}")
        for name in ("mlp", "layer_norm", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SeqModelConfig.{name}: expected a bool, got {getattr(self, name)!r}")

    @property
    def width(self) -> int:
        """Width ``E`` of the residual stream."""
        return self.input_dim if self.embed_dim is None else self.embed_dim


def sinusoidal_encoding(length: int, dim: int) -> Tensor:
    """``[length, dim]`` Transformer sinusoids: ``sin(p / 10000^(2i/d))`` at even, ``cos`` at odd channels."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    pe = torch.zeros(length, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe.float()


def _build_mixer(kind: str, cfg: SeqModelConfig) -> nn.Module:
    e = cfg.width
    if kind == "linear":
        return LinearSelfAttention(e, cfg.num_heads, cfg.key_size, init_std=cfg.init_std)
    if kind == "softmax":
        return SoftmaxSelfAttention(e, cfg.num_heads, cfg.key_size, init_std=cfg.init_std)
    return RegressionMesa(
        e, cfg.num_heads, cfg.key_size, variant=kind, qk_norm=cfg.qk_norm, lam_init=cfg.lam_init, init_std=cfg.init_std
    )


class SeqBlock(nn.Module):
    """``e += mixer(LN(e))``; optionally ``e += W2 GELU(W1 LN(e))``; optionally clip. ``[B, T, E] -> [B, T, E]``."""

    def __init__(self, kind: str, cfg: SeqModelConfig) -> None:
        super().__init__()
        e = cfg.width
        self.kind = kind
        self.mixer = _build_mixer(kind, cfg)
        self.norm1 = nn.LayerNorm(e) if cfg.layer_norm else nn.Identity()
        if cfg.mlp:
            self.norm2 = nn.LayerNorm(e) if cfg.layer_norm else nn.Identity()
            self.fc1 = nn.Linear(e, 4 * e, bias=False)
            self.fc2 = nn.Linear(4 * e, e, bias=False)
            for lin in (self.fc1, self.fc2):
                nn.init.normal_(lin.weight, mean=0.0, std=cfg.init_std)
        else:
            self.norm2 = self.fc1 = self.fc2 = None
        self.clip = cfg.activation_clip

    def forward(self, e: Tensor) -> Tensor:
        e = e + self.mixer(self.norm1(e))
        if self.fc1 is not None:
            e = e + self.fc2(F.gelu(self.fc1(self.norm2(e))))
        if self.clip is not None:
            e = e.clamp(-self.clip, self.clip)
        return e


class SequenceModel(nn.Module):
    """``SequenceModel(SeqModelConfig)``: tokens ``[B, T, input_dim]`` -> predictions ``[B, T, output_dim]``."""

    def __init__(self, config: SeqModelConfig) -> None:
        super().__init__()
        if not isinstance(config, SeqModelConfig):
            raise ValueError(f"SequenceModel: expected a SeqModelConfig, got {type(config).__name__}")
        self.config = config
        e = config.width
        if config.embed_dim is not None:
            self.embed = nn.Linear(config.input_dim, e, bias=False)
            self.readout = nn.Linear(e, config.output_dim, bias=False)
            for lin in (self.embed, self.readout):
                nn.init.normal_(lin.weight, mean=0.0, std=config.init_std)
            self.final_norm = nn.LayerNorm(e) if config.layer_norm else nn.Identity()
        else:
            self.embed = self.readout = self.final_norm = None
        if config.positional == "sinusoidal":
            self.register_buffer("pos_enc", sinusoidal_encoding(config.max_len, e), persistent=False)
        else:
            self.pos_enc = None
        self.blocks = nn.ModuleList(SeqBlock(kind, config) for kind in config.layers)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """Residual stream after the input embedding (the tokens themselves without embeddings), ``[B, T, E]``."""
        cfg = self.config
        if tokens.dim() != 3 or tokens.shape[-1] != cfg.input_dim:
            raise ValueError(f"SequenceModel: tokens expected [B, T, {cfg.input_dim}], got {tuple(tokens.shape)}")
        if tokens.shape[1] > cfg.max_len:
            raise ValueError(f"SequenceModel: expected T <= max_len = {cfg.max_len}, got T = {tokens.shape[1]}")
        if self.embed is None:
            return tokens
        e = self.embed(tokens)
        if self.pos_enc is not None:
            e = e + self.pos_enc[: tokens.shape[1]].to(e.dtype)
        return e

    def read_out(self, e: Tensor) -> Tensor:
        """Prediction from the final residual stream ``[B, T, E] -> [B, T, output_dim]``."""
        if self.readout is None:
            return e[..., : self.config.output_dim]
        return self.readout(self.final_norm(e))

    def forward(self, tokens: Tensor, *, return_hidden: bool = False):
        """``tokens [B, T, input_dim]`` -> ``pred [B, T, output_dim]``; with ``return_hidden`` also the list of
        ``num_layers + 1`` residual streams ``[B, T, E]`` (after the embedding and after every block)."""
        e = self.embed_tokens(tokens)
        hidden = [e]
        for block in self.blocks:
            e = block(e)
            hidden.append(e)
        pred = self.read_out(e)
        return (pred, hidden) if return_hidden else pred
