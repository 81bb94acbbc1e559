"""The original Mesa layer (von Oswald et al. 2023): recursive least squares by Sherman-Morrison.

The inverse ``R_t = (H_t + R_0^{-1})^{-1}`` is carried directly (``docs/design.md``, "The 2023 Mesa layer"). Here
``R_0 = diag(lam)^{-1}``, so with no forgetting (``g = 0``) it equals :func:`mesanet.ops.mesa`
exactly; the 2023 paper writes ``R_0 = lambda_2023 I``, i.e. ``lambda_2023 = 1 / lam``.

With forgetting the recursion is ``R_t = P - beta P k k^T P / (1 + beta k^T P k)`` with
``P = R_{t-1} / gamma_t``: the inverse is divided by ``gamma`` and blows up for small ``gamma``,
and the regulariser itself is forgotten (``R_t^{-1} = zeta_t Lambda + H_t``). That instability
is why the chunkwise CG layer exists; this module keeps the old layer as a reference and baseline.
Sequential by nature (a Python loop over tokens); differentiable by autograd.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .inputs import SHERMAN_MORRISON, prepare_sequences
from .numerics import without_autocast
from .results import MesaOutput


@without_autocast
def mesa_sherman_morrison(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    lam: Tensor,
    *,
    initial_state: Optional[Tuple[Tensor, Tensor]] = None,
    output_final_state: bool = False,
    validate: bool = True,
) -> MesaOutput:
    """Shapes as :func:`mesanet.ops.mesa`; the state is ``(R [B, H, Dk, Dk], S_kv [B, H, Dk, Dv])``
    (``R`` the inverse regularised key covariance, ``diag(1 / lam)`` when omitted; checked symmetric
    positive semi-definite like a key state). ``validate`` as in :func:`mesanet.ops.mesa` (shapes, sizes
    and devices are always checked).

    Output ``o_t = S_t^T R_t q_t`` in ``v.dtype``; the recursion runs in float32 or float64.
    """
    seq = prepare_sequences("mesa_sherman_morrison", SHERMAN_MORRISON, q, k, v, g, beta, lam, initial_state, validate=validate)
    q, k, v, g, beta, lam = seq.q, seq.k, seq.v, seq.g, seq.beta, seq.lam
    if seq.state is None:
        r = torch.diag_embed(1.0 / lam).expand(seq.batch, seq.heads, seq.dk, seq.dk)  # R_0 = Lambda^{-1}
        s = q.new_zeros((seq.batch, seq.heads, seq.dk, seq.dv))
    else:
        r, s = seq.state
    outputs, denominators = [], []
    for t in range(seq.length):
        gamma = g[:, t].exp()[..., None, None]  # [B, H, 1, 1]
        b = beta[:, t][..., None, None]
        k_t = k[:, t]  # [B, H, Dk]
        p = r / gamma
        pk = torch.einsum("bhij,bhj->bhi", p, k_t)  # P k (P symmetric)  [B, H, Dk]
        denom = 1.0 + beta[:, t] * torch.linalg.vecdot(k_t, pk)  # [B, H]
        denominators.append(denom)
        r = p - (b / denom[..., None, None]) * pk.unsqueeze(-1) * pk.unsqueeze(-2)
        s = gamma * s + b * k_t.unsqueeze(-1) * v[:, t].unsqueeze(-2)
        x = torch.einsum("bhij,bhj->bhi", r, q[:, t])
        outputs.append(torch.einsum("bhkv,bhk->bhv", s, x))
    o = torch.stack(outputs, dim=1)
    final_state = (r, s) if output_final_state else None
    # an overflowing denominator silently drops the update (beta / inf = 0): check it with the results
    seq.check_results(
        output=o, **{"denominator 1 + beta k^T P k": torch.stack(denominators), "final state (R)": r, "final state (S_kv)": s}
    )
    return MesaOutput(o.to(seq.out_dtype), final_state, None)
