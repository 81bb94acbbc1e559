"""Bad input at the public boundary: a ValueError naming what was expected and what arrived."""

from __future__ import annotations

import re

import pytest
import torch

from mesanet.ops import SolverSettings, checks, mesa, mesa_sherman_morrison

from helpers import make_inputs


def good(batch=1, length=6, heads=2):
    return make_inputs(batch, length, heads, 4, 3, dtype=torch.float32, initial_state=True)


def slightly_indefinite(h):
    """``h`` shifted so that its smallest eigenvalue is ``-0.01 max|H|``: ten times past the tolerance."""
    smallest = torch.linalg.eigvalsh(h.double()).amin(-1)[..., None, None].to(h.dtype)
    return h - (smallest + 0.01 * h.abs().amax((-2, -1), keepdim=True)) * torch.eye(h.shape[-1], dtype=h.dtype)


def modified(name, fn):
    inputs = good()
    inputs[name] = fn(inputs[name])
    return inputs


def nan_at_first(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


CASES = [
    ("q_rank", modified("q", lambda t: t[0]), {}, r"expected q of rank 4 \[B, T, H, Dk\], got rank 3 with shape \[6, 2, 4\]"),
    (
        "k_shape",
        modified("k", lambda t: t[..., :3]),
        {},
        r"expected k of shape \[B, T, H, Dk\] = \[1, 6, 2, 4\], got \[1, 6, 2, 3\]",
    ),
    (
        "v_length",
        modified("v", lambda t: t[:, :5]),
        {},
        r"expected v of shape \[B, T, H, Dv\] = \[1, 6, 2, 3\], got \[1, 5, 2, 3\]",
    ),
    (
        "dtype_mix",
        modified("k", lambda t: t.double()),
        {},
        r"expected q, k, v of one dtype, got torch.float32, torch.float64, torch.float32",
    ),
    ("int_q", modified("q", lambda t: t.long()), {}, r"expected q to be a floating-point tensor, got dtype torch.int64"),
    (
        "not_tensor",
        modified("v", lambda t: t.tolist()),
        {},
        r"expected v to be a torch.Tensor of shape \[B, T, H, Dv\], got list",
    ),
    ("g_shape", modified("g", lambda t: t[..., None]), {}, r"expected g of rank 3 \[B, T, H\], got rank 4"),
    ("lam_shape", modified("lam", lambda t: t[:1]), {}, r"expected lam of shape \[H, Dk\] = \[2, 4\], got \[1, 4\]"),
    ("lam_nonpositive", modified("lam", lambda t: t - 2.0), {}, r"expected lam > 0 .*got min -"),
    ("nan_q", modified("q", nan_at_first), {}, r"expected finite values in q, got 1 non-finite entry"),
    ("inf_v", modified("v", lambda t: t / 0), {}, r"expected finite values in v, got \d+ non-finite entries"),
    ("g_positive", modified("g", lambda t: t + 1.0), {}, r"expected g \(log forget gate, log gamma\) <= 0, got max"),
    ("beta_negative", modified("beta", lambda t: t - 2.0), {}, r"expected beta \(input gate\) >= 0"),
    ("mixed_devices", modified("lam", lambda t: t.to("meta")), {}, r"expected all tensors on one device, got .*lam on meta"),
    ("state_not_pair", modified("initial_state", lambda t: t[0]), {}, r"expected initial_state = \(H_kk, S_kv\), got Tensor"),
    (
        "state_shape",
        modified("initial_state", lambda t: (t[0][..., :3, :3], t[1])),
        {},
        r"expected initial_state\[0\] \(H_kk\) of shape \[N, H, Dk, Dk\] = \[1, 2, 4, 4\], got \[1, 2, 3, 3\]",
    ),
    (
        "state_batch",
        modified("initial_state", lambda t: (t[0], t[1].repeat(2, 1, 1, 1))),
        {},
        r"expected initial_state\[1\] \(S_kv\) of shape \[N, H, Dk, Dv\] = \[1, 2, 4, 3\], got \[2, 2, 4, 3\]",
    ),
    (
        "state_asymmetric",
        modified("initial_state", lambda t: (t[0] + torch.triu(torch.ones(4, 4), 1), t[1])),
        {},
        r"expected initial_state\[0\] \(H_kk\) to be symmetric",
    ),
    (
        "state_indefinite",
        modified("initial_state", lambda t: (t[0] - 2.0 * torch.eye(4), t[1])),
        {},
        re.escape(
            "expected initial_state[0] (H_kk) to be positive semi-definite (smallest eigenvalue >= -0.001 * max|H|), got smallest eigenvalue -"
        ),
    ),
    (
        "state_slightly_indefinite",
        modified("initial_state", lambda t: (slightly_indefinite(t[0]), t[1])),
        {},
        re.escape("expected initial_state[0] (H_kk) to be positive semi-definite"),
    ),
    (
        "state_nan",
        modified("initial_state", lambda t: (t[0], t[1] * float("nan"))),
        {},
        re.escape("expected finite values in initial_state[1] (S_kv)"),
    ),
    ("batch_zero", good(batch=0), {}, r"expected q of shape \[B, T, H, Dk\] with every size >= 1, got \[0, 6, 2, 4\] \(B = 0\)"),
    ("heads_zero", good(heads=0), {}, r"expected q of shape \[B, T, H, Dk\] with every size >= 1, got \[1, 6, 0, 4\] \(H = 0\)"),
    (
        "length_zero",
        good(length=0),
        {},
        r"expected q of shape \[B, T, H, Dk\] with every size >= 1, got \[1, 0, 2, 4\] \(T = 0\)",
    ),
    ("g_missing", modified("g", lambda t: None), {}, r"expected g to be a torch.Tensor of shape \[B, T, H\], got NoneType"),
    (
        "keys_overflow",
        modified("k", lambda t: t * 1e20),
        {},
        r"expected a finite (output|final state \(H_kk \| S_kv\)) from finite inputs, got \d+ non-finite entr(y|ies): the inputs overflow torch.float32 \(max\|q\| = .*, max\|k\| = .*e\+19",
    ),
    ("solver_type", good(), dict(solver="fast"), r"solver: expected SolverSettings, a mapping of its fields or None, got str"),
    ("solver_unknown_key", good(), dict(solver={"maxiter": 3}), r"solver: unknown solver setting\(s\) \['maxiter'\]"),
    ("chunk_zero", good(), dict(chunk_size=0), r"expected chunk_size to be a positive integer, got 0"),
    ("chunk_float", good(), dict(chunk_size=8.0), r"expected chunk_size to be a positive integer, got 8.0"),
]


@pytest.mark.parametrize("inputs, options, message", [pytest.param(i, o, m, id=n) for n, i, o, m in CASES])
def test_mesa_rejects_bad_input(inputs, options, message):
    with pytest.raises(ValueError, match=r"^mesa: " + message):
        mesa(**inputs, **options)


def packed(cu, batch=1, length=6):
    inputs = make_inputs(batch, length, 2, 4, 3, dtype=torch.float32)
    return inputs, cu


CU_CASES = [
    (
        "not_increasing",
        *packed(torch.tensor([0, 4, 4, 6])),
        r"expected strictly increasing cu_seqlens \(no empty sequences\), got \[0, 4, 4, 6\]",
    ),
    ("decreasing", *packed(torch.tensor([0, 5, 3, 6])), r"expected strictly increasing cu_seqlens"),
    (
        "float_dtype",
        *packed(torch.tensor([0.0, 6.0])),
        r"expected cu_seqlens of dtype torch.int32 or torch.int64, got torch.float32",
    ),
    (
        "batch_gt_1",
        *packed(torch.tensor([0, 6]), batch=2),
        r"expected batch size 1 with cu_seqlens \(sequences are packed along T\), got B = 2",
    ),
    ("last_not_T", *packed(torch.tensor([0, 2, 5])), r"expected the last cu_seqlens offset to equal T = 6, got 5"),
    ("first_not_0", *packed(torch.tensor([1, 6])), r"expected cu_seqlens to start at 0, got 1"),
    ("two_dim", *packed(torch.tensor([[0, 6]])), r"expected cu_seqlens of shape \[N \+ 1\] with N >= 1, got \[1, 2\]"),
    ("list", *packed([0, 6]), r"expected cu_seqlens to be a 1-D integer torch.Tensor, got list"),
]


@pytest.mark.parametrize("inputs, cu, message", [pytest.param(i, c, m, id=n) for n, i, c, m in CU_CASES])
def test_mesa_rejects_malformed_cu_seqlens(inputs, cu, message):
    with pytest.raises(ValueError, match=r"^mesa: " + message):
        mesa(**inputs, cu_seqlens=cu)


def test_packed_initial_state_must_have_one_row_per_sequence():
    inputs = good()  # one state row, two sequences
    with pytest.raises(
        ValueError, match=re.escape("expected initial_state[0] (H_kk) of shape [N, H, Dk, Dk] = [2, 2, 4, 4], got [1, 2, 4, 4]")
    ):
        mesa(**inputs, cu_seqlens=torch.tensor([0, 2, 6]))


def test_sherman_morrison_rejects_bad_input():
    inputs = make_inputs(1, 4, 2, 4, 3, initial_state=True)
    with pytest.raises(ValueError, match=r"^mesa_sherman_morrison: expected lam > 0"):
        mesa_sherman_morrison(**{**inputs, "lam": inputs["lam"] * 0})
    with pytest.raises(ValueError, match=r"^mesa_sherman_morrison: expected q of shape \[B, T, H, Dk\] with every size >= 1"):
        mesa_sherman_morrison(**make_inputs(0, 4, 2, 4, 3))
    r, s = inputs["initial_state"]
    with pytest.raises(
        ValueError, match=re.escape("mesa_sherman_morrison: expected initial_state[0] (R) to be positive semi-definite")
    ):
        mesa_sherman_morrison(**{**inputs, "initial_state": (r - 2.0 * torch.eye(4, dtype=r.dtype), s)})
    with pytest.raises(
        ValueError,
        match=re.escape("mesa_sherman_morrison: expected initial_state[1] (S_kv) of shape [N, H, Dk, Dv] = [1, 2, 4, 3]"),
    ):
        mesa_sherman_morrison(**{**inputs, "initial_state": (r, s[..., :2])})
    # an overflowing denominator 1 + beta k^T P k would silently drop the update (beta / inf = 0)
    f32 = {n: (t.float() if isinstance(t, torch.Tensor) else t) for n, t in inputs.items() if n != "initial_state"}
    with pytest.raises(
        ValueError, match=r"^mesa_sherman_morrison: expected a finite denominator 1 \+ beta k\^T P k from finite inputs"
    ):
        mesa_sherman_morrison(**{**f32, "k": f32["k"] * 1e20})


def test_chunk_size_is_capped_at_the_longest_sequence():
    """chunk_size = 10**6 with T = 20 runs as one chunk of 20 (no 10**6 x 10**6 decay matrix)."""
    inputs = make_inputs(2, 20, 2, 4, 3)
    solver = SolverSettings(max_iter=30, tol=0.0)
    huge, _, _ = mesa(**inputs, chunk_size=10**6, solver=solver)
    exact, _, _ = mesa(**inputs, chunk_size=20, solver=solver)
    assert torch.equal(huge, exact)


def test_validated_mesa_reads_its_input_checks_once(monkeypatch):
    """Value checks are fused: one read for the inputs (initial state included), one for the result."""
    reads = []
    passed = checks.ValueChecks.passed
    monkeypatch.setattr(checks.ValueChecks, "passed", lambda self: reads.append(1) or passed(self))
    monkeypatch.setattr(checks, "check_finite", lambda *a, **k: pytest.fail("detailed check ran on valid input"))
    mesa(**good())
    assert len(reads) == 2
