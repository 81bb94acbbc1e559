"""Shared builders for the tests: seeded inputs in the operator layout and error metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Forget-gate ranges (gamma = exp(g)) the operator issue asks every comparison to cover.
GATE_RANGES = {"none": (1.0, 1.0), "mid": (0.8, 0.99), "strong": (0.01, 0.1)}


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """Norm-wise relative error ||a - e|| / ||e|| (absolute error when ||e|| = 0)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = float(expected.norm())
    diff = float((actual - expected).norm())
    return diff / scale if scale > 0 else diff


def make_inputs(
    batch: int,
    length: int,
    heads: int,
    dk: int,
    dv: int,
    *,
    gate: str = "mid",
    dtype=torch.float64,
    seed: int = 0,
    initial_state: bool = False,
    requires_grad: bool = False,
    num_states: int | None = None,
) -> dict:
    """Realistic Mesa inputs: unit-norm q and k, gates in ``GATE_RANGES[gate]``, beta in [0, 1],
    lam in [0.25, 1.25] (the paper's lower bound), optional PSD initial key state."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = GATE_RANGES[gate]
    rand = lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64)
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    out = dict(
        q=F.normalize(randn(batch, length, heads, dk), dim=-1),
        k=F.normalize(randn(batch, length, heads, dk), dim=-1),
        v=randn(batch, length, heads, dv),
        g=torch.log(lo + (hi - lo) * rand(batch, length, heads)),
        beta=rand(batch, length, heads),
        lam=0.25 + rand(heads, dk),
    )
    if initial_state:
        n = batch if num_states is None else num_states
        a = randn(n, heads, dk, dk)
        out["initial_state"] = (a @ a.mT / dk, randn(n, heads, dk, dv))
    for name, value in list(out.items()):
        if name == "initial_state":
            out[name] = tuple(t.to(dtype).requires_grad_(requires_grad) for t in value)
        else:
            out[name] = value.to(dtype).requires_grad_(requires_grad)
    return out


def leaves(inputs: dict) -> list[Tensor]:
    """The differentiable inputs in a fixed order: q, k, v, g, beta, lam (, H0, S0)."""
    names = ["q", "k", "v", "g", "beta", "lam"]
    tensors = [inputs[n] for n in names]
    if "initial_state" in inputs:
        tensors += list(inputs["initial_state"])
    return tensors


LEAF_NAMES = ["q", "k", "v", "g", "beta", "lam", "H0", "S0"]
