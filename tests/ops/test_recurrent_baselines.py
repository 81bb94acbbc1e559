"""The single-state baselines (gated linear attention, (gated) DeltaNet): each chunkwise operator against
its sequential reference, and its execution modes. Inputs come from :func:`helpers.make_inputs`: unit-norm
keys and beta in [0, 1], as the layers feed them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mesanet.ops import delta_rule, delta_rule_reference, delta_rule_step, gla, gla_reference, gla_step

from helpers import make_inputs, rel_err
from tolerances import BF16_RTOL, F32_RTOL, F64_EXACT_RTOL

# (batch, T, heads, Dk, Dv, chunk): a curated list, crossed with the three gate ranges.
SHAPES = [
    pytest.param(1, 1, 2, 8, 8, 16, id="T1"),
    pytest.param(2, 5, 2, 8, 4, 16, id="T_shorter_than_chunk"),
    pytest.param(1, 21, 2, 8, 8, 8, id="T_not_multiple"),
    pytest.param(1, 19, 2, 6, 9, 4, id="dk_not_pow2_dk_ne_dv"),
    pytest.param(3, 13, 2, 5, 3, 4, id="batch3"),
]
GATES = ["none", "mid", "strong"]
LEAF_NAMES = ["q", "k", "v", "g", "beta", "S0"]
OPS = {
    "gla": SimpleNamespace(forward=gla, step=gla_step, reference=gla_reference),
    "delta_rule": SimpleNamespace(forward=delta_rule, step=delta_rule_step, reference=delta_rule_reference),
}


@pytest.fixture(params=sorted(OPS))
def op(request):
    return OPS[request.param]


def baseline_inputs(batch, length, heads, dk, dv, *, initial_state=True, num_states=None, **kw) -> dict:
    """:func:`helpers.make_inputs` for a single-state op: no ``lam``, ``initial_state = S0 [N, H, Dk, Dv]``."""
    inputs = make_inputs(batch, length, heads, dk, dv, initial_state=initial_state, num_states=num_states, **kw)
    del inputs["lam"]
    if initial_state:
        inputs["initial_state"] = inputs["initial_state"][1]
    return inputs


def leaves(inputs: dict) -> list[torch.Tensor]:
    return [inputs[n] for n in ("q", "k", "v", "g", "beta", "initial_state") if n in inputs]


def _loss(outputs, weights):
    return sum((o * w).sum() for o, w in zip(outputs, weights))


def _tokens(inputs: dict, sl) -> dict:
    return {n: inputs[n][:, sl] for n in ("q", "k", "v", "g", "beta")}


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("batch, length, heads, dk, dv, chunk", SHAPES)
def test_chunk_matches_sequential_reference(op, batch, length, heads, dk, dv, chunk, gate):
    inputs = baseline_inputs(batch, length, heads, dk, dv, gate=gate, requires_grad=True)
    o, s, stats = op.forward(**inputs, output_final_state=True, chunk_size=chunk)
    assert stats is None and o.shape == (batch, length, heads, dv) and s.shape == (batch, heads, dk, dv)
    ro, rs = op.reference(**inputs)
    assert rel_err(o, ro) <= F64_EXACT_RTOL
    assert rel_err(s, rs) <= F64_EXACT_RTOL

    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in (ro, rs)]
    grads = torch.autograd.grad(_loss((o, s), weights), leaves(inputs))
    ref_grads = torch.autograd.grad(_loss((ro, rs), weights), leaves(inputs))
    for name, a, e in zip(LEAF_NAMES, grads, ref_grads):
        assert rel_err(a, e) <= F64_EXACT_RTOL, f"d{name}: {rel_err(a, e):.2e}"


def test_decode_loop_matches_chunk_form(op):
    batch, length, heads, dk, dv = 2, 21, 2, 10, 6
    inputs = baseline_inputs(batch, length, heads, dk, dv)
    o, s, _ = op.forward(**inputs, output_final_state=True, chunk_size=8)
    state, outs = inputs["initial_state"], []
    for t in range(length):
        o_t, state = op.step(**_tokens(inputs, t), state=state)
        outs.append(o_t)
    assert rel_err(torch.stack(outs, dim=1), o) <= F64_EXACT_RTOL
    assert rel_err(state, s) <= F64_EXACT_RTOL


def test_decode_step_from_zero_state_and_gradients(op):
    inputs = baseline_inputs(2, 1, 3, 7, 5, initial_state=False, requires_grad=True)
    o, s = op.step(**_tokens(inputs, 0))
    ro, rs = op.reference(**inputs)
    assert rel_err(o, ro[:, 0]) <= F64_EXACT_RTOL and rel_err(s, rs) <= F64_EXACT_RTOL
    weights = [torch.randn_like(t) for t in (o, s)]
    grads = torch.autograd.grad(_loss((o, s), weights), leaves(inputs))
    ref_grads = torch.autograd.grad(_loss((ro[:, 0], rs), weights), leaves(inputs))
    for name, a, e in zip(LEAF_NAMES, grads, ref_grads):
        assert rel_err(a, e) <= F64_EXACT_RTOL, name


def test_split_with_state_passing_equals_whole(op):
    inputs = baseline_inputs(2, 30, 2, 8, 6, requires_grad=True)
    whole, s, _ = op.forward(**inputs, output_final_state=True, chunk_size=8)
    cut = 11  # inside a chunk, so the second call starts mid-way through the first call's chunking
    o1, mid, _ = op.forward(
        **_tokens(inputs, slice(None, cut)), initial_state=inputs["initial_state"], output_final_state=True, chunk_size=8
    )
    o2, s2, _ = op.forward(**_tokens(inputs, slice(cut, None)), initial_state=mid, output_final_state=True, chunk_size=8)
    split = torch.cat([o1, o2], dim=1)
    assert rel_err(split, whole) <= F64_EXACT_RTOL and rel_err(s2, s) <= F64_EXACT_RTOL
    weights = [torch.randn_like(t) for t in (whole, s)]
    grads = torch.autograd.grad(_loss((whole, s), weights), leaves(inputs))
    split_grads = torch.autograd.grad(_loss((split, s2), weights), leaves(inputs))
    for name, a, e in zip(LEAF_NAMES, split_grads, grads):
        assert rel_err(a, e) <= F64_EXACT_RTOL, name


def test_packed_varlen_equals_per_sequence(op):
    lengths = [7, 1, 16, 12]  # a length-1 sequence, an exact chunk multiple and partial chunks
    heads, dk, dv, chunk = 2, 6, 5, 8
    inputs = baseline_inputs(1, sum(lengths), heads, dk, dv, gate="mid", num_states=len(lengths), requires_grad=True)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    packed, s, _ = op.forward(**inputs, cu_seqlens=cu, output_final_state=True, chunk_size=chunk)
    assert packed.shape == (1, sum(lengths), heads, dv) and s.shape == (len(lengths), heads, dk, dv)
    outs, states = [], []
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_i, s_i = op.reference(**_tokens(inputs, slice(a, b)), initial_state=inputs["initial_state"][i : i + 1])
        outs.append(o_i), states.append(s_i)
    ref = (torch.cat(outs, dim=1), torch.cat(states))
    assert rel_err(packed, ref[0]) <= F64_EXACT_RTOL and rel_err(s, ref[1]) <= F64_EXACT_RTOL
    weights = [torch.randn_like(t) for t in ref]
    grads = torch.autograd.grad(_loss((packed, s), weights), leaves(inputs))
    ref_grads = torch.autograd.grad(_loss(ref, weights), leaves(inputs))
    for name, a, e in zip(LEAF_NAMES, grads, ref_grads):
        assert rel_err(a, e) <= F64_EXACT_RTOL, name


def test_missing_gates_mean_one(op):
    """``g = None`` means gamma = 1 (linear attention / DeltaNet); ``beta = None`` means beta = 1 (Mamba2-style)."""
    inputs = baseline_inputs(2, 12, 2, 6, 4)
    o, s, _ = op.forward(**{**inputs, "g": None, "beta": None}, output_final_state=True, chunk_size=4)
    ro, rs = op.reference(**{**inputs, "g": torch.zeros_like(inputs["g"]), "beta": torch.ones_like(inputs["beta"])})
    assert rel_err(o, ro) <= F64_EXACT_RTOL and rel_err(s, rs) <= F64_EXACT_RTOL
    o_t, _ = op.step(**{**_tokens(inputs, 0), "g": None, "beta": None}, state=inputs["initial_state"])
    assert rel_err(o_t, ro[:, 0]) <= F64_EXACT_RTOL


@pytest.mark.parametrize(
    "input_dtype, rtol, gate",
    [(torch.float32, F32_RTOL, "mid"), (torch.float32, F32_RTOL, "strong"), (torch.bfloat16, BF16_RTOL, "strong")],
)
def test_low_precision_long_sequence(op, input_dtype, rtol, gate):
    """Default chunk of 64. With strong decay the chunk-local cumulative log decay falls to -150..-300,
    which must underflow to 0 (never overflow), in forward and backward; states stay float32."""
    inputs = baseline_inputs(1, 150, 2, 16, 16, gate=gate, dtype=input_dtype, requires_grad=True)
    o, s, _ = op.forward(**inputs, output_final_state=True)
    assert o.dtype == input_dtype and s.dtype == torch.float32
    exact = {n: t.detach().double() for n, t in inputs.items()}  # same rounded inputs, exact arithmetic
    ro, rs = op.reference(**exact)
    assert rel_err(o, ro) <= rtol and rel_err(s, rs) <= rtol
    grads = torch.autograd.grad(o.float().sum() + s.sum(), leaves(inputs))
    assert all(bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda x: x.update(g=x["g"].abs() + 0.1), r"expected g \(log forget gate, log gamma\) <= 0"),
        (lambda x: x.update(v=x["v"][..., :2, :]), r"expected v of shape \[B, T, H, Dv\] = \[2, 9, 3, 4\], got \[2, 9, 2, 4\]"),
        (
            lambda x: x.update(initial_state=x["initial_state"][:1]),
            r"expected initial_state of shape \[N, H, Dk, Dv\] = \[2, 3, 5, 4\]",
        ),
        (lambda x: x.update(cu_seqlens=torch.tensor([0, 4, 9])), r"expected batch size 1 with cu_seqlens"),
        (lambda x: x.update(chunk_size=0), r"expected chunk_size to be a positive integer, got 0"),
        (lambda x: x.update(beta=x["beta"].unsqueeze(-1)), r"expected beta of rank 3"),
        (
            lambda x: x.update(initial_state=(x["initial_state"], x["initial_state"])),
            r"expected initial_state to be a torch.Tensor of shape \[N, H, Dk, Dv\], got tuple",
        ),
        (lambda x: x.update(k=x["k"].float()), r"expected q, k, v of one dtype, got torch.float64, torch.float32, torch.float64"),
        (
            lambda x: x.update(q=x["q"][:0], k=x["k"][:0], v=x["v"][:0]),
            r"expected q of shape \[B, T, H, Dk\] with every size >= 1, got \[0, 9, 3, 5\] \(B = 0\)",
        ),
        (
            lambda x: x.update(q=x["q"][:, :, :0]),
            r"expected q of shape \[B, T, H, Dk\] with every size >= 1, got \[2, 9, 0, 5\] \(H = 0\)",
        ),
        (
            lambda x: x.update(v=x["v"][..., :0]),
            r"expected v of shape \[B, T, H, Dv\] with every size >= 1, got \[2, 9, 3, 0\] \(Dv = 0\)",
        ),
        (
            lambda x: x.update(initial_state=x["initial_state"] * float("nan")),
            r"expected finite values in initial_state, got 120 non-finite entries",
        ),
        (lambda x: x.update(g=x["g"] * float("nan")), r"expected finite values in g"),
        (
            lambda x: x.update(
                {n: x[n].float() * (1e20 if n in "qkv" else 1) for n in ("q", "k", "v", "g", "beta", "initial_state")}
            ),
            r"expected a finite (output|final state) from finite inputs, got \d+ non-finite entr(y|ies): the inputs overflow torch.float32",
        ),
    ],
)
def test_bad_inputs_raise_value_error(op, change, match):
    inputs = baseline_inputs(2, 9, 3, 5, 4)
    change(inputs)
    with pytest.raises(ValueError, match=match):
        op.forward(**inputs)


def test_bad_step_inputs_raise_value_error(op):
    inputs = _tokens(baseline_inputs(2, 1, 3, 5, 4, initial_state=False), 0)
    state = torch.zeros(2, 3, 5, 4, dtype=torch.float64)
    cases = [
        (
            dict(state=torch.zeros(2, 3, 4, 5, dtype=torch.float64)),
            r"expected state of shape \[B, H, Dk, Dv\] = \[2, 3, 5, 4\], got \[2, 3, 4, 5\]",
        ),
        (dict(q=inputs["q"] * float("nan")), r"expected finite values in q"),
        (dict(k=inputs["k"] * float("nan"), state=state), r"expected finite values in k"),
        (dict(state=state * float("nan")), r"expected finite values in state, got 120 non-finite entries"),
        (dict(g=inputs["g"].abs() + 0.1), r"expected g \(log forget gate, log gamma\) <= 0"),
        (dict(v=inputs["v"].float()), r"expected q, k, v of one dtype, got torch.float64, torch.float64, torch.float32"),
        (
            {n: inputs[n][:0] for n in ("q", "k", "v", "g", "beta")},
            r"expected q of shape \[B, H, Dk\] with every size >= 1, got \[0, 3, 5\] \(B = 0\)",
        ),
        (
            {n: inputs[n][:, :0] for n in ("q", "k", "v", "g", "beta")},
            r"expected q of shape \[B, H, Dk\] with every size >= 1, got \[2, 0, 5\] \(H = 0\)",
        ),
        (
            {n: inputs[n].float() * (1e20 if n in "qkv" else 1) for n in ("q", "k", "v", "g", "beta")},
            r"expected a finite (output|new state) from finite inputs, got \d+ non-finite entr(y|ies): the inputs overflow torch.float32",
        ),
    ]
    for change, match in cases:
        with pytest.raises(ValueError, match=r"^\w+_step: " + match):
            op.step(**{**inputs, **change})


def test_chunk_size_is_capped_at_the_sequence_length(op):
    """chunk_size = 10**6 with T = 20 runs as one chunk of 20 (no 10**6 x 10**6 decay matrix)."""
    inputs = baseline_inputs(2, 20, 2, 6, 4)
    huge, s_huge, _ = op.forward(**inputs, chunk_size=10**6, output_final_state=True)
    exact, s_exact, _ = op.forward(**inputs, chunk_size=20, output_final_state=True)
    assert torch.equal(huge, exact) and torch.equal(s_huge, s_exact)


def test_validated_forward_reads_its_checks_twice_and_step_once(op, monkeypatch):
    """Value checks are fused: the sequence op reads its input checks and its result check once each, a
    step reads both together; no detailed (per-argument) check runs on valid input."""
    from mesanet.ops import checks

    reads = []
    passed = checks.ValueChecks.passed
    monkeypatch.setattr(checks.ValueChecks, "passed", lambda self: reads.append(1) or passed(self))
    monkeypatch.setattr(checks, "check_finite", lambda *a, **k: pytest.fail("detailed check ran on valid input"))
    inputs = baseline_inputs(2, 9, 3, 5, 4)
    op.forward(**inputs)
    assert len(reads) == 2
    reads.clear()
    op.step(**_tokens(inputs, 0), state=inputs["initial_state"])
    assert len(reads) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_reference(op):
    lengths = [9, 30, 1]
    inputs = baseline_inputs(1, sum(lengths), 2, 12, 7, gate="mid", num_states=len(lengths), requires_grad=True)
    cu = torch.tensor([0] + lengths).cumsum(0)
    outs, states = [], []
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_i, s_i = op.reference(**_tokens(inputs, slice(a, b)), initial_state=inputs["initial_state"][i : i + 1])
        outs.append(o_i), states.append(s_i)
    ref = (torch.cat(outs, dim=1), torch.cat(states))
    weights = [torch.randn_like(t) for t in ref]
    ref_grads = torch.autograd.grad(_loss(ref, weights), leaves(inputs))
    cuda_inputs = {n: t.detach().cuda().requires_grad_() for n, t in inputs.items()}
    o, s, _ = op.forward(**cuda_inputs, cu_seqlens=cu.cuda(), output_final_state=True, chunk_size=8)
    assert rel_err(o.cpu(), ref[0]) <= F64_EXACT_RTOL and rel_err(s.cpu(), ref[1]) <= F64_EXACT_RTOL
    grads = torch.autograd.grad(_loss((o, s), [w.cuda() for w in weights]), leaves(cuda_inputs))
    for name, a, e in zip(LEAF_NAMES, grads, ref_grads):
        assert rel_err(a.cpu(), e) <= F64_EXACT_RTOL, name


# --- delta rule only ---


def test_unit_write_overwrites_the_association():
    """With gamma = beta = 1 and a unit key, S_t^T k_t = v_t whatever was stored: query with the key."""
    inputs = baseline_inputs(1, 20, 2, 4, 3, gate="none")
    inputs.update(q=inputs["k"], beta=torch.ones_like(inputs["beta"]))
    o, _, _ = delta_rule(**inputs, chunk_size=8)
    assert rel_err(o, inputs["v"]) <= F64_EXACT_RTOL


@pytest.mark.parametrize("chunk", [1, 3, 16, 64])
def test_chunk_size_does_not_change_the_result(chunk):
    """beta up to 2 (the non-expansive limit for unit keys, used by negative-eigenvalue variants)."""
    inputs = baseline_inputs(1, 30, 2, 8, 8)
    inputs["beta"] = 2 * inputs["beta"]
    o, s, _ = delta_rule(**inputs, output_final_state=True, chunk_size=chunk)
    ro, rs = delta_rule_reference(**inputs)
    assert rel_err(o, ro) <= F64_EXACT_RTOL and rel_err(s, rs) <= F64_EXACT_RTOL
