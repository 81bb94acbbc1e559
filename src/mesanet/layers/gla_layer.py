"""Gated linear attention mixers (design section 8): GLA and the Mamba2-style variant."""

from __future__ import annotations

from ..ops.gla import gla, gla_step
from .recurrent_mixer import RecurrentMixer


class GatedLinearAttention(RecurrentMixer):
    """``S_t = gamma_t S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t`` (state ``recurrent = (S [B, H, Dk, Dv],)``).

    Same parameterisation as :class:`~mesanet.layers.mesa_layer.MesaLayer` (it is Mesa without the solve).
    ``use_input_gate=False`` gives the Mamba2-style recurrence ``S_t = gamma_t S_{t-1} + k_t v_t^T``
    (:class:`Mamba2GLA`); ``use_forget_gate=False`` gives (input-gated) linear attention.
    """

    num_recurrent_states = 1

    def _parallel(self, q, k, v, g, beta, initial_state, cu_seqlens, output_final_state):
        out = gla(
            q, k, v, g, beta, initial_state=None if initial_state is None else initial_state[0],
            output_final_state=output_final_state, chunk_size=self.chunk_size, cu_seqlens=cu_seqlens,
            validate=self.validate_inputs,
        )
        return out.output, None if out.final_state is None else (out.final_state,)

    def _step(self, q, k, v, g, beta, state):
        o, s = gla_step(q, k, v, g, beta, None if state is None else state[0], validate=self.validate_inputs)
        return o, (s,)


class Mamba2GLA(GatedLinearAttention):
    """Mamba2-style mixer in the MesaNet paper's sense ("forget-gated linearised MHA"): GLA with
    ``beta = 1`` (no input gate); the gamma cap then bounds ``gamma`` by ``gamma_cap`` itself."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, **options):
        if options.pop("use_input_gate", False):
            raise ValueError("Mamba2GLA: the Mamba2-style mixer has no input gate (use GatedLinearAttention)")
        super().__init__(hidden_size, num_heads, head_dim, use_input_gate=False, **options)
