"""The single Mesa layer's ridge construction and the ridge-equivalent ``lam`` of a per-position loss curve.

Two diagnostics of the single-layer target (README "Mesa-optimization toolkit": a single Mesa layer within 2 %
of tuned ridge at t = 50):

* :func:`set_ridge_construction` writes into a constructed-token :class:`~mesanet.mesaopt.models.SequenceModel`
  with one mesa-family layer the weights under which it computes the ridge predictor of
  :func:`~mesanet.mesaopt.analysis.compressed.ridge_prediction` exactly: head 0 reads the key from the
  ``s_{t-1}`` slot and the query and value from the ``s_t`` slot and writes into the prediction slot; every
  other weight is zero and the layer's ``lam`` is the ridge ``lam`` (regulariser ``I / lam``). Its loss
  equals the ridge loss (tests), so the layer and its solver can reach the target; a trained layer that does
  not is limited by its optimisation.
* :func:`ridge_equivalent_lambda` finds the ridge ``lam`` whose per-position loss curve is closest (in log
  space, every position weighted alike) to a model's curve: a trained single layer behaves like ridge with
  an effective regulariser ``I / lam_eff`` (``lam_eff = lam * key scale^2``), and ridge's own loss at
  ``lam_eff`` tells how much of the gap to tuned ridge that regulariser explains.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..layers.regression_mesa import RegressionMesa
from ..models import SequenceModel
from .compressed import ridge_loss

__all__ = ["set_ridge_construction", "log_golden_search", "ridge_equivalent_lambda"]


@torch.no_grad()
def set_ridge_construction(model: SequenceModel, lam: float) -> SequenceModel:
    """Set ``model`` (one mesa-family layer, constructed tokens ``[0, s_t, s_{t-1}]`` or ``[0, s_t, s_t,
    s_{t-1}]``, no embeddings) to the ridge construction with regulariser ``I / lam``; returns it.

    ``ValueError`` for any other model (more layers, embeddings, a forget gate, a key size below ``n_s``).
    """
    if not isinstance(model, SequenceModel):
        raise ValueError(f"set_ridge_construction: expected a SequenceModel, got {type(model).__name__}")
    cfg = model.config
    n = cfg.output_dim
    if len(cfg.layers) != 1 or cfg.layers[0] not in ("mesa", "sherman_morrison") or cfg.embed_dim is not None:
        raise ValueError(
            "set_ridge_construction: expected one 'mesa' or 'sherman_morrison' layer on constructed tokens without "
            f"embeddings, got layers={cfg.layers}, embed_dim={cfg.embed_dim}"
        )
    if cfg.input_dim not in (3 * n, 4 * n) or cfg.key_size < n or cfg.qk_norm:
        raise ValueError(
            f"set_ridge_construction: expected input_dim 3*{n} or 4*{n}, key_size >= {n} and no qk_norm, got "
            f"input_dim={cfg.input_dim}, key_size={cfg.key_size}, qk_norm={cfg.qk_norm}"
        )
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
        raise ValueError(f"set_ridge_construction: lam expected a finite float > 0, got {lam!r}")
    mixer = model.blocks[0].mixer
    assert isinstance(mixer, RegressionMesa)
    eye = torch.eye(n, dtype=mixer.w_q.dtype, device=mixer.w_q.device)
    prev = slice(cfg.input_dim - n, cfg.input_dim)  # the s_{t-1} slot is the last one in both layouts
    for p in (mixer.w_q, mixer.w_k, mixer.w_v, mixer.proj):
        p.zero_()
    mixer.w_k[0, :n, prev] = eye
    mixer.w_q[0, :n, n : 2 * n] = eye
    mixer.w_v[0, :n, n : 2 * n] = eye
    mixer.proj[0, :n, :n] = eye
    mixer.log_lam.fill_(math.log(lam))
    return model


def log_golden_search(
    f: Callable[[float], float], log10_min: float, log10_max: float, grid: int, iters: int
) -> tuple[float, float]:
    """``(x, f(x))`` minimising ``f`` over ``[log10_min, log10_max]``: a grid of ``grid`` points refined by
    ``iters`` golden-section steps between the best point's neighbours (the better of the refined midpoint and
    the best grid point is returned)."""
    if not (math.isfinite(log10_min) and math.isfinite(log10_max) and log10_min < log10_max) or grid < 3:
        raise ValueError(f"expected log10_min < log10_max and grid >= 3, got {log10_min}, {log10_max}, {grid}")
    xs = [log10_min + (log10_max - log10_min) * i / (grid - 1) for i in range(grid)]
    fs = [f(x) for x in xs]
    best = min(range(grid), key=fs.__getitem__)
    lo, hi = xs[max(best - 1, 0)], xs[min(best + 1, grid - 1)]
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(iters):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    mid = (lo + hi) / 2.0
    fx, x = min((f(mid), mid), (fs[best], xs[best]))
    return x, fx


def ridge_equivalent_lambda(
    curve: Tensor, states: Tensor, log10_min: float = -2.0, log10_max: float = 5.0, grid: int = 29, iters: int = 20
) -> tuple[float, float]:
    """``(lam, rms_log_gap)``: the ``lam`` minimising ``mean_t (log curve_t - log ridge_t(lam))^2`` and the root of
    that minimum; ``curve [T - 1]`` is a model's per-position loss on ``states [B, T, n]`` (the same sequences;
    the ridge curve is :func:`~mesanet.mesaopt.analysis.compressed.ridge_loss`), searched by
    :func:`log_golden_search` over ``[10^log10_min, 10^log10_max]``."""
    if states.dim() != 3 or curve.dim() != 1 or curve.shape[0] != states.shape[1] - 1:
        raise ValueError(
            f"ridge_equivalent_lambda: expected curve [T - 1] and states [B, T, n], got {tuple(curve.shape)} and "
            f"{tuple(states.shape)}"
        )
    s, target = states.double(), curve.double().clamp_min(1e-300).log()

    def gap(x: float) -> float:
        return float((ridge_loss(s, 10.0**x).clamp_min(1e-300).log() - target).square().mean())

    x, f = log_golden_search(gap, log10_min, log10_max, grid, iters)
    return 10.0**x, math.sqrt(f)
