"""Validation at the public boundary of the ops: every failure is a ``ValueError`` that names what
was expected and what arrived."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .numerics import STATE_SYMMETRY_RTOL


def fail(where: str, message: str) -> None:
    raise ValueError(f"{where}: {message}")


def shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_tensor(where: str, name: str, x: object, dims: str) -> Tensor:
    """``x`` is a floating tensor with one axis per letter group of ``dims`` (e.g. ``"B T H Dk"``)."""
    axes = dims.split()
    if not isinstance(x, Tensor):
        fail(where, f"expected {name} to be a torch.Tensor of shape [{', '.join(axes)}], got {type(x).__name__}")
    if x.dim() != len(axes):
        fail(where, f"expected {name} of rank {len(axes)} [{', '.join(axes)}], got rank {x.dim()} with shape {shape_str(x.shape)}")
    if not x.is_floating_point():
        fail(where, f"expected {name} to be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_shape(where: str, name: str, x: Tensor, expected: Sequence[int], dims: str) -> None:
    if tuple(x.shape) != tuple(expected):
        fail(where, f"expected {name} of shape [{', '.join(dims.split())}] = {shape_str(expected)}, got {shape_str(x.shape)}")


def check_same_device(where: str, named: dict[str, Tensor | None]) -> None:
    devices = {name: t.device for name, t in named.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        fail(where, f"expected all tensors on one device, got {listing}")


def check_finite(where: str, named: dict[str, Tensor | None]) -> None:
    for name, t in named.items():
        if t is not None and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            fail(where, f"expected finite values in {name}, got {bad} non-finite entr{'y' if bad == 1 else 'ies'} (NaN or inf)")


def check_gates(where: str, g: Tensor, beta: Tensor) -> None:
    g, beta = g.detach(), beta.detach()
    if bool((g > 0).any()):
        fail(where, f"expected g (log forget gate, log gamma) <= 0, got max {float(g.max()):.4g}")
    if bool((beta < 0).any()):
        fail(where, f"expected beta (input gate) >= 0 so that H stays positive semi-definite, got min {float(beta.min()):.4g}")


def check_lam(where: str, lam: Tensor, heads: int, dk: int) -> None:
    check_shape(where, "lam", lam, (heads, dk), "H Dk")
    lam = lam.detach()
    if bool((lam <= 0).any()):
        fail(where, f"expected lam > 0 (the ridge regulariser makes H + diag(lam) positive definite), got min {float(lam.min()):.4g}")


def check_key_state(where: str, name: str, h: Tensor) -> None:
    """A key state must be symmetric: CG solves the wrong system otherwise."""
    h = h.detach()
    scale = float(h.abs().max()) if h.numel() else 0.0
    asym = float((h - h.mT).abs().max()) if h.numel() else 0.0
    if asym > STATE_SYMMETRY_RTOL * scale:
        fail(where, f"expected {name} to be symmetric (a key covariance), got max|H - H^T| = {asym:.3g} with max|H| = {scale:.3g}")


def check_solver_options(where: str, max_iter: object, tol: object, chunk_size: object | None = None) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        fail(where, f"expected max_iter to be an integer >= 0, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        fail(where, f"expected tol to be a finite number >= 0, got {tol!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        fail(where, f"expected chunk_size to be a positive integer, got {chunk_size!r}")


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


def check_sequence_inputs(where, q, k, v, g, beta, lam, initial_state) -> tuple[int, int, int, int, int]:
    """Shapes, ranks and dtypes of ``q, k [B, T, H, Dk]``, ``v [B, T, H, Dv]``, ``g, beta [B, T, H]``, ``lam [H, Dk]``."""
    q = check_tensor(where, "q", q, "B T H Dk")
    batch, length, heads, dk = q.shape
    check_shape(where, "k", check_tensor(where, "k", k, "B T H Dk"), q.shape, "B T H Dk")
    v = check_tensor(where, "v", v, "B T H Dv")
    dv = v.shape[-1]
    check_shape(where, "v", v, (batch, length, heads, dv), "B T H Dv")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        fail(where, f"expected q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, gate in (("g", g), ("beta", beta)):
        check_shape(where, name, check_tensor(where, name, gate, "B T H"), (batch, length, heads), "B T H")
    check_shape(where, "lam", check_tensor(where, "lam", lam, "H Dk"), (heads, dk), "H Dk")
    if length < 1 or dk < 1 or dv < 1:
        fail(where, f"expected T, Dk, Dv >= 1, got T = {length}, Dk = {dk}, Dv = {dv}")
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            fail(where, f"expected initial_state = (H_kk, S_kv), got {type(initial_state).__name__}")
        check_tensor(where, "initial_state[0] (H_kk)", initial_state[0], "N H Dk Dk")
        check_tensor(where, "initial_state[1] (S_kv)", initial_state[1], "N H Dk Dv")
    return batch, length, heads, dk, dv


# --- Baseline recurrences (GLA, DeltaNet): one state ``S [N, H, Dk, Dv]``, optional gates. ---


def check_chunk_size(where: str, chunk_size: object) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        fail(where, f"expected chunk_size to be a positive integer, got {chunk_size!r}")


def check_log_decay(where: str, g: Tensor | None) -> None:
    """``g = log gamma <= 0``: a forget gate above 1 makes the recurrence (and ``exp`` of the chunk-local
    cumulative decay) grow without bound."""
    if g is not None and bool((g > 0).any()):
        fail(where, f"expected g (log forget gate, log gamma) <= 0, got max {float(g.max()):.4g}")


def check_recurrent_inputs(where, q, k, v, g, beta) -> tuple[int, int, int, int, int]:
    """``q, k [B, T, H, Dk]``, ``v [B, T, H, Dv]``, ``g, beta [B, T, H]`` (either may be ``None``).

    Returns ``(B, T, H, Dk, Dv)``.
    """
    q = check_tensor(where, "q", q, "B T H Dk")
    batch, length, heads, dk = q.shape
    check_shape(where, "k", check_tensor(where, "k", k, "B T H Dk"), q.shape, "B T H Dk")
    v = check_tensor(where, "v", v, "B T H Dv")
    dv = v.shape[-1]
    check_shape(where, "v", v, (batch, length, heads, dv), "B T H Dv")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        fail(where, f"expected q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, gate in (("g", g), ("beta", beta)):
        if gate is not None:
            check_shape(where, name, check_tensor(where, name, gate, "B T H"), (batch, length, heads), "B T H")
    if length < 1 or dk < 1 or dv < 1:
        fail(where, f"expected T, Dk, Dv >= 1, got T = {length}, Dk = {dk}, Dv = {dv}")
    return batch, length, heads, dk, dv


def check_recurrent_step_inputs(where, q, k, v, g, beta, state) -> tuple[int, int, int, int]:
    """``q, k [B, H, Dk]``, ``v [B, H, Dv]``, ``g, beta [B, H]`` (either may be ``None``), ``state [B, H, Dk, Dv]``
    (may be ``None``). Returns ``(B, H, Dk, Dv)``."""
    q = check_tensor(where, "q", q, "B H Dk")
    batch, heads, dk = q.shape
    check_shape(where, "k", check_tensor(where, "k", k, "B H Dk"), q.shape, "B H Dk")
    v = check_tensor(where, "v", v, "B H Dv")
    dv = v.shape[-1]
    check_shape(where, "v", v, (batch, heads, dv), "B H Dv")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        fail(where, f"expected q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, gate in (("g", g), ("beta", beta)):
        if gate is not None:
            check_shape(where, name, check_tensor(where, name, gate, "B H"), (batch, heads), "B H")
    if state is not None:
        check_shape(where, "state", check_tensor(where, "state", state, "B H Dk Dv"), (batch, heads, dk, dv), "B H Dk Dv")
    return batch, heads, dk, dv
