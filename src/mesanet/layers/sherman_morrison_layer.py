"""``ShermanMorrisonMesa``: the original (2023) Mesa layer, recursive least squares (``docs/design.md``, "The 2023 Mesa layer")."""

from __future__ import annotations

import torch

from ..ops.sherman_morrison import mesa_sherman_morrison
from .mesa_layer import LAMBDA_INIT, RidgeRegularised
from .recurrent_mixer import RecurrentMixer


class ShermanMorrisonMesa(RidgeRegularised, RecurrentMixer):
    """The 2023 Mesa layer: ``o_t = S_t^T R_t q_t`` with ``R_t = (H_t + Lambda)^{-1}`` carried directly by
    Sherman-Morrison updates (state ``recurrent = (R [B, H, Dk, Dk], S_kv [B, H, Dk, Dv])``, ``R_0 = Lambda^{-1}``).

    Same parameterisation as :class:`~mesanet.layers.mesa_layer.MesaLayer` (including ``Lambda``), but no
    forgetting by default (``use_forget_gate=False``): with forgetting the recursion divides the inverse
    by ``gamma`` and the regulariser decays (allowed as an option, for experiments only). Sequential by
    nature: the parallel path is a Python loop over tokens (and over packed sequences).
    """

    num_recurrent_states = 2

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, *, lam_init: float = LAMBDA_INIT, **options):
        options.setdefault("use_forget_gate", False)
        self.lam_init = float(lam_init)
        super().__init__(hidden_size, num_heads, head_dim, **options)

    def _make_parameters(self, factory: dict) -> None:
        self._make_lambda(factory)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self._reset_lambda()

    @staticmethod
    def _dense_gates(q, g, beta):
        shape = q.shape[:-1]
        return (q.new_zeros(shape) if g is None else g), (q.new_ones(shape) if beta is None else beta)

    def _run(self, q, k, v, g, beta, initial_state, output_final_state):
        out = mesa_sherman_morrison(
            q, k, v, g, beta, self.lam, initial_state=initial_state, output_final_state=output_final_state
        )
        return out.output, out.final_state

    def _parallel(self, q, k, v, g, beta, initial_state, cu_seqlens, output_final_state):
        g, beta = self._dense_gates(q, g, beta)
        if cu_seqlens is None:
            return self._run(q, k, v, g, beta, initial_state, output_final_state)
        offsets = cu_seqlens.tolist()  # validated by the base class; no state, B == 1, no cache here
        outputs = [self._run(*(t[:, a:b] for t in (q, k, v, g, beta)), None, False)[0] for a, b in zip(offsets, offsets[1:])]
        return torch.cat(outputs, dim=1), None

    def _step(self, q, k, v, g, beta, state):
        g, beta = self._dense_gates(q, g, beta)
        o, final = self._run(*(t.unsqueeze(1) for t in (q, k, v, g, beta)), state, True)
        return o[:, 0], final
