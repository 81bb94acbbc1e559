"""``mesa_step``, the one-token Mesa decoder: both solvers against a direct solve and the chunk form,
batches, gradients, its bad-input errors and the one-synchronisation validation."""

from __future__ import annotations

import re

import pytest
import torch

from mesanet.ops import INFERENCE, SolverSettings, checks, mesa, mesa_reference, mesa_step

from helpers import make_inputs, rel_err
from tolerances import DECODE_F32_RTOL, F32_RTOL, F64_EXACT_RTOL, GRADCHECK_ATOL, GRADCHECK_RTOL

TOKEN = ("q", "k", "v", "g", "beta")
CHOLESKY = INFERENCE  # decode="cholesky" is the default
CG = SolverSettings(max_iter=64, tol=0.0, decode="cg")  # far past CG's finite termination (Dk <= 16 here)


def token(inputs: dict, t: int) -> dict:
    return {n: inputs[n][:, t] for n in TOKEN}


def rolled_state(inputs: dict, steps: int):
    """The exact float64 states after ``steps`` tokens of ``inputs`` (from its initial state)."""
    state = inputs["initial_state"]
    for t in range(steps):
        _, state, _ = mesa_step(**token(inputs, t), lam=inputs["lam"], state=state)
    return state


def direct(q, k, v, g, beta, lam, state):
    """The step written out in float64 with ``torch.linalg.solve`` (LU, no shared code with either solver)."""
    h, s = state
    gamma = g.exp()[..., None, None]
    h = gamma * h + beta[..., None, None] * k.unsqueeze(-1) * k.unsqueeze(-2)
    s = gamma * s + beta[..., None, None] * k.unsqueeze(-1) * v.unsqueeze(-2)
    x = torch.linalg.solve(h + torch.diag_embed(lam), q.unsqueeze(-1))
    return (x.mT @ s).squeeze(-2), (h, s)


@pytest.mark.parametrize("gate", ["none", "mid", "strong"])
@pytest.mark.parametrize("solver", [CHOLESKY, CG], ids=["cholesky", "cg"])
def test_step_matches_direct_solve(solver, gate):
    inputs = make_inputs(2, 30, 2, 16, 8, gate=gate, initial_state=True)
    state = rolled_state(inputs, 29)
    tok = token(inputs, 29)
    expected, (eh, es) = direct(**tok, lam=inputs["lam"], state=state)

    o, (h, s), _ = mesa_step(**tok, lam=inputs["lam"], state=state, solver=solver)  # float64
    assert rel_err(o, expected) <= F64_EXACT_RTOL
    assert rel_err(h, eh) <= F64_EXACT_RTOL and rel_err(s, es) <= F64_EXACT_RTOL

    f32 = {n: t.float() for n, t in tok.items()}
    o32, (h32, _), _ = mesa_step(**f32, lam=inputs["lam"].float(), state=tuple(t.float() for t in state), solver=solver)
    assert o32.dtype == torch.float32 and h32.dtype == torch.float32
    assert rel_err(o32, expected) <= DECODE_F32_RTOL


def test_cholesky_and_cg_agree():
    inputs = make_inputs(3, 12, 2, 10, 6, initial_state=True)
    state = rolled_state(inputs, 11)
    tok = token(inputs, 11)
    o_chol, _, stats_chol = mesa_step(**tok, lam=inputs["lam"], state=state, return_stats=True)
    o_cg, _, stats_cg = mesa_step(**tok, lam=inputs["lam"], state=state, solver=CG, return_stats=True)
    assert rel_err(o_cg, o_chol) <= F64_EXACT_RTOL
    assert stats_chol.iterations.shape == (3, 2) and stats_chol.max_iterations == 0  # exact: no iterations
    assert 0 < stats_cg.max_iterations <= 10 + 1  # finite termination in ~Dk steps, frozen at the floor


@pytest.mark.parametrize("solver", [CHOLESKY, CG], ids=["cholesky", "cg"])
def test_decode_loop_equals_chunk_form(solver):
    """A float32 decode loop from a float32 initial state against the exact float64 sequence."""
    batch, length, heads, dk, dv = 2, 40, 2, 12, 7
    inputs = make_inputs(batch, length, heads, dk, dv, initial_state=True)
    ro, (rh, rs) = mesa_reference(**inputs)
    state, outs = tuple(t.float() for t in inputs["initial_state"]), []
    for t in range(length):
        o_t, state, _ = mesa_step(
            **{n: x.float() for n, x in token(inputs, t).items()}, lam=inputs["lam"].float(), state=state, solver=solver
        )
        outs.append(o_t)
    assert rel_err(torch.stack(outs, dim=1), ro) <= F32_RTOL
    assert rel_err(state[0], rh) <= F32_RTOL and rel_err(state[1], rs) <= F32_RTOL
    # and the float64 loop hands over exactly the chunk form's state
    o, (h, s), _ = mesa(**inputs, output_final_state=True, solver=SolverSettings(max_iter=3 * dk + 10, tol=0.0), chunk_size=16)
    state64 = rolled_state(inputs, length)
    assert rel_err(state64[0], h) <= F64_EXACT_RTOL and rel_err(state64[1], s) <= F64_EXACT_RTOL


@pytest.mark.parametrize("solver", [CHOLESKY, CG], ids=["cholesky", "cg"])
def test_batch_rows_are_independent(solver):
    inputs = make_inputs(4, 6, 3, 8, 5, initial_state=True)
    state = rolled_state(inputs, 5)
    tok = token(inputs, 5)
    o, (h, s), _ = mesa_step(**tok, lam=inputs["lam"], state=state, solver=solver)
    for b in range(4):
        row = {n: t[b : b + 1] for n, t in tok.items()}
        o_b, (h_b, s_b), _ = mesa_step(**row, lam=inputs["lam"], state=(state[0][b : b + 1], state[1][b : b + 1]), solver=solver)
        assert rel_err(o_b, o[b : b + 1]) <= F64_EXACT_RTOL
        assert rel_err(h_b, h[b : b + 1]) <= F64_EXACT_RTOL and rel_err(s_b, s[b : b + 1]) <= F64_EXACT_RTOL


def test_without_state_starts_from_zeros():
    inputs = make_inputs(2, 1, 2, 6, 4)
    tok = token(inputs, 0)
    zeros = (torch.zeros(2, 2, 6, 6, dtype=torch.float64), torch.zeros(2, 2, 6, 4, dtype=torch.float64))
    o, (h, s), _ = mesa_step(**tok, lam=inputs["lam"])
    oz, (hz, sz), _ = mesa_step(**tok, lam=inputs["lam"], state=zeros)
    assert rel_err(o, oz) <= F64_EXACT_RTOL and rel_err(h, hz) <= F64_EXACT_RTOL and rel_err(s, sz) <= F64_EXACT_RTOL


@pytest.mark.parametrize("decode", ["cholesky", "cg"])
def test_gradcheck_step(decode):
    """Batch 2 and two heads, so that the CG path's hand-written VJP sums ``d lam`` over the batch."""
    inputs = make_inputs(2, 1, 2, 3, 2, initial_state=True)
    h0, s0 = inputs.pop("initial_state")
    args = [inputs[n][:, 0].clone().requires_grad_() for n in TOKEN]
    args += [inputs["lam"].requires_grad_(), h0.clone().requires_grad_(), s0.requires_grad_()]
    solver = SolverSettings(max_iter=20, tol=0.0, decode=decode)

    def fn(q, k, v, g, beta, lam, a, s):
        # H0 = sym(a): the Cholesky solve reads one triangle, so finite differences must stay on
        # symmetric states (all a key state can be). validate=False: the probe may step g above 0.
        o, (h, s_new), _ = mesa_step(q, k, v, g, beta, lam, ((a + a.mT) / 2, s), solver=solver, validate=False)
        return o, h, s_new

    assert torch.autograd.gradcheck(fn, args, atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


def test_float32_gradients_match_float64():
    """Gradients of the float32 Cholesky path in every input and the state, against the float64 path."""
    inputs = make_inputs(2, 1, 2, 8, 5, initial_state=True, requires_grad=True)
    leaves = [inputs[n] for n in ("q", "k", "v", "g", "beta", "lam")] + list(inputs["initial_state"])
    weights = [
        torch.randn(2, 2, 5, dtype=torch.float64),
        torch.randn(2, 2, 8, 8, dtype=torch.float64),
        torch.randn(2, 2, 8, 5, dtype=torch.float64),
    ]

    def loss(dtype):
        cast = lambda t: t.to(dtype)  # noqa: E731
        o, (h, s), _ = mesa_step(
            **{n: cast(x[:, 0]) for n, x in inputs.items() if n in TOKEN},
            lam=cast(inputs["lam"]),
            state=tuple(cast(t) for t in inputs["initial_state"]),
        )
        return sum((out.double() * w).sum() for out, w in zip((o, h, s), weights))

    exact = torch.autograd.grad(loss(torch.float64), leaves)
    single = torch.autograd.grad(loss(torch.float32), leaves)
    for a, e in zip(single, exact):
        assert a.dtype == torch.float64 and rel_err(a, e) <= F32_RTOL


def test_validated_step_reads_its_checks_once(monkeypatch):
    """validate=True (the default) reads every value check in ONE synchronisation and builds no message."""
    reads = []
    passed = checks.ValueChecks.passed
    monkeypatch.setattr(checks.ValueChecks, "passed", lambda self: reads.append(1) or passed(self))
    monkeypatch.setattr(checks, "check_finite", lambda *a, **k: pytest.fail("detailed check ran on valid input"))
    inputs = make_inputs(2, 3, 2, 8, 4, dtype=torch.float32, initial_state=True)
    for solver in (CHOLESKY, CG):
        reads.clear()
        mesa_step(**token(inputs, 0), lam=inputs["lam"], state=inputs["initial_state"], solver=solver)
        assert len(reads) == 1


# --- bad input ------------------------------------------------------------------------------------


def step_inputs(batch=2, heads=2, dk=4, dv=3, dtype=torch.float32, state=True):
    inputs = make_inputs(batch, 1, heads, dk, dv, dtype=dtype, initial_state=state)
    out = {n: inputs[n][:, 0] for n in TOKEN}
    out["lam"] = inputs["lam"]
    if state:
        out["state"] = inputs["initial_state"]
    return out


def with_(name, fn, **kw):
    inputs = step_inputs(**kw)
    inputs[name] = fn(inputs[name])
    return inputs


def indefinite(state):
    h, s = state
    return h - 2.0 * torch.eye(h.shape[-1]), s  # lam <= 1.25: gamma H + beta k k^T + Lambda is indefinite too


BAD_STEPS = [
    (
        "batch_zero",
        step_inputs(batch=0, state=False),
        r"expected q of shape \[B, H, Dk\] with every size >= 1, got \[0, 2, 4\] \(B = 0\)",
    ),
    (
        "heads_zero",
        step_inputs(heads=0, state=False),
        r"expected q of shape \[B, H, Dk\] with every size >= 1, got \[2, 0, 4\] \(H = 0\)",
    ),
    (
        "dv_zero",
        step_inputs(dv=0, state=False),
        r"expected v of shape \[B, H, Dv\] with every size >= 1, got \[2, 2, 0\] \(Dv = 0\)",
    ),
    ("q_rank", with_("q", lambda t: t[:, None]), r"expected q of rank 3 \[B, H, Dk\], got rank 4"),
    (
        "dtype_mix",
        with_("k", lambda t: t.double()),
        r"expected q, k, v of one dtype, got torch.float32, torch.float64, torch.float32",
    ),
    ("lam_missing", with_("lam", lambda t: None), r"expected lam to be a torch.Tensor of shape \[H, Dk\], got NoneType"),
    ("state_not_pair", with_("state", lambda t: t[0]), r"expected state = \(H_kk, S_kv\), got Tensor"),
    (
        "state_shape",
        with_("state", lambda t: (t[0], t[1][..., :2])),
        re.escape("expected state[1] (S_kv) of shape [B, H, Dk, Dv] = [2, 2, 4, 3], got [2, 2, 4, 2]"),
    ),
    ("lam_nonpositive", with_("lam", lambda t: -t), r"expected lam > 0"),
    ("g_positive", with_("g", lambda t: t.abs() + 0.1), r"expected g \(log forget gate, log gamma\) <= 0"),
    ("beta_negative", with_("beta", lambda t: -t - 0.1), r"expected beta \(input gate\) >= 0"),
    ("nan_q", with_("q", lambda t: t * float("nan")), r"expected finite values in q"),
    ("inf_k", with_("k", lambda t: t / 0), r"expected finite values in k"),
    ("inf_beta", with_("beta", lambda t: t / 0), r"expected finite values in beta"),
    (
        "nan_state_h",
        with_("state", lambda t: (t[0] * float("nan"), t[1])),
        re.escape("expected finite values in state[0] (H_kk)"),
    ),
    ("inf_state_s", with_("state", lambda t: (t[0], t[1] / 0)), re.escape("expected finite values in state[1] (S_kv)")),
    (
        "state_asymmetric",
        with_("state", lambda t: (t[0] + torch.triu(torch.ones(4, 4), 1), t[1])),
        re.escape("expected state[0] (H_kk) to be symmetric"),
    ),
    ("state_indefinite", with_("state", indefinite), re.escape("expected state[0] (H_kk) to be positive semi-definite")),
    (
        "keys_overflow",
        with_("k", lambda t: t * 1e20),
        r"expected a finite (output|new state\[0\] \(H_kk\)) from finite inputs, got \d+ non-finite entr(y|ies): the inputs overflow torch.float32",
    ),
    (
        "solver_type",
        {**step_inputs(), "solver": "lu"},
        r"solver: expected SolverSettings, a mapping of its fields or None, got str",
    ),
]


@pytest.mark.parametrize("solver", [CHOLESKY, CG], ids=["cholesky", "cg"])
@pytest.mark.parametrize("inputs, message", [pytest.param(i, m, id=n) for n, i, m in BAD_STEPS])
def test_mesa_step_rejects_bad_input(inputs, message, solver):
    inputs = {"solver": solver, **inputs}
    with pytest.raises(ValueError, match=r"^mesa_step: " + message):
        mesa_step(**inputs)


def test_overflow_is_silent_only_without_validation():
    inputs = with_("k", lambda t: t * 1e20)
    o, _, _ = mesa_step(**inputs, validate=False)
    assert not bool(torch.isfinite(o).all())


def test_valid_states_pass_validation():
    """States this package hands over are accepted: zero, rank-deficient (fewer tokens than Dk), and a long
    float32 run without forgetting (the largest accumulated rounding)."""
    inputs = make_inputs(1, 300, 2, 16, 8, gate="none", dtype=torch.float32)
    _, state, _ = mesa(**{n: t[:, :3] for n, t in inputs.items() if n != "lam"}, lam=inputs["lam"], output_final_state=True)
    _, long_state, _ = mesa(**inputs, output_final_state=True)
    zero = (torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 8))
    for s in (zero, state, long_state):
        mesa_step(**{n: t[:, 0] for n, t in inputs.items() if n in TOKEN}, lam=inputs["lam"], state=s)
        mesa(**{n: t[:, :5] for n, t in inputs.items() if n != "lam"}, lam=inputs["lam"], initial_state=s)


@pytest.mark.parametrize("solver", [CHOLESKY, CG], ids=["cholesky", "cg"])
def test_a_returned_key_state_is_not_checked_symmetric_again_unless_changed(solver, monkeypatch):
    """A decode loop: the state a validated step returns skips the next step's symmetry check (finite by the
    step's own check, symmetric by construction); changed in place, it is checked again and a broken symmetry
    is still an error."""
    from mesanet.ops import checks

    checked = []
    key_state = checks.ValueChecks.key_state
    monkeypatch.setattr(checks.ValueChecks, "key_state", lambda self, h, d: (checked.append(h), key_state(self, h, d))[1])
    inputs = step_inputs()
    state = inputs.pop("state")
    _, state, _ = mesa_step(**inputs, state=state, solver=solver)
    assert len(checked) == 1  # the caller's state
    _, next_state, _ = mesa_step(**inputs, state=state, solver=solver)
    assert len(checked) == 1  # our own, unchanged
    mesa_step(**inputs, state=next_state, solver=solver, validate=False)
    assert len(checked) == 1
    next_state[0].add_(torch.triu(torch.ones(4, 4), 1))  # in place: the version counter moves
    with pytest.raises(ValueError, match=re.escape("mesa_step: expected state[0] (H_kk) to be symmetric")):
        mesa_step(**inputs, state=next_state, solver=solver)
    assert len(checked) == 2
