"""torch.autograd.gradcheck on the hand-written implicit backward, through the whole chunk operator."""

from __future__ import annotations

import pytest
import torch

from mesanet.ops import SolverSettings, mesa

from helpers import make_inputs
from tolerances import GRADCHECK_ATOL, GRADCHECK_RTOL


@pytest.mark.parametrize(
    "gate, chunk, preconditioner",
    [("mid", 2, "chunk"), ("none", 4, "chunk"), ("strong", 3, "chunk"), ("mid", 2, "jacobi"), ("mid", 2, "none")],
)
def test_gradcheck_chunk_operator(gate, chunk, preconditioner):
    inputs = make_inputs(1, 5, 1, 3, 2, gate=gate, initial_state=True)
    h0, s0 = inputs.pop("initial_state")
    args = [inputs[n].requires_grad_() for n in ("q", "k", "v", "g", "beta", "lam")] + [h0.requires_grad_(), s0.requires_grad_()]

    def fn(q, k, v, g, beta, lam, a, s0):
        # H0 = sym(a): finite differences must stay on symmetric states, which is all H_kk can be.
        # validate=False: at g = 0 ("none") the finite-difference probe steps to g = +1e-6.
        o, (h, s), _ = mesa(
            q,
            k,
            v,
            g,
            beta,
            lam,
            initial_state=((a + a.mT) / 2, s0),
            output_final_state=True,
            solver=SolverSettings(max_iter=30, tol=0.0, preconditioner=preconditioner),
            chunk_size=chunk,
            validate=False,
        )
        return o, h, s

    assert torch.autograd.gradcheck(fn, args, atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


def test_gradcheck_packed_sequences():
    inputs = make_inputs(1, 6, 1, 3, 2, gate="mid")
    cu = torch.tensor([0, 2, 6])
    args = [inputs[n].requires_grad_() for n in ("q", "k", "v", "g", "beta", "lam")]

    def fn(*xs):
        return mesa(*xs, cu_seqlens=cu, output_final_state=True, solver=SolverSettings(max_iter=30, tol=0.0), chunk_size=3)[:2]

    assert torch.autograd.gradcheck(lambda *xs: (fn(*xs)[0], *fn(*xs)[1]), args, atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)
