"""Delta-rule mixers (design section 8): DeltaNet and the shared class of Gated DeltaNet."""

from __future__ import annotations

from ..ops.delta_rule import delta_rule, delta_rule_step
from .recurrent_mixer import RecurrentMixer


class DeltaRuleMixer(RecurrentMixer):
    """``S_t = gamma_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t``
    (state ``recurrent = (S [B, H, Dk, Dv],)``); ``k`` is L2-normalised and ``beta`` in ``[0, 1]``, so
    ``I - beta k k^T`` is non-expansive. ``use_forget_gate`` selects Gated DeltaNet vs DeltaNet."""

    num_recurrent_states = 1

    def _parallel(self, q, k, v, g, beta, initial_state, cu_seqlens, output_final_state):
        out = delta_rule(
            q, k, v, g, beta, initial_state=None if initial_state is None else initial_state[0],
            output_final_state=output_final_state, chunk_size=self.chunk_size, cu_seqlens=cu_seqlens,
            validate=self.validate_inputs,
        )
        return out.output, None if out.final_state is None else (out.final_state,)

    def _step(self, q, k, v, g, beta, state):
        o, s = delta_rule_step(q, k, v, g, beta, None if state is None else state[0], validate=self.validate_inputs)
        return o, (s,)


class DeltaNet(DeltaRuleMixer):
    """DeltaNet: ``S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T`` (no forget gate)."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, **options):
        if options.pop("use_forget_gate", False):
            raise ValueError("DeltaNet: DeltaNet has no forget gate (use GatedDeltaNet)")
        super().__init__(hidden_size, num_heads, head_dim, use_forget_gate=False, **options)
