"""The one-page chunkwise algorithm (``ops/mesa_minimal.py``) against the exact reference and the fast path."""

from __future__ import annotations

import pytest
import torch

from mesanet.ops import SolverSettings, mesa, mesa_reference
from mesanet.ops.mesa_minimal import mesa_minimal

from helpers import make_inputs, rel_err
from tolerances import F64_RTOL


@pytest.mark.parametrize(
    "batch, length, heads, dk, dv, chunk, gate",
    [(2, 48, 3, 5, 7, 16, "mid"), (1, 64, 2, 12, 12, 8, "none"), (2, 32, 1, 9, 4, 32, "strong")],
)
def test_minimal_matches_reference_and_fast_path(batch, length, heads, dk, dv, chunk, gate):
    inputs = make_inputs(batch, length, heads, dk, dv, gate=gate)
    ref, _ = mesa_reference(**inputs)
    minimal = mesa_minimal(**inputs, chunk_size=chunk, steps=2 * dk)
    fast, _, _ = mesa(**inputs, chunk_size=chunk, solver=SolverSettings(max_iter=3 * dk, tol=0.0))
    assert rel_err(minimal, ref) <= F64_RTOL
    assert rel_err(minimal, fast) <= F64_RTOL


def test_minimal_is_differentiable_through_its_steps():
    inputs = make_inputs(1, 16, 2, 6, 6, requires_grad=True)
    o = mesa_minimal(**inputs, chunk_size=8, steps=12)
    (dq,) = torch.autograd.grad(o.sum(), inputs["q"])
    ro, _ = mesa_reference(**inputs)
    (ref_dq,) = torch.autograd.grad(ro.sum(), inputs["q"])
    assert rel_err(dq, ref_dq) <= F64_RTOL
