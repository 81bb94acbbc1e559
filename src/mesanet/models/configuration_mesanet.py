"""``MesaNetConfig``: one config for MesaNet, its baselines and hybrids (a per-layer list of mixer kinds)."""

from __future__ import annotations

import dataclasses

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

#: Mixer kinds a layer can be (see :mod:`mesanet.layers.registry`), and how Hugging Face classifies them.
MIXER_KINDS = {
    "mesa": "linear_attention",
    "gla": "linear_attention",
    "mamba2": "linear_attention",
    "deltanet": "linear_attention",
    "gated_deltanet": "linear_attention",
    "sherman_morrison": "linear_attention",
    "hawk": "linear_attention",
    "attention": "full_attention",
    "sliding_attention": "sliding_attention",
}

#: Keys Hugging Face itself may hand to a config besides its fields (loading, saving, Auto classes).
_HF_BOOKKEEPING_KEYS = {
    "model_type", "transformers_version", "architectures", "auto_map", "dtype", "torch_dtype", "name_or_path",
    "attn_implementation",
}


@strict
class MesaNetConfig(PreTrainedConfig):
    """Decoder-only LM: embedding (tied, scaled by sqrt(D)) -> N x [x + Mixer(RMSNorm(x)); x + MLP(RMSNorm(x))]
    -> RMSNorm -> logits soft-capped at ``logit_soft_cap`` (``None``: no cap).

    ``mixer_types``: one mixer kind per layer (default: all ``"mesa"``), e.g. ``["hawk", "mesa"] * 7`` for
    Hawk-Mesa, ``["attention"] * 14`` for the Transformer. Mesa solver settings are separate for training
    (``cg_max_iter_train``, ``cg_tol_train``) and evaluation/inference (``cg_max_iter_eval``, ``cg_tol_eval``).
    Unknown keys and inconsistent values are errors.
    """

    model_type = "mesanet"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 14
    num_heads: int = 6
    head_dim: int = 128
    value_head_dim: int | None = None
    mixer_types: list[str] | None = None
    mlp_expansion: float = 3.0
    rms_norm_eps: float = 1e-6
    logit_soft_cap: float | None = 30.0
    conv_size: int = 4
    gamma_cap: float = 0.9975
    cg_max_iter_train: int = 30
    cg_tol_train: float = 0.0
    cg_max_iter_eval: int = 30
    cg_tol_eval: float = 0.0
    chunk_size: int = 64
    decode_solver: str = "cg"
    rope_theta: float = 10000.0
    attention_window: int = 512
    num_kv_heads: int | None = None
    hawk_expansion: float = 1.25
    use_cache: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        unknown = sorted(k for k in kwargs if k not in _HF_BOOKKEEPING_KEYS and not k.startswith("_"))
        if unknown:
            valid = sorted(f.name for f in dataclasses.fields(self))
            raise ValueError(f"MesaNetConfig: unknown keys {unknown}; valid keys: {valid}")
        if self.mixer_types is None:
            self.mixer_types = ["mesa"] * self.num_hidden_layers
        self.mixer_types = list(self.mixer_types)
        bad = sorted(set(self.mixer_types) - set(MIXER_KINDS))
        if bad:
            raise ValueError(f"MesaNetConfig: unknown mixer types {bad}; valid: {sorted(MIXER_KINDS)}")
        if self.value_head_dim is None:
            self.value_head_dim = self.head_dim
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation: consistent sizes, known mixer kinds and solver settings."""
        if len(self.mixer_types) != self.num_hidden_layers:
            raise ValueError(f"MesaNetConfig: expected {self.num_hidden_layers} mixer_types (num_hidden_layers), got {len(self.mixer_types)}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "head_dim", "value_head_dim", "conv_size", "chunk_size", "attention_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"MesaNetConfig: expected {name} >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"MesaNetConfig: num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.decode_solver not in ("cg", "cholesky"):
            raise ValueError(f"MesaNetConfig: expected decode_solver 'cg' or 'cholesky', got {self.decode_solver!r}")
        if not 0 < self.gamma_cap <= 1:
            raise ValueError(f"MesaNetConfig: expected 0 < gamma_cap <= 1, got {self.gamma_cap}")
        if min(self.cg_max_iter_train, self.cg_max_iter_eval) < 0 or min(self.cg_tol_train, self.cg_tol_eval) < 0:
            raise ValueError("MesaNetConfig: CG iteration counts and tolerances must be >= 0")

    @property
    def layer_types(self) -> list[str]:
        """Hugging Face's classification of every layer (linear / full / sliding attention)."""
        return [MIXER_KINDS[kind] for kind in self.mixer_types]


__all__ = ["MesaNetConfig", "MIXER_KINDS"]
