"""``MesaLayer``: the MesaNet token mixer (``docs/design.md``, "Decoding" and "The layer (MesaNet)") around :func:`mesanet.ops.mesa`."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.mesa import mesa
from ..ops.mesa_decode import mesa_step
from ..ops.results import SolverStats
from ..ops.solver_settings import INFERENCE, TRAINING, SolverSettings, as_settings
from .recurrent_mixer import RecurrentMixer, mark_no_weight_decay
from .solver_stats import active_collectors

#: ``lam = LAMBDA_LOWER_BOUND + softplus(lam_raw)``: the paper's lower bound (App. G.5), which keeps
#: ``cond(H_t + Lambda)`` bounded for heads that forget.
LAMBDA_LOWER_BOUND = 0.25

#: Initial ridge regulariser: ``Lambda = I`` (paper and fla).
LAMBDA_INIT = 1.0


def lambda_raw_init(lam_init: float = LAMBDA_INIT) -> float:
    """``lam_raw`` such that ``LAMBDA_LOWER_BOUND + softplus(lam_raw) = lam_init``: ``log(expm1(lam_init - 0.25))``."""
    if not lam_init > LAMBDA_LOWER_BOUND:
        raise ValueError(f"expected lam_init > {LAMBDA_LOWER_BOUND} (the lower bound), got {lam_init!r}")
    return math.log(math.expm1(lam_init - LAMBDA_LOWER_BOUND))


def lambda_from_raw(lam_raw: Tensor) -> Tensor:
    """``LAMBDA_LOWER_BOUND + softplus(lam_raw)`` in at least float32; ``>= LAMBDA_LOWER_BOUND`` always."""
    raw = lam_raw.to(torch.promote_types(lam_raw.dtype, torch.float32))
    return LAMBDA_LOWER_BOUND + F.softplus(raw)


class RidgeRegularised:
    """Mixin: the learned diagonal regulariser ``lam [H, Dk]``, one value per head per key channel
    (fla's choice; the paper leaves per-head vs per-channel open), excluded from weight decay."""

    lam_init: float = LAMBDA_INIT

    def _make_lambda(self, factory: dict) -> None:
        self.lam_raw = mark_no_weight_decay(nn.Parameter(torch.empty(self.num_heads, self.head_dim, **factory)))

    @torch.no_grad()
    def _reset_lambda(self) -> None:
        nn.init.constant_(self.lam_raw, lambda_raw_init(self.lam_init))

    @property
    def lam(self) -> Tensor:
        """``Lambda`` diagonal ``[H, Dk]`` (float32, or float64 for a float64 module)."""
        return lambda_from_raw(self.lam_raw)


class MesaLayer(RidgeRegularised, RecurrentMixer):
    """MesaNet layer: ``o_t = S_t^T (H_t + Lambda)^{-1} q_t`` with ``H_t = gamma_t H_{t-1} + beta_t k_t k_t^T``,
    ``S_t = gamma_t S_{t-1} + beta_t k_t v_t^T`` (states ``recurrent = (H_kk [B, H, Dk, Dk], S_kv [B, H, Dk, Dv])``).

    Args (besides :class:`RecurrentMixer`'s):
        solver_training: :class:`~mesanet.ops.SolverSettings` in training mode (default
            :data:`~mesanet.ops.TRAINING`); a mapping replaces fields of the default.
        solver_inference: the same in eval mode, for prefill and decoding (``decode`` picks the one-token
            solver); default :data:`~mesanet.ops.INFERENCE`. ``self.training`` picks one of the two.
        lam_init: initial ``Lambda`` (1.0), must exceed :data:`LAMBDA_LOWER_BOUND`.

    CG statistics: open :func:`mesanet.layers.collect_solver_stats` around the forward (the layer then asks
    its op for :class:`SolverStats`); the layer itself keeps no per-call state.
    Gradients are exact only when the forward solve converged (implicit backward); see :func:`mesanet.ops.mesa`.
    """

    num_recurrent_states = 2

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        *,
        solver_training: SolverSettings | Mapping[str, Any] | None = None,
        solver_inference: SolverSettings | Mapping[str, Any] | None = None,
        lam_init: float = LAMBDA_INIT,
        **options,
    ):
        where = type(self).__name__
        training = as_settings(solver_training, TRAINING, f"{where}: solver_training")
        inference = as_settings(solver_inference, INFERENCE, f"{where}: solver_inference")
        lambda_raw_init(lam_init)  # validates
        self.lam_init = float(lam_init)
        super().__init__(hidden_size, num_heads, head_dim, **options)
        self.solver_training, self.solver_inference = training, inference

    def _make_parameters(self, factory: dict) -> None:
        self._make_lambda(factory)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self._reset_lambda()

    @property
    def solver(self) -> SolverSettings:
        """The settings of the current mode: ``solver_training`` in training, else ``solver_inference``."""
        return self.solver_training if self.training else self.solver_inference

    def extra_repr(self) -> str:
        return super().extra_repr() + f", solver_training={self.solver_training}, solver_inference={self.solver_inference}"

    @staticmethod
    def _dense_gates(q: Tensor, g: Optional[Tensor], beta: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        shape = q.shape[:-1]
        g = q.new_zeros(shape) if g is None else g
        beta = q.new_ones(shape) if beta is None else beta
        return g, beta

    def _parallel(self, q, k, v, g, beta, initial_state, cu_seqlens, output_final_state):
        g, beta = self._dense_gates(q, g, beta)
        override, collectors = active_collectors(self)
        settings = self.solver if override is None else override
        out = mesa(
            q,
            k,
            v,
            g,
            beta,
            self.lam,
            initial_state=initial_state,
            output_final_state=output_final_state,
            solver=settings,
            chunk_size=self.chunk_size,
            cu_seqlens=cu_seqlens,
            return_stats=bool(collectors),
            validate=self.validate_inputs,
        )
        for collector in collectors:
            collector.record(self, out.stats, settings)
        return out.output, out.final_state

    def _step(self, q, k, v, g, beta, state):
        g, beta = self._dense_gates(q, g, beta)
        override, collectors = active_collectors(self)
        settings = self.solver if override is None else override
        out = mesa_step(
            q,
            k,
            v,
            g,
            beta,
            self.lam,
            state,
            solver=settings,
            return_stats=bool(collectors),
            validate=self.validate_inputs,
        )
        if collectors:
            stats = SolverStats(out.stats.iterations.unsqueeze(1), out.stats.relative_residual.unsqueeze(1))  # [B, 1, H]
            for collector in collectors:
                collector.record(self, stats, settings)
        return out.output, out.final_state
