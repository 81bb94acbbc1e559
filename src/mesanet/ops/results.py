"""What the Mesa ops return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple, Union

from torch import Tensor


@dataclass(frozen=True)
class SolverStats:
    """CG diagnostics per system (one system per token and head).

    ``iterations``: int32 steps each system took (``[B, T, H]`` for sequences, ``[B, H]`` for a
    decode step); ``relative_residual``: ``||r|| / ||q||`` of the CG residual at exit (0 where
    ``q = 0``; 0 as well for the exact Cholesky solve of the decode step).
    """

    iterations: Tensor
    relative_residual: Tensor

    @property
    def max_iterations(self) -> int:
        return int(self.iterations.max()) if self.iterations.numel() else 0

    @property
    def mean_iterations(self) -> float:
        return float(self.iterations.float().mean()) if self.iterations.numel() else 0.0

    @property
    def max_relative_residual(self) -> float:
        return float(self.relative_residual.max()) if self.relative_residual.numel() else 0.0


class MesaOutput(NamedTuple):
    """``output`` in the dtype of ``v``; ``final_state`` when requested, else ``None``: for the Mesa ops
    ``(H_kk [N, H, Dk, Dk], S_kv [N, H, Dk, Dv])``, for single-state ops (GLA, delta rule) the tensor
    ``S [N, H, Dk, Dv]``, in the solver dtype; ``stats`` (Mesa CG diagnostics) when requested, else ``None``."""

    output: Tensor
    final_state: Optional[Union[Tensor, Tuple[Tensor, Tensor]]]
    stats: Optional[SolverStats]
