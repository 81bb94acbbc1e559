"""The models of the model benchmark: which mixers, their layer patterns, the matched Hawk width, the config's
solver settings, and the targets of the issue."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from benchmarks import harness as h
from mesanet.layers.registry import build_mixer
from mesanet.models import PRESETS, MesaNetCache, MesaNetForCausalLM, preset_config

#: Benchmark name -> the layer pattern (repeated over the layers).
MODELS: dict[str, tuple[str, ...]] = {
    "mesa": ("mesa",),
    "gated_deltanet": ("gated_deltanet",),
    "deltanet": ("deltanet",),
    "gla": ("gla",),
    "mamba2": ("mamba2",),
    "hawk": ("hawk",),
    "attention": ("attention",),
    "sliding_attention": ("sliding_attention",),
    "hawk+mesa": ("hawk", "mesa"),
    "sherman_morrison": ("sherman_morrison",),
}
DEFAULT_MIXERS = tuple(MODELS)

#: Mixers whose parallel form is a Python loop over tokens.
SEQUENTIAL_MIXERS = ("sherman_morrison",)
SEQUENTIAL_MAX_TRAIN_LENGTH = 512
SEQUENTIAL_STEP_LIMIT_S = 20.0
SEQUENTIAL_PROBE_LENGTH = 64

DEFAULT_TRAIN_LENGTHS = (512, 2048)
DEFAULT_CONTEXTS = (1024, 4096, 16384)
QUICK_TRAIN_LENGTHS = (256, 1024)
QUICK_CONTEXTS = (256, 1024)
DEFAULT_POLICY = h.RepeatPolicy(warmup=2, min_repeats=3, max_repeats=7, budget_s=3.0)
QUICK_POLICY = h.RepeatPolicy(warmup=1, min_repeats=2, max_repeats=3, budget_s=1.0)
DEFAULT_TRAIN_WARMUP_S = 1.5
QUICK_TRAIN_WARMUP_S = 0.3

#: Targets of the issue.
DECODE_FLAT_TARGET = 1.2  # Mesa decode(longest context) / decode(shortest)
TRAIN_RATIO_TARGET = 1.3  # Mesa training step / Gated DeltaNet's at TRAIN_RATIO_LENGTH
TRAIN_RATIO_LENGTH = 2048
DECODE_RATIO_TARGET = 1.5  # Mesa decode per token / Gated DeltaNet's (longest common context)


def layer_types(pattern: Sequence[str], num_layers: int) -> list[str]:
    """``pattern`` repeated over ``num_layers`` layers (``("hawk", "mesa")`` -> hawk, mesa, hawk, mesa)."""
    return [pattern[i % len(pattern)] for i in range(num_layers)]


def _mixer_params(kind: str, fields: dict[str, Any], **options) -> int:
    mixer = build_mixer(kind, fields["hidden_size"], fields["num_heads"], fields["head_dim"], **options)
    return sum(p.numel() for p in mixer.parameters())


def matched_hawk_expansion(preset: str, overrides: Optional[dict[str, Any]] = None) -> float:
    """``hawk_expansion`` (a whole number of channels per head) whose Hawk mixer has the parameter count
    closest to the Mesa mixer of the same preset (ties: the smaller width)."""
    fields = {**PRESETS[preset], **(overrides or {})}
    config = preset_config(preset, mixer="mesa", **(overrides or {}))
    target = _mixer_params("mesa", fields, value_head_dim=config.value_head_dim, conv_size=config.conv_size)
    head_dim = fields["head_dim"]
    best = min(
        range(1, 4 * head_dim + 1),
        key=lambda w: (abs(_mixer_params("hawk", fields, expansion=w / head_dim, conv_size=config.conv_size) - target), w),
    )
    return best / head_dim


def solver_fields(config) -> dict[str, Any]:
    """The Mesa solver settings of a config, whatever they are called (``solver_*`` dicts or ``cg_*`` keys)."""
    return {k: v for k, v in config.to_dict().items() if k.startswith(("solver", "cg_")) or k == "decode_solver"}


def build_model(spec: dict[str, Any]) -> MesaNetForCausalLM:
    torch.manual_seed(spec["seed"])
    config = preset_config(spec["preset"], mixer=spec["layer_types"], **spec["config_overrides"])
    return MesaNetForCausalLM(config).to(device=spec["device"], dtype=torch.float32)


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor reachable from a cache state (dataclasses, dicts, lists, tuples)."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    if dataclasses.is_dataclass(obj):
        return sum(_tensor_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


def copy_cache(cache: MesaNetCache) -> MesaNetCache:
    """A cache that decoding can advance without touching ``cache`` (layer states are replaced, never mutated)."""
    new = copy.copy(cache)
    new.states = list(cache.states)
    return new
