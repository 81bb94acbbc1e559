"""Gated linear attention mixers (``docs/design.md``, "Baseline recurrences"): GLA and the Mamba2-style variant."""

from __future__ import annotations

from ..ops.gla import gla, gla_step
from .single_state_mixer import SingleStateMixer


class GatedLinearAttention(SingleStateMixer):
    """``S_t = gamma_t S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t`` (state ``recurrent = (S [B, H, Dk, Dv],)``).

    Same parameterisation as :class:`~mesanet.layers.mesa_layer.MesaLayer` (it is Mesa without the solve).
    ``use_input_gate=False`` gives the Mamba2-style recurrence ``S_t = gamma_t S_{t-1} + k_t v_t^T``
    (:class:`Mamba2GLA`); ``use_forget_gate=False`` gives (input-gated) linear attention.
    """

    parallel_op = staticmethod(gla)
    step_op = staticmethod(gla_step)


class Mamba2GLA(GatedLinearAttention):
    """Mamba2-style mixer in the MesaNet paper's sense ("forget-gated linearised MHA"): GLA with
    ``beta = 1`` (no input gate); the gamma cap then bounds ``gamma`` by ``gamma_cap`` itself."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, **options):
        if options.pop("use_input_gate", False):
            raise ValueError("Mamba2GLA: the Mamba2-style mixer has no input gate (use GatedLinearAttention)")
        super().__init__(hidden_size, num_heads, head_dim, use_input_gate=False, **options)
