"""Numerical policy of the Mesa operator, stated once.

* The solver and the recurrent states run in at least float32, whatever the activation dtype
  (bf16/fp16 CG has well-known convergence problems; the paper runs its solver in fp32).
  Inputs in float64 keep float64 throughout (used by the tests against exact references).
* Outputs come back in the dtype of ``v``; final states stay in the solver dtype.
* CG is homogeneous: no additive epsilons anywhere in the recursion (``docs/design.md``, "Conjugate gradient").
"""

from __future__ import annotations

import contextlib
import functools

import torch

#: Lowest precision the CG solver and the states are allowed to run in.
SOLVER_MIN_DTYPE = torch.float32

#: Chunk length of the chunkwise-parallel form. 64 balances the d^2 state term against the
#: 4*C*d intra-chunk term for head sizes around 64 (``docs/design.md``, "Cost model").
DEFAULT_CHUNK_SIZE = 64

#: Working-set budget of one CG block. Chunks are independent systems given their entering state,
#: so the chunk solver runs CG on blocks of chunks whose vectors, states and decay matrices fit in
#: a last-level cache: past it every CG step streams from DRAM and the cost grows faster than T.
CG_BLOCK_BYTES = 16 * 2**20

#: Vectors of length C*Dk per system that one CG step touches: x, r, p, s, the rhs, k and a temporary.
CG_VECTORS_PER_SYSTEM = 7

#: Relative asymmetry ``max|H - H^T| / max|H|`` accepted in a user-supplied initial key state.
#: States produced by this package are symmetric up to float32 rounding of the outer-product
#: sums (~1e-7 relative); anything beyond this bound is not a key covariance and CG would
#: silently solve the wrong system.
STATE_SYMMETRY_RTOL = 1e-4

#: Indefiniteness accepted in a user-supplied key state: its smallest eigenvalue must be at least
#: ``-KEY_STATE_PSD_RTOL * max|H|`` (checked by a Cholesky factorisation of ``H / max|H| + rtol * I``).
#: A key covariance ``sum gamma beta k k^T`` is positive semi-definite; the states this package returns
#: miss that only by float32 rounding of the outer-product sums, a few ``eps * max|H|`` per entry and
#: (spread over ``Dk <= 256`` directions) below ~1e-4 relative in the smallest eigenvalue even over 1e6
#: tokens without forgetting. A tensor that is not a key covariance (a random symmetric matrix,
#: ``S_kv`` or an inverse passed by mistake, a state built with negative beta) has its smallest eigenvalue
#: near ``-max|H|``: orders of magnitude past this bound. ``max|H|`` (not the largest eigenvalue)
#: is the scale because it costs one reduction; for a PSD state it lies within ``[lambda_max / Dk, lambda_max]``.
KEY_STATE_PSD_RTOL = 1e-3


def autocast_off(device: torch.device):
    """Context with autocast disabled on ``device``: the ops cast to the solver dtype themselves, and an
    ambient bf16/fp16 autocast would otherwise run their matmuls (and the CG) in low precision."""
    available = getattr(torch.amp, "is_autocast_available", None)
    if available is not None and not available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def without_autocast(op):
    """Decorator for the public ops: run them with autocast off on every device type (see :func:`autocast_off`).

    Entering the contexts costs microseconds per call (it matters for one-token decoding), so they are
    only entered while an autocast region is actually active.
    """

    @functools.wraps(op)
    def wrapper(*args, **kwargs):
        active = [d for d in ("cpu", "cuda") if _autocast_enabled(d)]
        if not active:
            return op(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for device_type in active:
                stack.enter_context(autocast_off(torch.device(device_type)))
            return op(*args, **kwargs)

    return wrapper


def solver_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any given tensor is float64, else float32 (never lower)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return SOLVER_MIN_DTYPE
