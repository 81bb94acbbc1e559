"""The q/k/v/gate parameterisation shared by every recurrent token mixer (``docs/design.md``, "The layer (MesaNet)").

:class:`RecurrentMixer` is the layer around a recurrence: subclasses (Mesa, GLA / Mamba2-style,
(Gated) DeltaNet, the Sherman-Morrison Mesa layer) supply only the core operator, in a parallel
form over ``T`` tokens (optional initial state, optional ``cu_seqlens``) and a one-token step.

Per token ``x_t [D]`` and head ``h``:

* ``q, k = L2norm(SiLU(conv4(W_q x))), L2norm(SiLU(conv4(W_k x)))`` (causal depthwise short
  convolution of width 4 on q and k only; the L2 norm in float32), ``v = W_v x`` (no conv, no norm);
* ``beta = sigmoid(W_b x + b_b)`` (input gate; ``use_input_gate=False`` -> ``beta = 1``);
* ``gamma = sigmoid(W_a x + b_a) * (1 - (1 - gamma_cap) beta^2)`` (forget gate with the paper's cap,
  ``gamma_cap = 0.9975``), carried as ``g = log gamma = logsigmoid(.) + log1p(-(1 - gamma_cap) beta^2)``,
  finite for any finite logit; ``use_forget_gate=False`` -> ``g = 0``;
* ``y = W_o [RMSNorm_Dv(o_{t,h})]_h`` with the per-head RMSNorm (one weight of size ``Dv`` shared by
  the heads, as in fla; a per-head gain would be absorbed by ``W_o`` anyway).

This is the MesaNet paper's parameterisation, which it applies to every RNN baseline alike (App. E/G.2).
Options for a mixer in its own paper's form (off by default): ``beta_max`` (``beta = beta_max sigmoid(.)``,
2 for DeltaNet's negative-eigenvalue variant), ``use_output_gate`` (``o <- RMSNorm(o) * SiLU(W_g x)``, Gated
DeltaNet / GLA), ``conv_on_v`` (``v = SiLU(conv4(W_v x))``, Gated DeltaNet / DeltaNet convolve q, k and v).

No ``1/sqrt(Dk)`` query scale: the per-head RMSNorm removes any global scale of ``o``.

Initialisation ("timescale spread", neither fla's nor a documented paper choice; the paper gives none):

* ``W_q, W_k, W_v``, ``W_a``, ``W_b``: normal, fan-in (std ``1/sqrt(D)``) as the paper's backbone;
  ``W_o``: std ``output_init_scale / sqrt(H Dv)`` (pass ``sqrt(2 / N)`` for the paper's depth scaling).
* ``b_a`` (forget-gate bias): per head, ``gamma_h = sigmoid(b_a[h])`` with ``1 - gamma_h`` log-spaced over
  ``forget_init_range = (0.9, 0.999)``, i.e. memory time scales ``1 / (1 - gamma)`` from 10 to 1000
  tokens across heads (Griffin/Mamba-style spread; fla zeroes Linear biases, which gives gamma = 0.5).
* ``b_b`` (input-gate bias): 0, so ``beta`` starts around 0.5 (as fla).
* Short-conv kernels as :class:`ShortConvolution` (``nn.Conv1d``'s default), norm weights 1.

Weight-decay convention: a parameter carrying the attribute ``_no_weight_decay = True`` must be
excluded from weight decay by the trainer (:func:`mark_no_weight_decay`; the mixers re-tag their copies
after ``copy.deepcopy``, which drops parameter attributes). The mixers mark the gate
biases ``b_a``, ``b_b`` (decay would pull every gamma towards 0.5 and erase the time scales) and
Mesa's ``lam_raw``. Norm gains are left to the trainer's own rule (e.g. "no decay on 1-D tensors").
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mesanet.utils.validation import check_int

from ..ops.numerics import DEFAULT_CHUNK_SIZE
from .base import RecurrentState, current_token_mask
from .gates import (
    FORGET_INIT_RANGE,
    GAMMA_CAP,
    INPUT_GATE_BIAS_INIT,
    SHORT_CONV_WIDTH,
    forget_gate_bias,
    gates,
    mark_no_weight_decay,
)
from .norms import RMS_NORM_EPS, RMSNorm
from .short_conv import ShortConvolution


class RecurrentMixer(nn.Module):
    """Base of the recurrent token mixers: ``y, state = mixer(x, state=None, attention_mask=None,
    position_ids=None, cu_seqlens=None, use_cache=False)`` (contract: :mod:`mesanet.layers.base`).

    Args:
        hidden_size: model width ``D``.
        num_heads: ``H``.
        head_dim: key (and query) head size ``Dk``.
        value_head_dim: ``Dv`` (default ``Dk``).
        use_input_gate: ``beta = sigmoid(W_b x + b_b)``; ``False``: ``beta = 1`` (Mamba2-style).
        use_forget_gate: ``gamma = sigmoid(W_a x + b_a)`` (capped); ``False``: ``gamma = 1``.
        gamma_cap: ``b_gamma`` of the cap (0.9975); ``None`` switches the cap off.
        conv_size: short-convolution width (4).
        forget_init_range: range of the initial forget gates across heads (see module docstring).
        chunk_size: chunk length of the parallel form.
        norm_eps: epsilon of the per-head RMSNorm.
        output_init_scale: multiplies the fan-in std of ``W_o``.
        beta_max: upper end of ``beta = beta_max * sigmoid(.)``, in ``(0, 2]`` (1; DeltaNet's "negative
            eigenvalues" variant uses 2, so that ``I - beta k k^T`` may reflect).
        use_output_gate: ``o <- RMSNorm(o) * SiLU(W_g x)`` per head before ``W_o`` (Gated DeltaNet's output gate).
        conv_on_v: ``v = SiLU(conv4(W_v x))`` as ``q`` and ``k`` (Gated DeltaNet convolves q, k and v);
            ``False``: ``v = W_v x``.
        validate_inputs: let the ops check values (finite, gate ranges, symmetric states) on every
            call; costs host syncs, so off by default (the layer builds valid gates by construction).

    States: :class:`RecurrentState` with ``conv = {"q": tail, "k": tail}`` (and ``"v"`` with ``conv_on_v``;
    ``[B, conv_size - 1, C]``
    in the activation dtype), ``recurrent`` = the subclass's tensors (float32, or float64 for float64
    modules), ``seen`` = tokens consumed (padding included).

    Paths: no state -> parallel form from zero states; ``state`` and ``T == 1`` -> the one-token step;
    ``state`` and ``T > 1`` -> parallel form from the state. A padded position (``attention_mask == 0``)
    gets ``beta = 0``, ``g = 0`` (states untouched), zeroed conv inputs and output 0.

    Unsupported combinations raise ``ValueError``: ``cu_seqlens`` with a state, with ``B > 1``, with a
    padding mask or with ``use_cache``.
    """

    #: number of tensors in ``RecurrentState.recurrent``
    num_recurrent_states: int = 1

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        *,
        value_head_dim: Optional[int] = None,
        use_input_gate: bool = True,
        use_forget_gate: bool = True,
        gamma_cap: Optional[float] = GAMMA_CAP,
        conv_size: int = SHORT_CONV_WIDTH,
        forget_init_range: tuple[float, float] = FORGET_INIT_RANGE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        norm_eps: float = RMS_NORM_EPS,
        output_init_scale: float = 1.0,
        beta_max: float = 1.0,
        use_output_gate: bool = False,
        conv_on_v: bool = False,
        validate_inputs: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        name = type(self).__name__
        self.hidden_size = check_int(f"{name}: hidden_size", hidden_size, minimum=1)
        self.num_heads = check_int(f"{name}: num_heads", num_heads, minimum=1)
        self.head_dim = check_int(f"{name}: head_dim", head_dim, minimum=1)
        self.value_head_dim = check_int(
            f"{name}: value_head_dim", head_dim if value_head_dim is None else value_head_dim, minimum=1
        )
        self.conv_size = check_int(f"{name}: conv_size", conv_size, minimum=1)
        self.chunk_size = check_int(f"{name}: chunk_size", chunk_size, minimum=1)
        if gamma_cap is not None and not (0.0 < float(gamma_cap) <= 1.0):
            raise ValueError(f"{name}: expected gamma_cap in (0, 1] or None, got {gamma_cap!r}")
        self.use_input_gate, self.use_forget_gate = bool(use_input_gate), bool(use_forget_gate)
        self.gamma_cap = None if gamma_cap is None else float(gamma_cap)
        self.forget_init_range = tuple(forget_init_range)
        forget_gate_bias(1, self.forget_init_range)  # validates the range now, not at reset time
        self.output_init_scale = float(output_init_scale)
        if not (isinstance(beta_max, (int, float)) and 0.0 < float(beta_max) <= 2.0):
            raise ValueError(f"{name}: expected beta_max in (0, 2], got {beta_max!r}")
        self.beta_max = float(beta_max)
        self.use_output_gate, self.conv_on_v = bool(use_output_gate), bool(conv_on_v)
        self.validate_inputs = bool(validate_inputs)

        factory = dict(device=device, dtype=dtype)
        h, dk, dv, d = self.num_heads, self.head_dim, self.value_head_dim, self.hidden_size
        self.q_proj = nn.Linear(d, h * dk, bias=False, **factory)
        self.k_proj = nn.Linear(d, h * dk, bias=False, **factory)
        self.v_proj = nn.Linear(d, h * dv, bias=False, **factory)
        self.q_conv = ShortConvolution(h * dk, self.conv_size, activation="silu", **factory)
        self.k_conv = ShortConvolution(h * dk, self.conv_size, activation="silu", **factory)
        self.v_conv = ShortConvolution(h * dv, self.conv_size, activation="silu", **factory) if self.conv_on_v else None
        self.g_proj = nn.Linear(d, h * dv, bias=False, **factory) if self.use_output_gate else None  # output gate
        self.a_proj = nn.Linear(d, h, bias=True, **factory) if self.use_forget_gate else None  # forget gate
        self.b_proj = nn.Linear(d, h, bias=True, **factory) if self.use_input_gate else None  # input gate
        for proj in (self.a_proj, self.b_proj):
            if proj is not None:
                mark_no_weight_decay(proj.bias)
        self.o_norm = RMSNorm(dv, eps=norm_eps, **factory)
        self.o_proj = nn.Linear(h * dv, d, bias=False, **factory)
        self._make_parameters(factory)
        # names of the tagged parameters, to re-tag copies: copy.deepcopy of an nn.Parameter drops its attributes
        self._no_weight_decay_names = tuple(n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False))
        self.reset_parameters()

    def __setstate__(self, state: dict) -> None:  # deepcopy / unpickling: restore the no-weight-decay tags
        super().__setstate__(state)
        for name in getattr(self, "_no_weight_decay_names", ()):
            mark_no_weight_decay(self.get_parameter(name))

    # --- hooks for subclasses -------------------------------------------------------------------

    def _make_parameters(self, factory: dict) -> None:
        """Create subclass parameters (called before :meth:`reset_parameters` in ``__init__``)."""

    def _parallel(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        g: Optional[Tensor],
        beta: Optional[Tensor],
        initial_state: Optional[tuple[Tensor, ...]],
        cu_seqlens: Optional[Tensor],
        output_final_state: bool,
    ) -> tuple[Tensor, Optional[tuple[Tensor, ...]]]:
        """``q, k [B, T, H, Dk]``, ``v [B, T, H, Dv]``, ``g, beta [B, T, H]`` or ``None`` (no gate)
        -> ``(o [B, T, H, Dv], final recurrent state tuple or None)``."""
        raise NotImplementedError

    def _step(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        g: Optional[Tensor],
        beta: Optional[Tensor],
        state: Optional[tuple[Tensor, ...]],
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One token: ``q, k [B, H, Dk]``, ``v [B, H, Dv]``, ``g, beta [B, H]`` or ``None``, state tuple or
        ``None`` (fresh) -> ``(o [B, H, Dv], new state tuple)``."""
        raise NotImplementedError

    # --- parameters -----------------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.hidden_size**-0.5
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.normal_(proj.weight, 0.0, std)
        nn.init.normal_(self.o_proj.weight, 0.0, self.output_init_scale * (self.num_heads * self.value_head_dim) ** -0.5)
        self.q_conv.reset_parameters()
        self.k_conv.reset_parameters()
        if self.v_conv is not None:
            self.v_conv.reset_parameters()
        if self.g_proj is not None:
            nn.init.normal_(self.g_proj.weight, 0.0, std)
        if self.a_proj is not None:
            nn.init.normal_(self.a_proj.weight, 0.0, std)
            self.a_proj.bias.copy_(forget_gate_bias(self.num_heads, self.forget_init_range))
        if self.b_proj is not None:
            nn.init.normal_(self.b_proj.weight, 0.0, std)
            nn.init.constant_(self.b_proj.bias, INPUT_GATE_BIAS_INIT)
        self.o_norm.reset_parameters()

    def gates(self, x: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """``(beta, g)`` ``[B, T, H]`` in at least float32 for ``x [B, T, D]``; ``None`` for an absent gate."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        beta_logits = self.b_proj(x).to(dtype) if self.b_proj is not None else None
        gamma_logits = self.a_proj(x).to(dtype) if self.a_proj is not None else None
        return gates(beta_logits, gamma_logits, self.gamma_cap, self.beta_max)

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"value_head_dim={self.value_head_dim}, use_input_gate={self.use_input_gate}, "
            f"use_forget_gate={self.use_forget_gate}, gamma_cap={self.gamma_cap}, beta_max={self.beta_max}, "
            f"use_output_gate={self.use_output_gate}, conv_on_v={self.conv_on_v}, chunk_size={self.chunk_size}"
        )

    # --- forward --------------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        raise ValueError(f"{type(self).__name__}: {message}")

    def _check_call(self, x, state, cu_seqlens, use_cache) -> None:
        if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point():
            self._fail(
                f"expected x to be a floating tensor [B, T, D], got "
                f"{type(x).__name__ if not isinstance(x, Tensor) else f'{x.dtype} of shape {list(x.shape)}'}"
            )
        batch, length, width = x.shape
        if width != self.hidden_size:
            self._fail(f"expected x [B, T, D] with D = hidden_size = {self.hidden_size}, got {list(x.shape)}")
        if length < 1:
            self._fail(f"expected at least one token, got x of shape {list(x.shape)}")
        if state is not None:
            if not isinstance(state, RecurrentState):
                self._fail(f"expected state to be a RecurrentState or None, got {type(state).__name__}")
            if state.recurrent and len(state.recurrent) != self.num_recurrent_states:
                self._fail(f"expected {self.num_recurrent_states} recurrent state tensor(s), got {len(state.recurrent)}")
            for t in state.recurrent:
                if t.shape[0] != batch:
                    self._fail(f"expected recurrent states for batch size {batch}, got {list(t.shape)}")
            lags = self.conv_size - 1
            streams = [("q", self.num_heads * self.head_dim), ("k", self.num_heads * self.head_dim)]
            if self.conv_on_v:
                streams.append(("v", self.num_heads * self.value_head_dim))
            for stream, channels in streams:
                tail = state.conv.get(stream)
                if tail is not None and tuple(tail.shape) != (batch, lags, channels):
                    self._fail(f"expected conv tail {stream!r} of shape {[batch, lags, channels]}, got {list(tail.shape)}")
        if cu_seqlens is not None:
            if state is not None:
                self._fail("cu_seqlens cannot be combined with a state (packed sequences start fresh)")
            if batch != 1:
                self._fail(f"expected batch size 1 with cu_seqlens (sequences packed along T), got B = {batch}")
            if use_cache:
                self._fail("use_cache is not supported with cu_seqlens (a state has one row per batch row)")
            if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
                self._fail("expected cu_seqlens to be a 1-D int32/int64 tensor of offsets [N + 1]")
            offsets = cu_seqlens.tolist()
            if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != length or any(b <= a for a, b in zip(offsets, offsets[1:])):
                self._fail(f"expected cu_seqlens strictly increasing from 0 to T = {length}, got {offsets}")

    def forward(
        self,
        x: Tensor,
        state: Optional[RecurrentState] = None,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,  # recurrent mixers have no positions
        cu_seqlens: Optional[Tensor] = None,
        use_cache: bool = False,
    ) -> tuple[Tensor, Optional[RecurrentState]]:
        self._check_call(x, state, cu_seqlens, use_cache)
        batch, length, _ = x.shape
        mask = current_token_mask(attention_mask, length)  # bool [B, T] or None (no padding)
        if attention_mask is not None and attention_mask.shape[0] != batch:
            self._fail(f"expected attention_mask with batch size {batch}, got {list(attention_mask.shape)}")
        if mask is not None and cu_seqlens is not None:
            self._fail("a padding attention_mask cannot be combined with cu_seqlens (pack without padding)")
        h, dk, dv = self.num_heads, self.head_dim, self.value_head_dim
        compute = torch.promote_types(x.dtype, torch.float32)

        tails = state.conv if state is not None else {}
        q, q_tail = self.q_conv(self.q_proj(x), tail=tails.get("q"), mask=mask, cu_seqlens=cu_seqlens)
        k, k_tail = self.k_conv(self.k_proj(x), tail=tails.get("k"), mask=mask, cu_seqlens=cu_seqlens)
        q = F.normalize(q.to(compute).view(batch, length, h, dk), dim=-1)
        k = F.normalize(k.to(compute).view(batch, length, h, dk), dim=-1)
        tails_out = {"q": q_tail, "k": k_tail}
        v = self.v_proj(x)
        if self.v_conv is not None:
            v, tails_out["v"] = self.v_conv(v, tail=tails.get("v"), mask=mask, cu_seqlens=cu_seqlens)
        v = v.to(compute).view(batch, length, h, dv)
        beta, g = self.gates(x)
        if mask is not None:
            tokens = mask.unsqueeze(-1)  # [B, T, 1]
            beta = tokens.to(compute).expand(batch, length, h) if beta is None else torch.where(tokens, beta, 0.0)
            g = None if g is None else torch.where(tokens, g, 0.0)
            m = tokens.unsqueeze(-1).to(compute)  # [B, T, 1, 1]
            q, k, v = q * m, k * m, v * m

        recurrent = tuple(state.recurrent) if state is not None and state.recurrent else None
        # the ops run with autocast off themselves (mesanet.ops.numerics.without_autocast)
        if state is not None and length == 1:
            o, final = self._step(
                q[:, 0],
                k[:, 0],
                v[:, 0],
                None if g is None else g[:, 0],
                None if beta is None else beta[:, 0],
                recurrent,
            )
            o = o.unsqueeze(1)
        else:
            o, final = self._parallel(q, k, v, g, beta, recurrent, cu_seqlens, use_cache)
        if mask is not None:
            o = o * mask[..., None, None].to(o.dtype)
        o = self.o_norm(o)
        if self.g_proj is not None:
            o = o * F.silu(self.g_proj(x).to(o.dtype).view(batch, length, h, dv))
        y = self.o_proj(o.to(x.dtype).reshape(batch, length, h * dv))
        if not use_cache:
            return y, None
        seen = (state.seen if state is not None else 0) + length
        return y, RecurrentState(tails_out, tuple(final), seen)
