"""``SolverSettings``: the one description of how the Mesa solve runs, from config to layer to op.

One frozen dataclass carries every solver knob (step budget, tolerance, preconditioner, how often the
batched loop tests for convergence, the decode solver). :data:`TRAINING` and :data:`INFERENCE` are
the defaults of the two modes; :func:`mesanet.ops.mesa` and :func:`mesanet.ops.mesa_step` take a
``SolverSettings`` and default to :data:`INFERENCE`'s stopping rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Mapping, Optional

from mesanet.utils.validation import check_int, is_int, is_real

#: Preconditioners of the chunkwise solve (see :mod:`mesanet.ops.preconditioners`):
#: ``"none"`` plain CG; ``"jacobi"`` the diagonal of ``H_t + Lambda``; ``"chunk"`` the inverse of the
#: chunk-entry matrix ``exp(b) H_c + Lambda`` plus the chunk's keys at half their mean weight (one SPD inverse
#: per chunk and head); ``"chunk-keys"`` the chunk-entry matrix plus the block's own keys as they arrive (a
#: Woodbury correction: fewer CG steps, a dearer setup and step).
PRECONDITIONERS = ("none", "jacobi", "chunk", "chunk-keys")

#: Decode solvers of :func:`mesanet.ops.mesa_step`: ``"cholesky"`` (exact direct solve) or ``"cg"``.
DECODE_SOLVERS = ("cholesky", "cg")

Preconditioner = Literal["none", "jacobi", "chunk", "chunk-keys"]
DecodeSolver = Literal["cholesky", "cg"]


@dataclass(frozen=True)
class SolverSettings:
    """How the Mesa layer solves ``(H_t + Lambda) x_t = q_t``.

    Attributes:
        max_iter: at most this many CG steps per system (``>= 0``).
        tol: a system stops once ``||q - (H_t + Lambda) x|| <= tol * ||q||`` (``0``: only the working
            precision's residual floor stops it, see :data:`mesanet.ops.cg.RESIDUAL_FLOOR_EPS`).
        preconditioner: one of :data:`PRECONDITIONERS`.
        precondition_every: with ``"chunk"`` or ``"chunk-keys"``, refresh the preconditioner every this many
            tokens (the key state entering each block of that many tokens); ``None``: once per chunk. Refreshing
            more often saves CG steps (trained model, tol 1e-4, max per layer: 6-8 once per chunk, 5-6 every 16
            tokens) at the price of one more SPD inverse per block (``benchmarks/bench_solver_steps.py``).
        check_every: the batched loop asks "has every system stopped?" (a host synchronisation) every
            this many steps; ``None`` picks per device (1 on CPU, :data:`mesanet.ops.cg.ACCELERATOR_CHECK_EVERY` elsewhere).
            Frozen systems never change, so this only decides how soon the loop may exit.
        decode: one-token solver of :func:`mesanet.ops.mesa_step`, one of :data:`DECODE_SOLVERS`.
    """

    max_iter: int = 30
    tol: float = 1e-5
    preconditioner: Preconditioner = "chunk"
    precondition_every: Optional[int] = None
    check_every: Optional[int] = None
    decode: DecodeSolver = "cholesky"

    def __post_init__(self) -> None:
        check_int("SolverSettings.max_iter", self.max_iter, minimum=0)
        if not is_real(self.tol, finite=False) or not (math.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"SolverSettings.tol: expected a finite number >= 0, got {self.tol!r}")
        object.__setattr__(self, "tol", float(self.tol))
        if self.preconditioner not in PRECONDITIONERS:
            raise ValueError(f"SolverSettings.preconditioner: expected one of {PRECONDITIONERS}, got {self.preconditioner!r}")
        if self.precondition_every is not None and (not is_int(self.precondition_every, 1)):
            raise ValueError(
                f"SolverSettings.precondition_every: expected None or an integer >= 1, got {self.precondition_every!r}"
            )
        if self.check_every is not None and (not is_int(self.check_every, 1)):
            raise ValueError(f"SolverSettings.check_every: expected None or an integer >= 1, got {self.check_every!r}")
        if self.decode not in DECODE_SOLVERS:
            raise ValueError(f"SolverSettings.decode: expected one of {DECODE_SOLVERS}, got {self.decode!r}")

    def replace(self, **changes: Any) -> "SolverSettings":
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "SolverSettings") -> "SolverSettings":
        """From a mapping (a config section); unknown keys are an error that lists the known ones."""
        if isinstance(values, SolverSettings):
            return values
        if not isinstance(values, Mapping):
            raise ValueError(f"{where}: expected a mapping of solver settings, got {type(values).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown solver setting(s) {unknown}; expected keys among {known}")
        return cls(**dict(values))


#: Training default: the adaptive rule, chunk-preconditioned CG to the paper's ``tol = 1e-4`` (at most 30 steps).
#: ``TRAINING.replace(tol=0.0)`` runs every system to the residual floor (at most 30 steps, the paper's budget).
TRAINING = SolverSettings(max_iter=30, tol=1e-4, preconditioner="chunk")

#: Inference default (prefill; decoding solves exactly by Cholesky): ``tol = 1e-5``, so that float32 outputs
#: stay within ~1e-5 of float64 (the output error follows the tolerance: measured 1.0e-5 at 1e-5 and
#: 1.1e-4 at 1e-4 on random keys, T = 512), for about one more CG step than 1e-4.
INFERENCE = SolverSettings(max_iter=30, tol=1e-5, preconditioner="chunk", decode="cholesky")


def as_settings(value: "SolverSettings | Mapping[str, Any] | None", default: SolverSettings, where: str) -> SolverSettings:
    """``value`` as :class:`SolverSettings`: ``None`` -> ``default``; a mapping -> ``default`` with those fields
    replaced (unknown keys are an error). Every bad value is one ``ValueError`` starting with ``where``."""
    if value is None:
        return default
    if isinstance(value, SolverSettings):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected SolverSettings, a mapping of its fields or None, got {type(value).__name__}")
    try:
        return SolverSettings.from_dict({**default.to_dict(), **value}, where=where)
    except (ValueError, TypeError) as e:
        message = str(e)
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None
