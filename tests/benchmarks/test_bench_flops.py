"""The FLOP model of benchmarks/flops.py against an independent count: FlopCounterMode around one forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.flops import forward_flops, forward_flops_per_token_head
from mesanet.ops import SolverSettings, mesa


def _baddbmm_inplace(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode counts ``baddbmm`` but has no entry for the in-place ``baddbmm_`` that the
    operator's no-grad matvec uses; count it like the out-of-place op (2 b m k n)."""
    b, m, k = a_shape
    return 2 * b * m * k * b_shape[-1]


def _inputs(batch: int, length: int, heads: int, dk: int, dv: int):
    gen = torch.Generator().manual_seed(0)
    rows = (batch, length, heads)
    return dict(
        q=F.normalize(torch.randn(*rows, dk, generator=gen), dim=-1),
        k=F.normalize(torch.randn(*rows, dk, generator=gen), dim=-1),
        v=torch.randn(*rows, dv, generator=gen),
        g=torch.log(0.8 + 0.19 * torch.rand(*rows, generator=gen)),
        beta=torch.rand(*rows, generator=gen),
        lam=torch.ones(heads, dk),
    )


# blocks of the refreshed preconditioners: the whole chunk, a divisor of it, and one that pads the last block
SETTINGS = [("none", None), ("jacobi", None), ("chunk", None), ("chunk", 4), ("chunk", 5)]
SETTINGS += [("chunk-keys", None), ("chunk-keys", 4), ("chunk-keys", 5)]


@pytest.mark.parametrize("preconditioner, block", SETTINGS)
@pytest.mark.parametrize("steps", [0, 4])
def test_flop_model_matches_flop_counter(preconditioner, block, steps):
    # T = 100 is not a multiple of C = 16: the padded tokens count; dv != dk; tol = 0 and a few steps,
    # so every system runs all of them (the residual floor is far away)
    batch, length, heads, dk, dv, chunk = 2, 100, 2, 16, 8, 16
    solver = SolverSettings(max_iter=steps, tol=0.0, preconditioner=preconditioner, precondition_every=block)
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.baddbmm_: _baddbmm_inplace})
    with torch.no_grad(), counter:
        out = mesa(**_inputs(batch, length, heads, dk, dv), solver=solver, chunk_size=chunk, return_stats=True)
    assert out.stats.max_iterations == steps
    expected = forward_flops(batch, heads, length, dk, dv, chunk, steps, preconditioner, block)
    assert expected == counter.get_total_flops()


def test_flop_model_per_token_at_paper_size():
    """d = dv = C = 64, up to 30 steps, no preconditioner, one chunk: the model per token against FlopCounterMode
    (with s = the steps the loop ran: at this size CG reaches its residual floor before 30)."""
    length = dk = chunk = 64
    steps = 30
    solver = SolverSettings(max_iter=steps, tol=0.0, preconditioner="none")
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.baddbmm_: _baddbmm_inplace})
    with torch.no_grad(), counter:
        out = mesa(**_inputs(1, length, 1, dk, dk), solver=solver, chunk_size=chunk, return_stats=True)
    ran = out.stats.max_iterations
    assert 1 <= ran <= steps
    assert forward_flops_per_token_head(dk, dk, chunk, ran) * length == counter.get_total_flops()
    with pytest.raises(ValueError):
        forward_flops_per_token_head(64, 64, 64, 30, "ilu")
