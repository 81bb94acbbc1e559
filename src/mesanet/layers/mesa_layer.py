"""``MesaLayer``: the MesaNet token mixer (design sections 5 and 6) around :func:`mesanet.ops.mesa`."""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import checks
from ..ops.mesa import mesa
from ..ops.mesa_decode import mesa_step
from ..ops.numerics import DEFAULT_MAX_ITER
from ..ops.results import SolverStats
from .recurrent_mixer import RecurrentMixer, mark_no_weight_decay

#: ``lam = LAMBDA_LOWER_BOUND + softplus(lam_raw)``: the paper's lower bound (App. G.5), which keeps
#: ``cond(H_t + Lambda)`` bounded for heads that forget.
LAMBDA_LOWER_BOUND = 0.25

#: Initial ridge regulariser: ``Lambda = I`` (paper and fla).
LAMBDA_INIT = 1.0

#: Paper: "30 steps or eps = 1e-4 for evaluation"; with a tolerance, CG stops each system early (~9 steps).
DEFAULT_TOL_INFERENCE = 1e-4


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
        max_iter_training, tol_training: CG stopping rule in training mode (paper: 30 steps, no tolerance).
        max_iter_inference, tol_inference: CG stopping rule in eval mode, for prefill and decoding
            (paper: 30 steps or ``eps = 1e-4``). ``self.training`` picks the pair.
        decode_solver: ``"cg"`` (same stopping rule as the chunk form) or ``"cholesky"`` (exact direct
            solve) for the one-token step.
        record_solver_stats: store the CG diagnostics of the last call in ``self.last_solver_stats``
            (:class:`SolverStats`, ``[B, T, H]``; padded positions have ``q = 0`` and report 0 iterations).
        lam_init: initial ``Lambda`` (1.0), must exceed :data:`LAMBDA_LOWER_BOUND`.

    Gradients are exact only when the forward solve converged (implicit backward); see :func:`mesanet.ops.mesa`.
    """

    num_recurrent_states = 2

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        *,
        max_iter_training: int = DEFAULT_MAX_ITER,
        tol_training: float = 0.0,
        max_iter_inference: int = DEFAULT_MAX_ITER,
        tol_inference: float = DEFAULT_TOL_INFERENCE,
        decode_solver: Literal["cg", "cholesky"] = "cg",
        record_solver_stats: bool = False,
        lam_init: float = LAMBDA_INIT,
        **options,
    ):
        where = type(self).__name__
        checks.check_solver_options(where + " (training)", max_iter_training, tol_training)
        checks.check_solver_options(where + " (inference)", max_iter_inference, tol_inference)
        if decode_solver not in ("cg", "cholesky"):
            raise ValueError(f"{where}: expected decode_solver 'cg' or 'cholesky', got {decode_solver!r}")
        lambda_raw_init(lam_init)  # validates
        self.lam_init = float(lam_init)
        super().__init__(hidden_size, num_heads, head_dim, **options)
        self.max_iter_training, self.tol_training = max_iter_training, float(tol_training)
        self.max_iter_inference, self.tol_inference = max_iter_inference, float(tol_inference)
        self.decode_solver = decode_solver
        self.record_solver_stats = bool(record_solver_stats)
        self.last_solver_stats: Optional[SolverStats] = None

    def _make_parameters(self, factory: dict) -> None:
        self._make_lambda(factory)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self._reset_lambda()

    def solver_settings(self) -> tuple[int, float]:
        """``(max_iter, tol)`` for the current mode (training or eval)."""
        if self.training:
            return self.max_iter_training, self.tol_training
        return self.max_iter_inference, self.tol_inference

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", max_iter_training={self.max_iter_training}, tol_training={self.tol_training}"
            + f", max_iter_inference={self.max_iter_inference}, tol_inference={self.tol_inference}"
            + f", decode_solver={self.decode_solver!r}"
        )

    @staticmethod
    def _dense_gates(q: Tensor, g: Optional[Tensor], beta: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        shape = q.shape[:-1]
        g = q.new_zeros(shape) if g is None else g
        beta = q.new_ones(shape) if beta is None else beta
        return g, beta

    def _parallel(self, q, k, v, g, beta, initial_state, cu_seqlens, output_final_state):
        g, beta = self._dense_gates(q, g, beta)
        max_iter, tol = self.solver_settings()
        out = mesa(
            q, k, v, g, beta, self.lam,
            initial_state=initial_state, output_final_state=output_final_state, max_iter=max_iter, tol=tol,
            chunk_size=self.chunk_size, cu_seqlens=cu_seqlens, return_stats=self.record_solver_stats,
            validate=self.validate_inputs,
        )
        if self.record_solver_stats:
            self.last_solver_stats = out.stats
        return out.output, out.final_state

    def _step(self, q, k, v, g, beta, state):
        g, beta = self._dense_gates(q, g, beta)
        max_iter, tol = self.solver_settings()
        out = mesa_step(
            q, k, v, g, beta, self.lam, state, max_iter=max_iter, tol=tol, solver=self.decode_solver,
            return_stats=self.record_solver_stats, validate=self.validate_inputs,
        )
        if self.record_solver_stats:
            stats = out.stats
            self.last_solver_stats = SolverStats(stats.iterations.unsqueeze(1), stats.relative_residual.unsqueeze(1))
        return out.output, out.final_state
