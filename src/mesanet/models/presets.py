"""Named model shapes: the paper's three sizes (MesaNet App. G.4, key size 128, heads x 128 = D) and
small CPU-sized ones for tests and the default job."""

from __future__ import annotations

from .configuration_mesanet import MesaNetConfig

#: name -> MesaNetConfig fields (any mixer_types may be combined with them)
PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_heads=2, head_dim=32, chunk_size=32),
    "cpu-small": dict(vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_heads=4, head_dim=64),
    "145m": dict(vocab_size=50257, hidden_size=768, num_hidden_layers=14, num_heads=6, head_dim=128),
    "400m": dict(vocab_size=50257, hidden_size=1024, num_hidden_layers=28, num_heads=8, head_dim=128),
    "1b": dict(vocab_size=50257, hidden_size=1536, num_hidden_layers=28, num_heads=12, head_dim=128),
}


def preset_config(name: str, mixer: str | list[str] = "mesa", **overrides) -> MesaNetConfig:
    """``MesaNetConfig`` of preset ``name``; ``mixer`` one kind for every layer or a per-layer list."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {sorted(PRESETS)}")
    fields = {**PRESETS[name], **overrides}
    layers = fields["num_hidden_layers"]
    fields["mixer_types"] = [mixer] * layers if isinstance(mixer, str) else list(mixer)
    return MesaNetConfig(**fields)
