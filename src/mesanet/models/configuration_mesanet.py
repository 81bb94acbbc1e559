"""``MesaNetConfig``: one config for MesaNet, its baselines and hybrids (a per-layer list of mixer kinds)."""

from __future__ import annotations

import dataclasses
import math
import warnings

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from mesanet.utils.validation import is_int, is_real

from ..ops.solver_settings import INFERENCE, TRAINING, SolverSettings, as_settings

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
    "model_type",
    "transformers_version",
    "architectures",
    "auto_map",
    "dtype",
    "torch_dtype",
    "name_or_path",
    "attn_implementation",
}

#: Solver keys of configs saved before :class:`~mesanet.ops.SolverSettings`: ``old key -> (new field, setting)``.
#: They are mapped onto the new fields (with a ``DeprecationWarning``); giving both spellings is an error.
#: A config with any legacy key keeps the old defaults for the legacy settings it leaves out
#: (:data:`LEGACY_DEFAULTS`: 30 steps, no tolerance, CG decoding); the preconditioner is the new default.
LEGACY_SOLVER_KEYS = {
    "cg_max_iter_train": ("solver_training", "max_iter"),
    "cg_tol_train": ("solver_training", "tol"),
    "cg_max_iter_eval": ("solver_inference", "max_iter"),
    "cg_tol_eval": ("solver_inference", "tol"),
    "decode_solver": ("solver_inference", "decode"),
}
LEGACY_DEFAULTS = {"solver_training": dict(max_iter=30, tol=0.0), "solver_inference": dict(max_iter=30, tol=0.0, decode="cg")}

#: Integer fields that must be >= 1 (``value_head_dim`` / ``num_kv_heads`` once their ``None`` defaults are filled).
POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_heads",
    "head_dim",
    "value_head_dim",
    "num_kv_heads",
    "conv_size",
    "chunk_size",
    "attention_window",
)
#: Number fields that must be finite and strictly above a bound: ``name -> bound`` (RoPE needs a base > 1).
LOWER_BOUNDED_FIELDS = {"mlp_expansion": 0.0, "rms_norm_eps": 0.0, "rope_theta": 1.0, "hawk_expansion": 0.0}
BOOL_FIELDS = ("use_cache", "tie_word_embeddings")
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
#: Mixer kinds with rotary position embeddings, which rotate channel pairs (``head_dim`` must be even).
ROPE_KINDS = ("attention", "sliding_attention")
#: ``logit_soft_cap`` value that meant "no cap" before ``None`` did; loads as ``None`` with a ``DeprecationWarning``.
LEGACY_NO_CAP = 0


def _bad(name: str, expected: str, value) -> ValueError:
    return ValueError(f"MesaNetConfig.{name}: expected {expected}, got {value!r}")


@strict
class MesaNetConfig(PreTrainedConfig):
    """Decoder-only LM: embedding (tied, scaled by sqrt(D)) -> N x [x + Mixer(RMSNorm(x)); x + MLP(RMSNorm(x))]
    -> RMSNorm -> logits soft-capped at ``logit_soft_cap`` (``None``: no cap).

    ``mixer_types``: one mixer kind per layer (default: all ``"mesa"``), e.g. ``["hawk", "mesa"] * 7`` for
    Hawk-Mesa, ``["attention"] * 14`` for the Transformer. Mesa solver settings: ``solver_training`` and
    ``solver_inference`` (evaluation, prefill and decoding), each a plain dict of
    :class:`~mesanet.ops.SolverSettings` fields (JSON-serialisable); a partial dict replaces fields of
    :data:`~mesanet.ops.TRAINING` / :data:`~mesanet.ops.INFERENCE` and is stored complete. Configs with the
    old keys (:data:`LEGACY_SOLVER_KEYS`, e.g. ``cg_max_iter_train``) load with those mapped onto the new fields.
    Unknown keys and every invalid or inconsistent value are a ``ValueError`` naming the field, what was expected
    and what arrived (:meth:`check_values`); an old config's ``logit_soft_cap: 0`` loads as ``None``.
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
    forget_init_range: list[float] | None = None
    beta_max: float | None = None
    use_output_gate: bool | None = None
    conv_on_v: bool | None = None
    solver_training: dict | None = None
    solver_inference: dict | None = None
    chunk_size: int = 64
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
        self._solver_fields(kwargs)
        unknown = sorted(k for k in kwargs if k not in _HF_BOOKKEEPING_KEYS and not k.startswith("_"))
        if unknown:
            valid = sorted(f.name for f in dataclasses.fields(self))
            raise ValueError(f"MesaNetConfig: unknown keys {unknown}; valid keys: {valid}")
        if self.mixer_types is None and is_int(self.num_hidden_layers):
            self.mixer_types = ["mesa"] * self.num_hidden_layers
        if isinstance(self.mixer_types, tuple):
            self.mixer_types = list(self.mixer_types)
        if self.value_head_dim is None:
            self.value_head_dim = self.head_dim
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if is_real(self.logit_soft_cap, finite=False) and self.logit_soft_cap == LEGACY_NO_CAP:
            warnings.warn(
                "MesaNetConfig.logit_soft_cap: 0 for 'no cap' is deprecated; mapped to None (write None)",
                DeprecationWarning,
                stacklevel=4,
            )
            self.logit_soft_cap = None
        self.check_values()  # here, so that a bad value is a plain ValueError (strict's validators wrap theirs)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation (at construction and before saving): :meth:`check_values`."""
        self.check_values()

    def check_values(self) -> None:
        """Every field's type and range, and the sizes' consistency: a ``ValueError`` naming the field, what was
        expected and what arrived (the solver fields are checked by :meth:`_solver_fields`)."""
        for name in POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if not (is_int(value) and value >= 1):
                raise _bad(name, "an integer >= 1", value)
        for name, bound in LOWER_BOUNDED_FIELDS.items():
            value = getattr(self, name)
            if not (is_real(value, finite=False) and math.isfinite(value) and value > bound):
                raise _bad(name, f"a finite number > {bound:g}", value)
        for name in BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, "true or false", getattr(self, name))
        if not (is_real(self.gamma_cap, finite=False) and 0 < self.gamma_cap <= 1):
            raise _bad("gamma_cap", "a number in (0, 1]", self.gamma_cap)
        self._check_mixer_options()
        cap = self.logit_soft_cap
        if cap is not None and not (is_real(cap, finite=False) and math.isfinite(cap) and cap > 0):
            raise _bad("logit_soft_cap", "None (no cap) or a finite number > 0", cap)
        if round(self.mlp_expansion * self.hidden_size) < 1:
            raise _bad(
                "mlp_expansion",
                f"at least one MLP unit (round(mlp_expansion x hidden_size {self.hidden_size}) >= 1)",
                self.mlp_expansion,
            )
        if round(self.hawk_expansion * self.head_dim) < 1:
            raise _bad(
                "hawk_expansion",
                f"at least one Hawk channel per head (round(hawk_expansion x head_dim {self.head_dim}) >= 1)",
                self.hawk_expansion,
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"MesaNetConfig.num_kv_heads: expected a divisor of num_heads ({self.num_heads}), got {self.num_kv_heads}"
            )
        self._check_mixers()
        self._check_token_ids()

    def _check_mixer_options(self) -> None:
        """The recurrent mixers' gate / projection options (``None``: each mixer's own default)."""
        rng = self.forget_init_range
        if isinstance(rng, tuple):
            self.forget_init_range = rng = list(rng)
        if rng is not None and not (
            isinstance(rng, list) and len(rng) == 2 and all(is_real(r, finite=False) for r in rng) and 0 < rng[0] <= rng[1] < 1
        ):
            raise _bad("forget_init_range", "None or [lo, hi] with 0 < lo <= hi < 1", rng)
        if self.beta_max is not None and not (is_real(self.beta_max, finite=False) and 0 < self.beta_max <= 2):
            raise _bad("beta_max", "None or a number in (0, 2]", self.beta_max)
        for name in ("use_output_gate", "conv_on_v"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise _bad(name, "None (the mixer's default), true or false", getattr(self, name))

    def _check_mixers(self) -> None:
        kinds = self.mixer_types
        if not (isinstance(kinds, list) and all(isinstance(k, str) for k in kinds)):
            raise _bad("mixer_types", "a list of mixer kinds, one per layer", kinds)
        bad = sorted(set(kinds) - set(MIXER_KINDS))
        if bad:
            raise ValueError(f"MesaNetConfig: unknown mixer types {bad}; valid: {sorted(MIXER_KINDS)}")
        if len(kinds) != self.num_hidden_layers:
            raise ValueError(
                f"MesaNetConfig: expected {self.num_hidden_layers} mixer_types (num_hidden_layers), got {len(kinds)}"
            )
        if self.head_dim % 2 and any(k in ROPE_KINDS for k in kinds):
            raise _bad(
                "head_dim", f"an even number (RoPE rotates channel pairs in the {'/'.join(ROPE_KINDS)} layers)", self.head_dim
            )

    def _check_token_ids(self) -> None:
        for name in TOKEN_ID_FIELDS:
            value = getattr(self, name)
            ids = value if isinstance(value, list) and name == "eos_token_id" else [value]
            if value is not None and not all(is_int(i) and 0 <= i < self.vocab_size for i in ids):
                raise _bad(name, f"None or a token id in [0, vocab_size) = [0, {self.vocab_size - 1}]", value)

    def _solver_fields(self, kwargs: dict) -> None:
        """Map legacy solver keys out of ``kwargs``, then store both solver fields as complete, validated dicts."""
        legacy = {k: kwargs.pop(k) for k in list(kwargs) if k in LEGACY_SOLVER_KEYS}
        for name, default in (("solver_training", TRAINING), ("solver_inference", INFERENCE)):
            value = getattr(self, name)
            if not isinstance(value, (dict, SolverSettings, type(None))):
                raise ValueError(f"MesaNetConfig.{name}: expected a dict of solver settings or None, got {type(value).__name__}")
            old = sorted(k for k in legacy if LEGACY_SOLVER_KEYS[k][0] == name)
            if old and value is not None:
                raise ValueError(f"MesaNetConfig.{name}: given together with the legacy keys {old}; use {name} only")
            if legacy and value is None:  # an old-style config: the old defaults, then the legacy values
                value = {**LEGACY_DEFAULTS[name], **{LEGACY_SOLVER_KEYS[k][1]: legacy[k] for k in old}}
            setattr(self, name, as_settings(value, default, f"MesaNetConfig.{name}").to_dict())
        if legacy:
            mapped = ", ".join(f"{k} -> {'.'.join(LEGACY_SOLVER_KEYS[k])}" for k in sorted(legacy))
            warnings.warn(
                f"MesaNetConfig: legacy solver keys mapped onto the new fields ({mapped})", DeprecationWarning, stacklevel=4
            )

    @property
    def layer_types(self) -> list[str]:
        """Hugging Face's classification of every layer (linear / full / sliding attention)."""
        return [MIXER_KINDS[kind] for kind in self.mixer_types]


__all__ = ["LEGACY_DEFAULTS", "LEGACY_SOLVER_KEYS", "MesaNetConfig", "MIXER_KINDS"]
