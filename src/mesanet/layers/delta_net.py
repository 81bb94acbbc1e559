"""Delta-rule mixers (``docs/design.md``, "Baseline recurrences"): DeltaNet and the shared class of Gated DeltaNet."""

from __future__ import annotations

from ..ops.delta_rule import delta_rule, delta_rule_step
from .single_state_mixer import SingleStateMixer


class DeltaRuleMixer(SingleStateMixer):
    """``S_t = gamma_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t``
    (state ``recurrent = (S [B, H, Dk, Dv],)``); ``k`` is L2-normalised and ``beta`` in ``[0, 1]``, so
    ``I - beta k k^T`` is non-expansive. ``use_forget_gate`` selects Gated DeltaNet vs DeltaNet."""

    parallel_op = staticmethod(delta_rule)
    step_op = staticmethod(delta_rule_step)


class DeltaNet(DeltaRuleMixer):
    """DeltaNet: ``S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T`` (no forget gate)."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, **options):
        if options.pop("use_forget_gate", False):
            raise ValueError("DeltaNet: DeltaNet has no forget gate (use GatedDeltaNet)")
        super().__init__(hidden_size, num_heads, head_dim, use_forget_gate=False, **options)
