"""Recurrent mixers with one state ``S [B, H, Dk, Dv]`` whose op pair (chunk form, decode step) is all that differs."""

from __future__ import annotations

from typing import Callable, ClassVar

from .recurrent_mixer import RecurrentMixer


class SingleStateMixer(RecurrentMixer):
    """``recurrent = (S,)``; subclasses set ``parallel_op`` (e.g. :func:`mesanet.ops.gla`) and ``step_op``
    (e.g. :func:`mesanet.ops.gla_step`), both with the ``(q, k, v, g, beta, ...)`` signature of the ops."""

    num_recurrent_states = 1
    parallel_op: ClassVar[Callable]
    step_op: ClassVar[Callable]

    def _parallel(self, q, k, v, g, beta, initial_state, cu_seqlens, output_final_state):
        out = self.parallel_op(
            q,
            k,
            v,
            g,
            beta,
            initial_state=None if initial_state is None else initial_state[0],
            output_final_state=output_final_state,
            chunk_size=self.chunk_size,
            cu_seqlens=cu_seqlens,
            validate=self.validate_inputs,
        )
        return out.output, None if out.final_state is None else (out.final_state,)

    def _step(self, q, k, v, g, beta, state):
        o, s = self.step_op(q, k, v, g, beta, None if state is None else state[0], validate=self.validate_inputs)
        return o, (s,)
