"""Gated DeltaNet (``docs/design.md``, "Baseline recurrences")."""

from __future__ import annotations

from .delta_net import DeltaRuleMixer


class GatedDeltaNet(DeltaRuleMixer):
    """Gated DeltaNet: ``S_t = gamma_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T`` (forget gate
    with the gamma cap, as every mixer of this package)."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, **options):
        if not options.pop("use_forget_gate", True):
            raise ValueError("GatedDeltaNet: the forget gate is what makes it gated (use DeltaNet)")
        super().__init__(hidden_size, num_heads, head_dim, use_forget_gate=True, **options)
