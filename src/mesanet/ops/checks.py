"""Validation at the public boundary of the ops: every failure is a ``ValueError`` that names the
argument, what was expected and what arrived.

Two kinds of check:

* *Structure* (types, ranks, shapes, dtypes, devices, sizes, ``cu_seqlens``): plain Python on tensor
  metadata, always on.
* *Values* (finite, gate ranges, ``lam > 0``, a symmetric positive semi-definite key state, a finite
  result): tensor reductions, on when ``validate=True``. They are fused: :class:`ValueChecks` folds them
  into one stacked comparison (one host synchronisation to read it); only when it says "bad" does
  :func:`raise_value_error` run the per-argument checks that build the detailed message.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor

from mesanet.utils.validation import is_int

from .numerics import KEY_STATE_PSD_RTOL, STATE_SYMMETRY_RTOL

#: Attribute of a key state that a validated decode step returned: the tensor's version counter at that time.
_CHECKED_AT_VERSION = "_mesanet_checked_at_version"


def mark_key_state_checked(h: Tensor) -> None:
    """Mark ``h``, a key state returned by a validated step (its finiteness checked there, symmetric by
    construction from a checked state), so that the next step receiving it unchanged skips the symmetry check
    (a quarter of a validated decode step's cost at d = 64). Any in-place change bumps ``h._version`` and voids
    the mark; changes that bypass autograd's version counter (through ``.data``) are not noticed."""
    setattr(h, _CHECKED_AT_VERSION, h._version)


def key_state_checked(h: Tensor) -> bool:
    """``h`` is unchanged since :func:`mark_key_state_checked`."""
    return getattr(h, _CHECKED_AT_VERSION, None) == h._version


def fail(where: str, message: str) -> None:
    raise ValueError(f"{where}: {message}")


def shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _dims(dims: str) -> str:
    return "[" + ", ".join(dims.split()) + "]"


# --- structure ---------------------------------------------------------------------------------


def check_tensor(where: str, name: str, x: object, dims: str) -> Tensor:
    """``x`` is a non-empty floating tensor with one axis per name in ``dims`` (e.g. ``"B T H Dk"``)."""
    if not isinstance(x, Tensor):
        fail(where, f"expected {name} to be a torch.Tensor of shape {_dims(dims)}, got {type(x).__name__}")
    rank = len(dims.split())
    if x.dim() != rank:
        fail(where, f"expected {name} of rank {rank} {_dims(dims)}, got rank {x.dim()} with shape {shape_str(x.shape)}")
    if not x.is_floating_point():
        fail(where, f"expected {name} to be a floating-point tensor, got dtype {x.dtype}")
    if 0 in x.shape:
        empty = ", ".join(d for d, s in zip(dims.split(), x.shape) if s == 0)
        fail(where, f"expected {name} of shape {_dims(dims)} with every size >= 1, got {shape_str(x.shape)} ({empty} = 0)")
    return x


def check_shape(where: str, name: str, x: Tensor, expected: Sequence[int], dims: str) -> None:
    if tuple(x.shape) != tuple(expected):
        fail(where, f"expected {name} of shape {_dims(dims)} = {shape_str(expected)}, got {shape_str(x.shape)}")


def check_same_device(where: str, named: dict[str, Optional[Tensor]]) -> None:
    devices = {name: t.device for name, t in named.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        fail(where, f"expected all tensors on one device, got {listing}")


def check_positive_int(where: str, name: str, value: object) -> None:
    if not is_int(value, 1):
        fail(where, f"expected {name} to be a positive integer, got {value!r}")


def check_chunk_size(where: str, chunk_size: object) -> None:
    check_positive_int(where, "chunk_size", chunk_size)


def check_cu_seqlens(where: str, cu_seqlens: object, batch: int, length: int, device: torch.device) -> list[int]:
    """Offsets ``[N + 1]`` of packed sequences: integer, on the inputs' device, 0 first, strictly increasing, T last."""
    if not isinstance(cu_seqlens, Tensor):
        fail(where, f"expected cu_seqlens to be a 1-D integer torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        fail(where, f"expected cu_seqlens of dtype torch.int32 or torch.int64, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        fail(where, f"expected cu_seqlens of shape [N + 1] with N >= 1, got {shape_str(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        fail(where, f"expected cu_seqlens on {device} with the inputs, got {cu_seqlens.device}")
    if batch != 1:
        fail(where, f"expected batch size 1 with cu_seqlens (sequences are packed along T), got B = {batch}")
    offsets = [int(o) for o in cu_seqlens.tolist()]
    if offsets[0] != 0:
        fail(where, f"expected cu_seqlens to start at 0, got {offsets[0]}")
    if any(b <= a for a, b in zip(offsets, offsets[1:])):
        fail(where, f"expected strictly increasing cu_seqlens (no empty sequences), got {offsets}")
    if offsets[-1] != length:
        fail(where, f"expected the last cu_seqlens offset to equal T = {length}, got {offsets[-1]}")
    return [b - a for a, b in zip(offsets, offsets[1:])]


def check_token_inputs(where: str, q, k, v, g, beta, lam, lead: str, gates_optional: bool, takes_lam: bool) -> tuple[int, ...]:
    """Structure of the per-token inputs of every op: ``q, k [*lead, Dk]``, ``v [*lead, Dv]``,
    ``g, beta [*lead]`` (``None`` allowed when ``gates_optional``), ``lam [H, Dk]`` when ``takes_lam``.

    ``lead`` is ``"B T H"`` for sequences, ``"B H"`` for a decode step. Returns ``(*lead sizes, Dk, Dv)``.
    """
    q = check_tensor(where, "q", q, f"{lead} Dk")
    check_shape(where, "k", check_tensor(where, "k", k, f"{lead} Dk"), q.shape, f"{lead} Dk")
    v = check_tensor(where, "v", v, f"{lead} Dv")
    lead_shape = tuple(q.shape[:-1])
    check_shape(where, "v", v, (*lead_shape, v.shape[-1]), f"{lead} Dv")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        fail(where, f"expected q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, gate in (("g", g), ("beta", beta)):
        if gate is None and gates_optional:
            continue
        check_shape(where, name, check_tensor(where, name, gate, lead), lead_shape, lead)
    if takes_lam:
        check_shape(where, "lam", check_tensor(where, "lam", lam, "H Dk"), (lead_shape[-1], q.shape[-1]), "H Dk")
    return (*lead_shape, q.shape[-1], v.shape[-1])


# --- values: fused flag ------------------------------------------------------------------------

#: Bound markers of :class:`ValueChecks` (inclusive bounds; mapped to the compared dtype): ``FINITE``
#: (``±`` the largest finite value, so NaN and inf never pass) and ``POSITIVE`` (the smallest positive
#: value: ``x >= POSITIVE`` is ``x > 0``).
FINITE = math.inf
POSITIVE = math.ulp(0.0)


@functools.lru_cache(maxsize=128)
def _bounds(lo: tuple[float, ...], hi: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    info = torch.finfo(dtype)
    exact = {FINITE: info.max, -FINITE: -info.max, POSITIVE: info.tiny * info.eps}  # tiny * eps: the smallest subnormal
    return torch.tensor([[exact.get(b, b) for b in lo], [exact.get(b, b) for b in hi]], dtype=dtype, device=device)


class ValueChecks:
    """Value checks as scalars with bounds, read together: :meth:`passed` is one stacked comparison per
    dtype and ONE host synchronisation however many checks were added. NaN never passes a bound.
    Nothing here builds a message: that is the detailed checks' job."""

    def __init__(self) -> None:
        self.groups: dict[torch.dtype, tuple[list[Tensor], list[float], list[float]]] = {}

    def add(self, value: Tensor, lo: float = -FINITE, hi: float = FINITE) -> None:
        """``lo <= value <= hi`` for a 0-dim ``value``."""
        if value.dtype not in (torch.float32, torch.float64):
            value = value.to(torch.float32)  # exact for bf16/fp16 and for small integer flags
        values, los, his = self.groups.setdefault(value.dtype, ([], [], []))
        values.append(value)  # grouped by dtype: stacking one dtype is 3x faster than promoting a mix
        los.append(lo)
        his.append(hi)

    def finite(self, t: Optional[Tensor], lo: float = -FINITE, hi: float = FINITE) -> None:
        """Every entry of ``t`` finite and in ``[lo, hi]`` (min and max carry NaN along)."""
        if t is not None:
            low, high = torch.aminmax(t.detach())
            self.add(low, lo=lo)
            self.add(high, hi=hi)

    def key_state(self, h: Tensor, definite: bool) -> None:
        """:func:`key_state_ok` for every matrix of ``h``, as one or two scalars."""
        h = h.detach()
        scale = h.abs().amax(dim=(-2, -1))  # max|H| per matrix
        asym = (h - h.mT).amax(dim=(-2, -1))  # an antisymmetric difference: its max is its max |.|
        self.add((STATE_SYMMETRY_RTOL * scale - asym).amin(), lo=0.0)  # NaN (so failing) unless h is finite
        if definite:
            self.add(_psd_info(h, scale).amax(), hi=0.0)

    def inputs(
        self,
        q,
        k,
        v,
        g,
        beta,
        lam,
        plain: Iterable[Optional[Tensor]] = (),
        key_states: Iterable[Tensor] = (),
        *,
        beta_nonnegative: bool,
        definite: bool = True,
        step: bool = False,
    ) -> "ValueChecks":
        """The checks of every op's inputs: ``q, k, v`` and ``plain`` tensors finite; ``g`` finite and
        ``<= 0``; ``beta`` finite (and ``>= 0`` when ``beta_nonnegative``); ``lam`` finite and ``> 0``;
        ``key_states`` symmetric (and positive semi-definite when ``definite``).

        ``step``: the caller checks the new state ``gamma S + beta k x^T`` finite (:meth:`finite`), which
        any NaN or inf in ``k``, ``v``, ``beta`` or the old state reaches (``0 * inf`` is NaN); their own
        finiteness reductions are then skipped.
        """
        for t in (q,) if step else (q, k, v, *plain):
            self.finite(t)
        self.finite(g, hi=0.0)
        if step:
            if beta is not None and beta_nonnegative:
                self.add(beta.detach().amin(), lo=0.0)
        else:
            self.finite(beta, lo=0.0 if beta_nonnegative else -FINITE)
        self.finite(lam, lo=POSITIVE)
        for h in key_states:
            self.key_state(h, definite)
        return self

    def passed(self) -> bool:
        ok = None
        for dtype, (values, lo, hi) in self.groups.items():
            bounds = _bounds(tuple(lo), tuple(hi), dtype, values[0].device)
            stacked = torch.stack(values)
            group_ok = ((stacked >= bounds[0]) & (stacked <= bounds[1])).all()
            ok = group_ok if ok is None else ok & group_ok
        return ok is None or bool(ok)


def _psd_info(h: Tensor, scale: Tensor) -> Tensor:
    """Cholesky ``info`` of ``H / max|H| + KEY_STATE_PSD_RTOL * I`` per matrix: 0 iff the smallest
    eigenvalue of ``H`` is above ``-KEY_STATE_PSD_RTOL * max|H|``."""
    if h.dtype not in (torch.float32, torch.float64):
        h, scale = h.float(), scale.float()  # no half-precision Cholesky
    shifted = h / torch.where(scale > 0, scale, 1.0)[..., None, None]
    shifted.diagonal(dim1=-2, dim2=-1).add_(KEY_STATE_PSD_RTOL)
    return torch.linalg.cholesky_ex(shifted).info


def key_state_ok(h: Tensor, definite: bool = True) -> Tensor:
    """Per matrix of ``h [..., D, D]``: finite, symmetric and (``definite``) positive semi-definite (``bool [...]``).

    Symmetric: ``max|H - H^T| <= STATE_SYMMETRY_RTOL * max|H|``. Positive semi-definite:
    ``H / max|H| + KEY_STATE_PSD_RTOL * I`` has a Cholesky factor, i.e. the smallest eigenvalue is
    above ``-KEY_STATE_PSD_RTOL * max|H|`` (one factorisation per matrix, no eigensolver).
    """
    h = h.detach()
    scale = h.abs().amax(dim=(-2, -1))
    ok = STATE_SYMMETRY_RTOL * scale - (h - h.mT).amax(dim=(-2, -1)) >= 0  # false for NaN
    ok &= scale < math.inf
    if definite:
        ok &= _psd_info(h, scale) == 0
    return ok


# --- values: detailed messages (run only when the fused flag says "bad") -------------------------


def check_finite(where: str, named: dict[str, Optional[Tensor]]) -> None:
    for name, t in named.items():
        if t is not None and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            fail(where, f"expected finite values in {name}, got {bad} non-finite entr{'y' if bad == 1 else 'ies'} (NaN or inf)")


def check_gates(where: str, g: Optional[Tensor], beta: Optional[Tensor], beta_nonnegative: bool = True) -> None:
    """``g = log gamma <= 0`` (a forget gate above 1 makes the recurrence grow without bound); for the
    Mesa ops also ``beta >= 0`` (``H`` must stay positive semi-definite)."""
    if g is not None and bool((g.detach() > 0).any()):
        fail(where, f"expected g (log forget gate, log gamma) <= 0, got max {float(g.max()):.4g}")
    if beta_nonnegative and beta is not None and bool((beta.detach() < 0).any()):
        fail(where, f"expected beta (input gate) >= 0 so that H stays positive semi-definite, got min {float(beta.min()):.4g}")


def check_lam(where: str, lam: Tensor) -> None:
    if bool((lam.detach() <= 0).any()):
        fail(
            where,
            f"expected lam > 0 (the ridge regulariser makes H + diag(lam) positive definite), got min {float(lam.min()):.4g}",
        )


def check_key_state(where: str, name: str, h: Tensor, definite: bool = True) -> None:
    """A key state must be symmetric (CG and Cholesky would solve another system) and positive
    semi-definite (a key covariance); the rules of :func:`key_state_ok`, with the numbers."""
    h = h.detach()
    ok = key_state_ok(h, definite)
    if bool(ok.all()):
        return
    index = tuple(int(i) for i in (~ok).nonzero()[0])
    matrix = h[index].double()
    scale = float(matrix.abs().max())
    asym = float((matrix - matrix.mT).abs().max())
    at = f" at index {list(index)}" if index else ""
    if asym > STATE_SYMMETRY_RTOL * scale:
        fail(
            where,
            f"expected {name} to be symmetric (a key covariance), got max|H - H^T| = {asym:.3g} with max|H| = {scale:.3g}{at}",
        )
    fail_indefinite(where, name, matrix, f"smallest eigenvalue >= -{KEY_STATE_PSD_RTOL:g} * max|H|", at)


def fail_indefinite(where: str, name: str, matrix: Tensor, rule: str, at: str) -> None:
    """``name`` (one ``[D, D]`` matrix) is not positive semi-definite: say by how much."""
    matrix = matrix.detach().double()
    eig = torch.linalg.eigvalsh((matrix + matrix.mT) / 2)
    fail(
        where,
        f"expected {name} to be positive semi-definite ({rule}), got smallest eigenvalue "
        f"{float(eig[0]):.4g} with largest {float(eig[-1]):.4g} and max|H| = {float(matrix.abs().max()):.4g}{at}",
    )


def check_finite_result(
    where: str, named_results: dict[str, Optional[Tensor]], named_inputs: dict[str, Optional[Tensor]], dtype: torch.dtype
) -> None:
    """Finite inputs gave a non-finite result: they overflow the working precision."""
    for name, t in named_results.items():
        if t is None or bool(torch.isfinite(t).all()):
            continue
        bad = int((~torch.isfinite(t)).sum())
        sizes = ", ".join(f"max|{n}| = {float(x.detach().abs().max()):.3g}" for n, x in named_inputs.items() if x is not None)
        fail(
            where,
            f"expected a finite {name} from finite inputs, got {bad} non-finite entr{'y' if bad == 1 else 'ies'}: "
            f"the inputs overflow {dtype} ({sizes}); rescale them (the layers L2-normalise q and k)"
            + ("" if dtype == torch.float64 else " or compute in float64"),
        )


def raise_value_error(
    where: str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor],
    beta: Optional[Tensor],
    lam: Optional[Tensor],
    states: dict[str, Tensor],
    key_names: Sequence[str] = (),
    *,
    beta_nonnegative: bool,
    definite: bool = True,
) -> None:
    """The detailed form of :meth:`ValueChecks.inputs`: raise the first failing check's message (arguments in
    signature order, state parts last; ``key_names`` are the key states among ``states``)."""
    check_finite(where, {"q": q, "k": k, "v": v, "g": g, "beta": beta, "lam": lam, **states})
    check_gates(where, g, beta, beta_nonnegative)
    if lam is not None:
        check_lam(where, lam)
    for name in key_names:
        check_key_state(where, name, states[name], definite)
