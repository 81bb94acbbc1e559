"""The one input path of the ops: validate and prepare their arguments.

Every op (:func:`~mesanet.ops.mesa`, :func:`~mesanet.ops.mesa_step`, :func:`~mesanet.ops.gla`,
:func:`~mesanet.ops.delta_rule`, their ``_step``s and :func:`~mesanet.ops.mesa_sherman_morrison`) takes
per-token ``q, k, v, g, beta`` (and ``lam`` for the Mesa ops) plus an optional state, and does the same
things with them before its own math:

* structure (always): types, ranks, shapes, sizes ``>= 1``, one dtype for ``q, k, v``, one device,
  ``cu_seqlens`` -> sequence lengths, the state's parts and shapes;
* values (``validate=True``): finite, gate ranges, ``lam > 0``, a symmetric positive semi-definite key
  state, fused into one boolean tensor (one host synchronisation) with the detailed message built only
  on failure (see :mod:`mesanet.ops.checks`); after the op, a non-finite result from finite inputs
  (an overflow of the working precision) is an error too;
* the solver dtype (float32, float64 if any input is float64), the casts, missing gates and the
  chunked layout.

:func:`prepare_sequences` does this for ``[B, T, H, D]`` inputs, :func:`prepare_step` for one decoding
token ``[B, H, D]``. What differs between the ops is stated once, in an :class:`OpKind`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from einops import rearrange
from torch import Tensor

from . import checks
from .chunk_layout import ChunkLayout
from .numerics import solver_dtype

StateArg = Union[None, Tensor, Sequence[Tensor]]


@dataclass(frozen=True)
class OpKind:
    """What distinguishes the ops at their boundary.

    ``state``: labels of the state's parts, each ``[N, H, Dk, width]``; ``None`` for a single tensor
    ``S [N, H, Dk, Dv]`` (GLA, delta rule). ``widths``: ``"Dk"`` or ``"Dv"`` per part. ``key``: which parts
    are key states (checked symmetric positive semi-definite). ``lam``: the op takes ``lam [H, Dk] > 0``.
    ``gates_optional``: ``g``/``beta`` may be ``None`` (``gamma = 1``, ``beta = 1``). ``beta_nonnegative``:
    ``beta >= 0`` is required (the Mesa key covariance must stay positive semi-definite).
    """

    state: Optional[tuple[str, ...]]
    widths: tuple[str, ...]
    key: tuple[bool, ...]
    lam: bool
    gates_optional: bool
    beta_nonnegative: bool

    def names(self, arg: str) -> tuple[str, ...]:
        """Display names of the state parts, e.g. ``initial_state[0] (H_kk)`` or ``state``."""
        if self.state is None:
            return (arg,)
        return tuple(f"{arg}[{i}] ({label})" for i, label in enumerate(self.state))

    def key_names(self, arg: str) -> tuple[str, ...]:
        return tuple(n for n, is_key in zip(self.names(arg), self.key) if is_key)


#: Mesa (chunk form and decode step): state ``(H_kk, S_kv)``.
MESA = OpKind(("H_kk", "S_kv"), ("Dk", "Dv"), (True, False), lam=True, gates_optional=False, beta_nonnegative=True)
#: The 2023 Mesa layer: state ``(R, S_kv)``, ``R`` the inverse regularised key covariance (symmetric PD).
SHERMAN_MORRISON = OpKind(("R", "S_kv"), ("Dk", "Dv"), (True, False), lam=True, gates_optional=False, beta_nonnegative=True)
#: Single-state baselines (GLA, (gated) DeltaNet): state ``S``, optional gates, ``beta`` any real.
LINEAR = OpKind(None, ("Dv",), (False,), lam=False, gates_optional=True, beta_nonnegative=False)


def _state_tensors(where: str, kind: OpKind, arg: str, state: StateArg, rows: str) -> Optional[tuple[Tensor, ...]]:
    """Type and rank of a state argument; its parts as a tuple (``None`` when absent)."""
    if state is None:
        return None
    names = kind.names(arg)
    if kind.state is None:
        parts = (state,)
    elif not isinstance(state, (tuple, list)) or len(state) != len(names):
        got = type(state).__name__ + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
        checks.fail(where, f"expected {arg} = ({', '.join(kind.state)}), got {got}")
    else:
        parts = tuple(state)
    for name, part, width in zip(names, parts, kind.widths):
        checks.check_tensor(where, name, part, f"{rows} H Dk {width}")
    return parts


def _check_state_shapes(where: str, kind: OpKind, arg: str, parts, rows: str, n: int, heads: int, dk: int, dv: int) -> None:
    sizes = {"Dk": dk, "Dv": dv}
    for name, part, width in zip(kind.names(arg), parts or (), kind.widths):
        checks.check_shape(where, name, part, (n, heads, dk, sizes[width]), f"{rows} H Dk {width}")


def _split(kind: OpKind, arg: str, parts) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
    """``(plain parts, key parts, name -> part)``."""
    plain, key, named = [], [], {}
    for name, part, is_key in zip(kind.names(arg), parts or (), kind.key):
        (key if is_key else plain).append(part)
        named[name] = part
    return plain, key, named


def _value_checks(kind: OpKind, q, k, v, g, beta, lam, arg: str, parts, *, step: bool) -> checks.ValueChecks:
    """Sequences: every check. Steps: the finiteness of ``k, v, beta`` and the old state is read off the
    new state (see :meth:`~mesanet.ops.checks.ValueChecks.inputs`), and key states are only checked
    symmetric (see :func:`prepare_step`), unless a validated step returned them and they are unchanged
    (:func:`~mesanet.ops.checks.key_state_checked`)."""
    plain, key, _ = _split(kind, arg, parts)
    if step:
        key = [h for h in key if not checks.key_state_checked(h)]
    return checks.ValueChecks().inputs(
        q, k, v, g, beta, lam, plain, key, beta_nonnegative=kind.beta_nonnegative, definite=not step, step=step
    )


def _raise_value_error(where: str, kind: OpKind, q, k, v, g, beta, lam, arg: str, parts, *, step: bool) -> None:
    _, _, named = _split(kind, arg, parts)
    checks.raise_value_error(
        where,
        q,
        k,
        v,
        g,
        beta,
        lam,
        named,
        kind.key_names(arg) if parts else (),
        beta_nonnegative=kind.beta_nonnegative,
        definite=not step,
    )


def _finite(results: dict[str, Optional[Tensor]], into: Optional[checks.ValueChecks] = None) -> checks.ValueChecks:
    into = checks.ValueChecks() if into is None else into
    for r in results.values():
        into.finite(r)
    return into


def check_results(where: str, dtype: torch.dtype, inputs: dict[str, Tensor], results: dict[str, Optional[Tensor]]) -> None:
    """Finite (already validated) inputs must give finite results; else they overflowed ``dtype``."""
    if not _finite(results).passed():
        checks.check_finite_result(where, results, inputs, dtype)


# --- sequences [B, T, H, D] ----------------------------------------------------------------------


@dataclass
class Sequences:
    """Validated sequence inputs in the solver ``dtype``: ``q, k [B, T, H, Dk]``, ``v [B, T, H, Dv]``,
    ``g, beta [B, T, H]`` (``0`` and ``1`` where omitted), ``lam [H, Dk]`` (Mesa ops, else ``None``),
    ``state`` the parts of the initial state ``[N, H, Dk, *]`` (``None`` when omitted), ``lengths`` of
    the ``N`` sequences (``N = B`` unless packed)."""

    where: str
    kind: OpKind
    batch: int
    length: int
    heads: int
    dk: int
    dv: int
    lengths: list[int]
    dtype: torch.dtype
    out_dtype: torch.dtype
    q: Tensor
    k: Tensor
    v: Tensor
    g: Tensor
    beta: Tensor
    lam: Optional[Tensor]
    state: Optional[tuple[Tensor, ...]]
    validate: bool
    inputs: dict  # the caller's q, k, v (named in the overflow message)

    def initial_state(self) -> tuple[Tensor, ...]:
        """The initial state's parts; zeros ``[N, H, Dk, Dk | Dv]`` where omitted."""
        if self.state is not None:
            return self.state
        sizes = {"Dk": self.dk, "Dv": self.dv}
        return tuple(self.q.new_zeros((len(self.lengths), self.heads, self.dk, sizes[w])) for w in self.kind.widths)

    def layout(self, chunk_size: int) -> ChunkLayout:
        """The chunked layout. A chunk longer than every sequence is pure padding: ``C <= max(lengths)``."""
        return ChunkLayout.from_lengths(self.lengths, min(chunk_size, max(self.lengths)), self.q.device)

    @staticmethod
    def pack(layout: ChunkLayout, x: Tensor) -> Tensor:
        """``[B, T, H(, D)] -> [NC, H, C(, D)]``."""
        return layout.pack(rearrange(x, "b t ... -> (b t) ..."))

    def unpack(self, layout: ChunkLayout, y: Tensor) -> Tensor:
        """``[NC, H, C(, D)] -> [B, T, H(, D)]``."""
        return layout.unpack(y).reshape(self.batch, self.length, *y.shape[1:2], *y.shape[3:])

    def check_results(self, **results: Optional[Tensor]) -> None:
        """With ``validate``: finite inputs must give finite results (else they overflowed the dtype)."""
        if self.validate:
            check_results(self.where, self.dtype, self.inputs, results)


def prepare_sequences(
    where: str,
    kind: OpKind,
    q,
    k,
    v,
    g,
    beta,
    lam,
    initial_state: StateArg,
    *,
    cu_seqlens: Optional[Tensor] = None,
    chunk_size: Optional[int] = None,
    validate: bool = True,
) -> Sequences:
    """Validate and prepare the ``[B, T, H, D]`` inputs of the op ``where`` (see the module docstring).

    ``chunk_size`` is checked here (a positive integer) and capped by :meth:`Sequences.layout`.
    ``initial_state`` has one row per sequence (``N = B``, or the number of packed sequences).
    """
    if chunk_size is not None:
        checks.check_chunk_size(where, chunk_size)
    lam = lam if kind.lam else None
    batch, length, heads, dk, dv = checks.check_token_inputs(where, q, k, v, g, beta, lam, "B T H", kind.gates_optional, kind.lam)
    parts = _state_tensors(where, kind, "initial_state", initial_state, "N")
    named = dict(q=q, k=k, v=v, g=g, beta=beta, lam=lam)
    named.update(zip(kind.names("initial_state"), parts or ()))
    checks.check_same_device(where, named)
    lengths = [length] * batch if cu_seqlens is None else checks.check_cu_seqlens(where, cu_seqlens, batch, length, q.device)
    _check_state_shapes(where, kind, "initial_state", parts, "N", len(lengths), heads, dk, dv)
    if validate and not _value_checks(kind, q, k, v, g, beta, lam, "initial_state", parts, step=False).passed():
        _raise_value_error(where, kind, q, k, v, g, beta, lam, "initial_state", parts, step=False)

    dtype = solver_dtype(q, k, v, g, beta, lam, *(parts or ()))
    qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
    return Sequences(
        where,
        kind,
        batch,
        length,
        heads,
        dk,
        dv,
        lengths,
        dtype,
        v.dtype,
        qc,
        kc,
        vc,
        qc.new_zeros((batch, length, heads)) if g is None else g.to(dtype),
        qc.new_ones((batch, length, heads)) if beta is None else beta.to(dtype),
        None if lam is None else lam.to(dtype),
        None if parts is None else tuple(p.to(dtype) for p in parts),
        validate,
        dict(q=q, k=k, v=v),
    )


# --- one decoding token [B, H, D] -----------------------------------------------------------------


@dataclass
class Step:
    """One validated decoding token in the solver ``dtype``: ``q, k [B, H, Dk]``, ``v [B, H, Dv]``,
    ``g, beta [B, H]`` (``None`` where omitted: ``gamma = 1``, ``beta = 1``), ``lam [H, Dk]`` (Mesa ops),
    ``state`` the parts ``[B, H, Dk, *]`` (``None`` when omitted: zeros).

    With ``validate`` the value checks are computed but not read (``pending``): :meth:`finish` reads them
    together with the finiteness of the results, so a validated step synchronises once.
    """

    where: str
    kind: OpKind
    dtype: torch.dtype
    out_dtype: torch.dtype
    q: Tensor
    k: Tensor
    v: Tensor
    g: Optional[Tensor]
    beta: Optional[Tensor]
    lam: Optional[Tensor]
    state: Optional[tuple[Tensor, ...]]
    pending: Optional[checks.ValueChecks]
    raw: tuple  # the caller's (q, k, v, g, beta, lam, state parts), for the detailed messages

    def decayed(self, part: Tensor) -> Tensor:
        """``gamma * part`` for a state part ``[B, H, Dk, *]`` (``part`` itself when ``g`` was omitted)."""
        return part if self.g is None else self.g.exp()[..., None, None] * part

    def finish(
        self, results: dict[str, Tensor], info: Optional[Tensor] = None, explain: Optional[Callable[[], None]] = None
    ) -> None:
        """With ``validate``: read the pending value checks, the finiteness of ``results`` and ``info``
        (an integer tensor of the op's own that must be 0 everywhere, e.g. a factorisation's; ``explain()``
        raises its message) in one synchronisation; on failure raise the first failing check's message."""
        if self.pending is None:
            return
        _finite(results, self.pending)
        if info is not None:
            self.pending.add(info.amax(), hi=0.0)
        if self.pending.passed():
            return
        q, k, v, g, beta, lam, parts = self.raw
        _raise_value_error(self.where, self.kind, q, k, v, g, beta, lam, "state", parts, step=True)
        check_results(self.where, self.dtype, dict(q=q, k=k, v=v), results)
        if explain is not None:
            explain()
        checks.fail(self.where, "expected inputs that pass the value checks, got a failure no detailed check reproduces")


def prepare_step(where: str, kind: OpKind, q, k, v, g, beta, lam, state: StateArg, validate: bool) -> Step:
    """Validate and prepare one decoding token of the op ``where``: structure now, values deferred to
    :meth:`Step.finish` (one synchronisation per step). ``state`` has one row per batch row.

    A key state is checked finite and symmetric here, not positive semi-definite: that takes a
    factorisation per head, as much as the Mesa step's own solve, so the step reads definiteness off
    its own solve instead (``info`` of :meth:`Step.finish`; see :func:`~mesanet.ops.mesa_step`)."""
    lam = lam if kind.lam else None
    batch, heads, dk, dv = checks.check_token_inputs(where, q, k, v, g, beta, lam, "B H", kind.gates_optional, kind.lam)
    parts = _state_tensors(where, kind, "state", state, "B")
    _check_state_shapes(where, kind, "state", parts, "B", batch, heads, dk, dv)
    device = q.device
    if any(t is not None and t.device != device for t in (k, v, g, beta, lam, *(parts or ()))):
        named = dict(q=q, k=k, v=v, g=g, beta=beta, lam=lam)
        named.update(zip(kind.names("state"), parts or ()))
        checks.check_same_device(where, named)
    pending = _value_checks(kind, q, k, v, g, beta, lam, "state", parts, step=True) if validate else None
    dtype = solver_dtype(q, k, v, g, beta, lam, *(parts or ()))
    if parts is not None:
        cast = tuple(p.to(dtype) for p in parts)
    elif g is not None and g.requires_grad and torch.is_grad_enabled():
        # keep g in the graph (its gradient is 0 from a zero state) so that autograd.grad over every input works
        sizes = {"Dk": dk, "Dv": dv}
        cast = tuple(q.new_zeros((batch, heads, dk, sizes[w]), dtype=dtype) for w in kind.widths)
    else:
        cast = None  # zeros: the ops skip the decay term
    return Step(
        where,
        kind,
        dtype,
        v.dtype,
        q.to(dtype),
        k.to(dtype),
        v.to(dtype),
        None if g is None else g.to(dtype),
        None if beta is None else beta.to(dtype),
        None if lam is None else lam.to(dtype),
        cast,
        pending,
        (q, k, v, g, beta, lam, parts),
    )
