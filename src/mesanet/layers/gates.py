"""The gates of the recurrent token mixers and their initialisation (``docs/design.md``, "The layer (MesaNet)"):
``beta = sigmoid(.)``, ``log gamma`` with the paper's cap, the forget-gate bias spread over heads, and the
no-weight-decay tag the gate biases carry. The parameterisation itself: :mod:`.recurrent_mixer`."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Upper bound of the forget gate at full input strength (paper App. G.5):
#: ``gamma <- gamma * (1 - (1 - GAMMA_CAP) * beta^2)``.
GAMMA_CAP = 0.9975

#: Width of the causal depthwise short convolution on q and k (paper App. E).
SHORT_CONV_WIDTH = 4

#: Range of the initial forget gates across heads (``1 - gamma`` log-spaced): time scales 10..1000 tokens.
FORGET_INIT_RANGE = (0.9, 0.999)

#: Initial input-gate bias: ``beta = sigmoid(0) = 0.5``.
INPUT_GATE_BIAS_INIT = 0.0


def mark_no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    """Tag ``param`` so that the trainer excludes it from weight decay (``param._no_weight_decay = True``)."""
    param._no_weight_decay = True
    return param


def gates(
    beta_logits: Optional[Tensor],
    gamma_logits: Optional[Tensor],
    gamma_cap: Optional[float] = GAMMA_CAP,
    beta_max: float = 1.0,
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """``(beta, g)`` from gate logits; ``None`` logits mean "no such gate" (``beta = 1`` / ``g = 0``),
    returned as ``None``.

    ``beta = beta_max * sigmoid(beta_logits)``; ``g = log gamma = logsigmoid(gamma_logits) + log1p(-(1 - cap) beta^2)``,
    computed in log space so that it is finite and ``<= 0`` for every finite logit (no ``log(sigmoid)``
    underflow; ``beta <= 2`` keeps ``(1 - cap) beta^2 < 1``). Without an input gate the cap uses ``beta = 1``.
    ``gamma_cap = None`` disables the cap.
    """
    beta = torch.sigmoid(beta_logits) if beta_logits is not None else None
    if beta is not None and beta_max != 1.0:
        beta = beta * beta_max
    if gamma_logits is None:
        return beta, None
    g = F.logsigmoid(gamma_logits)
    if gamma_cap is not None and gamma_cap < 1.0:
        if beta is None:
            g = g + math.log1p(-(1.0 - gamma_cap))
        else:
            g = g + torch.log1p(-(1.0 - gamma_cap) * beta.square())
    return beta, g


def forget_gate_bias(num_heads: int, gamma_range: tuple[float, float] = FORGET_INIT_RANGE) -> Tensor:
    """``logit(gamma_h)`` per head with ``1 - gamma_h`` log-spaced from ``1 - gamma_range[0]`` to
    ``1 - gamma_range[1]`` (one head: their geometric mean). float64 ``[H]``."""
    lo, hi = gamma_range
    if not (0.0 < lo <= hi < 1.0):
        raise ValueError(f"expected forget_init_range (lo, hi) with 0 < lo <= hi < 1, got {gamma_range!r}")
    a, b = math.log(1.0 - lo), math.log(1.0 - hi)
    if num_heads == 1:
        log_one_minus = torch.tensor([(a + b) / 2], dtype=torch.float64)
    else:
        log_one_minus = torch.linspace(a, b, num_heads, dtype=torch.float64)
    gamma = 1.0 - log_one_minus.exp()
    return gamma.log() - (-gamma).log1p()  # logit(gamma)
