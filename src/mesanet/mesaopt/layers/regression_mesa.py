"""The mesa-layer of "Uncovering mesa-optimization algorithms in Transformers" (paper B, eqs. 5-8).

``x [B, T, D] -> delta [B, T, D]``; per head ``q, k [.., Dk]``, ``v [.., Dv]`` (linear, no biases, no
short convolution, optionally L2-normalised q and k), then the causal ridge-regression read-out::

    delta_t = sum_h P_h V_{h,t} K_{h,t}^T (K_{h,t} K_{h,t}^T + I / lam_h)^{-1} q_{h,t}

with one learnable ``lam_h > 0`` per head (initialised to ``lam_init = 1``; paper convention: a larger
``lam`` means weaker regularisation). Variants:

* ``"mesa"``: :func:`mesanet.ops.mesa` (chunkwise CG, implicit backward) with ``g = 0``, ``beta = 1``;
* ``"mesa_forget"``: the same op with a learned forget gate ``gamma_{h,t} = sigmoid(w_h . x_t + b_h)``
  (``g = log gamma``; the bias starts at ``logit(forget_init)``), i.e. past pairs and the regulariser decay;
* ``"sherman_morrison"``: :func:`mesanet.ops.mesa_sherman_morrison`, the paper's exact RLS recursion
  (no forgetting; sequential in T).

The operators' ``lam`` is the diagonal added to the key covariance, so they receive ``1 / lam_h``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mesanet.layers.gates import mark_no_weight_decay
from mesanet.ops import SolverSettings, mesa, mesa_sherman_morrison
from mesanet.ops.solver_settings import as_settings
from mesanet.utils.validation import is_int

__all__ = ["RegressionMesa", "REGRESSION_MESA_VARIANTS"]

REGRESSION_MESA_VARIANTS = ("mesa", "mesa_forget", "sherman_morrison")

#: Solver of the ``ops.mesa`` variants: 30 CG steps, no tolerance (the systems are small, ``Dk`` ~ 20, so
#: this is the exact solution up to the working precision; the analyses compare against closed forms).
REGRESSION_SOLVER = SolverSettings(max_iter=30, tol=0.0)


class RegressionMesa(nn.Module):
    """``RegressionMesa(dim, num_heads, key_size, value_size=None, variant="mesa", qk_norm=False, lam_init=1.0,
    init_std=0.05, forget_init=0.99, solver=None, chunk_size=16)``; ``solver`` / ``chunk_size``: the
    :class:`~mesanet.ops.SolverSettings` (default :data:`REGRESSION_SOLVER`; a mapping replaces its fields) and chunk
    length of the ``ops.mesa`` variants (16 was the fastest on CPU at T = 50, Dk = 20)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        key_size: int,
        value_size: Optional[int] = None,
        *,
        variant: str = "mesa",
        qk_norm: bool = False,
        lam_init: float = 1.0,
        init_std: float = 0.05,
        forget_init: float = 0.99,
        solver: SolverSettings | Mapping[str, Any] | None = None,
        chunk_size: int = 16,
    ) -> None:
        super().__init__()
        value_size = key_size if value_size is None else value_size
        for name, val in (
            ("dim", dim),
            ("num_heads", num_heads),
            ("key_size", key_size),
            ("value_size", value_size),
            ("chunk_size", chunk_size),
        ):
            if not is_int(val, 1):
                raise ValueError(f"RegressionMesa: {name} expected an int >= 1, got {val!r}")
        if variant not in REGRESSION_MESA_VARIANTS:
            raise ValueError(f"RegressionMesa: variant expected one of {REGRESSION_MESA_VARIANTS}, got {variant!r}")
        if not (isinstance(lam_init, (int, float)) and math.isfinite(lam_init) and lam_init > 0):
            raise ValueError(f"RegressionMesa: lam_init expected a finite float > 0, got {lam_init!r}")
        if not init_std > 0:
            raise ValueError(f"RegressionMesa: init_std expected > 0, got {init_std!r}")
        if not 0.0 < forget_init < 1.0:
            raise ValueError(f"RegressionMesa: forget_init expected in (0, 1), got {forget_init!r}")
        self.dim, self.num_heads, self.key_size, self.value_size = dim, num_heads, key_size, value_size
        self.solver = as_settings(solver, REGRESSION_SOLVER, "RegressionMesa: solver")
        self.variant, self.qk_norm, self.chunk_size = variant, bool(qk_norm), chunk_size
        self.lam_init, self.init_std, self.forget_init = float(lam_init), float(init_std), float(forget_init)
        self.w_q = nn.Parameter(torch.empty(num_heads, key_size, dim))
        self.w_k = nn.Parameter(torch.empty(num_heads, key_size, dim))
        self.w_v = nn.Parameter(torch.empty(num_heads, value_size, dim))
        self.proj = nn.Parameter(torch.empty(num_heads, dim, value_size))
        #: ``lam_h = exp(log_lam_h)``: positive, no weight decay.
        self.log_lam = mark_no_weight_decay(nn.Parameter(torch.empty(num_heads)))
        if variant == "mesa_forget":
            self.w_gate = nn.Parameter(torch.empty(num_heads, dim))
            self.b_gate = mark_no_weight_decay(nn.Parameter(torch.empty(num_heads)))
        else:
            self.register_parameter("w_gate", None)
            self.register_parameter("b_gate", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.w_q, self.w_k, self.w_v, self.proj):
            nn.init.normal_(p, mean=0.0, std=self.init_std)
        nn.init.constant_(self.log_lam, math.log(self.lam_init))
        if self.w_gate is not None:
            nn.init.normal_(self.w_gate, mean=0.0, std=self.init_std)
            nn.init.constant_(self.b_gate, math.log(self.forget_init / (1.0 - self.forget_init)))

    @property
    def lam(self) -> Tensor:
        """Per-head ``lam [H]`` (regulariser ``I / lam``)."""
        return self.log_lam.exp()

    def projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(q, k [B, T, H, Dk], v [B, T, H, Dv])`` as fed to the regression (after the optional L2 norm)."""
        q = torch.einsum("hkd,btd->bthk", self.w_q, x)
        k = torch.einsum("hkd,btd->bthk", self.w_k, x)
        v = torch.einsum("hvd,btd->bthv", self.w_v, x)
        if self.qk_norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return q, k, v

    def log_forget(self, x: Tensor) -> Tensor:
        """``g = log gamma [B, T, H]`` (zeros without a forget gate)."""
        if self.w_gate is None:
            return x.new_zeros(x.shape[0], x.shape[1], self.num_heads)
        return F.logsigmoid(torch.einsum("hd,btd->bth", self.w_gate, x) + self.b_gate)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, T, D] -> delta [B, T, D]``."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"RegressionMesa: x expected [B, T, {self.dim}], got {tuple(x.shape)}")
        q, k, v = self.projections(x)
        g = self.log_forget(x)
        beta = torch.ones_like(g)
        reg = (1.0 / self.lam).to(x.dtype)[:, None].expand(self.num_heads, self.key_size)  # ops' diagonal [H, Dk]
        if self.variant == "sherman_morrison":
            out = mesa_sherman_morrison(q, k, v, g, beta, reg).output
        else:
            out = mesa(q, k, v, g, beta, reg, solver=self.solver, chunk_size=self.chunk_size).output
        return torch.einsum("hdv,bthv->btd", self.proj, out)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, key_size={self.key_size}, value_size={self.value_size}, "
            f"variant={self.variant!r}, qk_norm={self.qk_norm}"
        )
