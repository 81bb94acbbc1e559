"""The chunkwise CG Mesa operator against the exact sequential reference, and its execution modes."""

from __future__ import annotations

import pytest
import torch

from mesanet.ops import SolverSettings, mesa, mesa_reference, mesa_sherman_morrison, mesa_step, preconditioners
from mesanet.ops.cg import RESIDUAL_FLOOR_EPS
from mesanet.ops.solver_settings import PRECONDITIONERS

from helpers import LEAF_NAMES, leaves, make_inputs, rel_err
from tolerances import BF16_RTOL, F32_RTOL, F64_EXACT_RTOL, F64_RTOL, HOMOGENEITY_RTOL, LARGE_LAMBDA_RTOL

# (batch, T, heads, Dk, Dv, chunk, gate): a curated list, not a product. Each line says what it covers.
SHAPES = [
    pytest.param(1, 1, 2, 8, 8, 16, "mid", id="T1"),
    pytest.param(2, 5, 2, 8, 4, 16, "mid", id="T_shorter_than_chunk"),
    pytest.param(2, 37, 3, 12, 7, 8, "mid", id="T_not_multiple_dk_not_pow2_dk_ne_dv"),
    pytest.param(1, 48, 2, 16, 16, 16, "none", id="no_decay"),
    pytest.param(2, 45, 2, 10, 6, 16, "strong", id="strong_decay"),
    pytest.param(3, 33, 1, 24, 20, 32, "mid", id="batch3_wider_head"),
    pytest.param(1, 40, 2, 6, 9, 64, "none", id="one_partial_chunk_no_decay"),
]


def converged_iters(dk: int) -> int:
    """Far past CG's finite termination in d steps, so float64 rounding is all that is left."""
    return 3 * dk + 10


def fixed(steps: int, preconditioner: str = "chunk", **kw) -> SolverSettings:
    """``steps`` CG steps with no tolerance (only the residual floor stops a system early)."""
    return SolverSettings(max_iter=steps, tol=0.0, preconditioner=preconditioner, **kw)


def _loss(outputs, weights):
    return sum((o * w).sum() for o, w in zip(outputs, weights))


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
@pytest.mark.parametrize("batch, length, heads, dk, dv, chunk, gate", SHAPES)
def test_chunk_matches_exact_reference(batch, length, heads, dk, dv, chunk, gate, preconditioner):
    inputs = make_inputs(batch, length, heads, dk, dv, gate=gate, initial_state=True, requires_grad=True)
    solver = fixed(converged_iters(dk), preconditioner)
    o, (h, s), _ = mesa(**inputs, output_final_state=True, solver=solver, chunk_size=chunk)
    ro, (rh, rs) = mesa_reference(**inputs)
    for name, actual, expected in (("output", o, ro), ("H_kk", h, rh), ("S_kv", s, rs)):
        assert rel_err(actual, expected) <= F64_RTOL, name

    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in (ro, rh, rs)]
    grads = torch.autograd.grad(_loss((o, h, s), weights), leaves(inputs))
    ref_grads = torch.autograd.grad(_loss((ro, rh, rs), weights), leaves(inputs))
    for name, actual, expected in zip(LEAF_NAMES, grads, ref_grads):
        assert rel_err(actual, expected) <= F64_RTOL, f"d{name}: {rel_err(actual, expected):.2e}"


@pytest.mark.parametrize("decode", ["cg", "cholesky"])
def test_decode_loop_matches_chunk_form(decode):
    batch, length, heads, dk, dv = 2, 21, 2, 10, 6
    inputs = make_inputs(batch, length, heads, dk, dv, initial_state=True)
    solver = fixed(converged_iters(dk), decode=decode)
    o, (h, s), _ = mesa(**inputs, output_final_state=True, solver=solver, chunk_size=8)
    state = inputs["initial_state"]
    step_outputs = []
    for t in range(length):
        token = {n: inputs[n][:, t] for n in ("q", "k", "v", "g", "beta")}
        o_t, state, _ = mesa_step(**token, lam=inputs["lam"], state=state, solver=solver)
        step_outputs.append(o_t)
    assert rel_err(torch.stack(step_outputs, dim=1), o) <= F64_EXACT_RTOL
    assert rel_err(state[0], h) <= F64_EXACT_RTOL
    assert rel_err(state[1], s) <= F64_EXACT_RTOL


@pytest.mark.parametrize("decode", ["cg", "cholesky"])
def test_decode_step_gradients_match_reference(decode):
    inputs = make_inputs(2, 1, 3, 9, 5, initial_state=True, requires_grad=True)
    token = {n: inputs[n][:, 0] for n in ("q", "k", "v", "g", "beta")}
    o, (h, s), _ = mesa_step(**token, lam=inputs["lam"], state=inputs["initial_state"], solver=fixed(40, decode=decode))
    ro, (rh, rs) = mesa_reference(**inputs)
    weights = [torch.randn_like(t) for t in (o, h, s)]
    grads = list(torch.autograd.grad(_loss((o, h, s), weights), leaves(inputs)))
    ref_grads = list(torch.autograd.grad(_loss((ro[:, 0], rh, rs), weights), leaves(inputs)))
    if decode == "cholesky":
        # Cholesky reads one triangle, so its gradient w.r.t. the (symmetric) key state carries only
        # the symmetric part of the solve's contribution: compare on symmetric perturbations.
        grads[6], ref_grads[6] = ((t + t.mT) / 2 for t in (grads[6], ref_grads[6]))
    for name, actual, expected in zip(LEAF_NAMES, grads, ref_grads):
        assert rel_err(actual, expected) <= F64_RTOL, name


def test_split_with_state_passing_equals_whole():
    inputs = make_inputs(2, 50, 2, 12, 8, initial_state=True, requires_grad=True)
    opts = dict(solver=fixed(converged_iters(12)), chunk_size=16)
    whole, (h, s), _ = mesa(**inputs, output_final_state=True, **opts)
    cut = 23  # inside a chunk, so the second call starts mid-way through the first call's chunking
    first = {n: (inputs[n][:, :cut] if n not in ("lam", "initial_state") else inputs[n]) for n in inputs}
    second = {n: inputs[n][:, cut:] for n in ("q", "k", "v", "g", "beta")}
    o1, state, _ = mesa(**first, output_final_state=True, **opts)
    o2, (h2, s2), _ = mesa(**second, lam=inputs["lam"], initial_state=state, output_final_state=True, **opts)
    assert rel_err(torch.cat([o1, o2], dim=1), whole) <= F64_EXACT_RTOL
    assert rel_err(h2, h) <= F64_EXACT_RTOL and rel_err(s2, s) <= F64_EXACT_RTOL

    weights = [torch.randn_like(t) for t in (whole, h, s)]
    grads = torch.autograd.grad(_loss((whole, h, s), weights), leaves(inputs))
    split = (torch.cat([o1, o2], dim=1), h2, s2)
    split_grads = torch.autograd.grad(_loss(split, weights), leaves(inputs))
    for name, a, e in zip(LEAF_NAMES, split_grads, grads):
        assert rel_err(a, e) <= F64_EXACT_RTOL, name


# the default, and preconditioners refreshed every 3 tokens of 8-token chunks (partial blocks in every chunk)
@pytest.mark.parametrize("preconditioner, every", [("chunk", None), ("chunk", 3), ("chunk-keys", None), ("chunk-keys", 3)])
def test_packed_varlen_equals_per_sequence(preconditioner, every):
    lengths = [7, 1, 30, 16, 12]  # a length-1 sequence, exact chunk multiples and partial chunks
    heads, dk, dv, chunk = 2, 8, 5, 8
    total = sum(lengths)
    inputs = make_inputs(1, total, heads, dk, dv, initial_state=True, num_states=len(lengths), requires_grad=True)
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    opts = dict(solver=fixed(converged_iters(dk), preconditioner, precondition_every=every), chunk_size=chunk)
    packed, (h, s), stats = mesa(**inputs, cu_seqlens=cu, output_final_state=True, return_stats=True, **opts)
    assert packed.shape == (1, total, heads, dv) and h.shape == (len(lengths), heads, dk, dk)
    assert stats.iterations.shape == (1, total, heads)

    outs, hs, ss = [], [], []
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        seq = {n: inputs[n][:, a:b] for n in ("q", "k", "v", "g", "beta")}
        state = tuple(t[i : i + 1] for t in inputs["initial_state"])
        o_i, (h_i, s_i) = mesa_reference(**seq, lam=inputs["lam"], initial_state=state)
        outs.append(o_i), hs.append(h_i), ss.append(s_i)
    ref = (torch.cat(outs, dim=1), torch.cat(hs), torch.cat(ss))
    for name, a, e in zip(("output", "H_kk", "S_kv"), (packed, h, s), ref):
        assert rel_err(a, e) <= F64_RTOL, name
    weights = [torch.randn_like(t) for t in ref]
    grads = torch.autograd.grad(_loss((packed, h, s), weights), leaves(inputs))
    ref_grads = torch.autograd.grad(_loss(ref, weights), leaves(inputs))
    for name, a, e in zip(LEAF_NAMES, grads, ref_grads):
        assert rel_err(a, e) <= F64_RTOL, name


def test_batch_equals_packed_sequences():
    """A [B, T] batch and the same sequences packed with cu_seqlens are one computation."""
    inputs = make_inputs(3, 20, 2, 8, 8)
    batched, _, _ = mesa(**inputs, solver=fixed(34), chunk_size=8)
    flat = {n: t.reshape(1, 60, *t.shape[2:]) if n != "lam" else t for n, t in inputs.items()}
    cu = torch.tensor([0, 20, 40, 60])
    packed, _, _ = mesa(**flat, cu_seqlens=cu, solver=fixed(34), chunk_size=8)
    assert rel_err(packed.reshape(3, 20, 2, 8), batched) <= F64_EXACT_RTOL


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
def test_chunk_size_does_not_change_the_result(chunk):
    inputs = make_inputs(1, 30, 2, 8, 8, initial_state=True)
    o, _, _ = mesa(**inputs, solver=fixed(40), chunk_size=chunk)
    ref, _ = mesa_reference(**inputs)
    assert rel_err(o, ref) <= F64_RTOL


def test_no_forgetting_matches_sherman_morrison():
    inputs = make_inputs(2, 40, 2, 8, 6, gate="none")
    o, (h, s), _ = mesa(**inputs, solver=fixed(converged_iters(8)), chunk_size=16, output_final_state=True)
    sm, (r, s_sm), _ = mesa_sherman_morrison(**inputs, output_final_state=True)
    assert rel_err(sm, o) <= F64_RTOL
    assert rel_err(s_sm, s) <= F64_EXACT_RTOL
    eye = torch.eye(8, dtype=torch.float64)
    assert rel_err(r @ (h + torch.diag_embed(inputs["lam"])), eye.expand_as(r)) <= F64_RTOL  # R_T = (H_T + Lambda)^{-1}


def test_sherman_morrison_with_forgetting_forgets_the_regulariser():
    """With forgetting, the 2023 recursion solves (zeta_t Lambda + H_t) x = q: its regulariser decays."""
    inputs = make_inputs(1, 12, 1, 6, 4, gate="mid")
    sm, _, _ = mesa_sherman_morrison(**inputs)
    zeta = inputs["g"].cumsum(1).exp()  # [B, T, H] prod of gamma up to t
    scaled_lam = inputs["lam"] * zeta.unsqueeze(-1)  # [B, T, H, Dk]
    ref = []
    for t in range(12):
        step = {n: inputs[n][:, : t + 1] for n in ("q", "k", "v", "g", "beta")}
        # Same computation as the reference, but with the decayed regulariser of step t.
        o_t, _ = mesa_reference(**step, lam=scaled_lam[0, t])
        ref.append(o_t[:, -1])
    assert rel_err(sm, torch.stack(ref, dim=1)) <= F64_RTOL


@pytest.mark.parametrize("input_dtype, rtol", [(torch.float32, F32_RTOL), (torch.bfloat16, BF16_RTOL)])
def test_low_precision_inputs_stay_close_to_float64(input_dtype, rtol):
    inputs = make_inputs(2, 100, 2, 16, 16, gate="mid", dtype=input_dtype)
    o, (h, s), _ = mesa(**inputs, output_final_state=True, solver=fixed(30))
    assert o.dtype == input_dtype
    assert h.dtype == torch.float32 and s.dtype == torch.float32  # states never drop below fp32
    exact = {n: t.double() for n, t in inputs.items()}  # same rounded inputs, exact arithmetic
    ref, _ = mesa_reference(**exact)
    assert rel_err(o, ref) <= rtol


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
@pytest.mark.parametrize("tol", [0.0, 1e-8])
def test_backward_is_homogeneous_in_the_upstream_gradient(tol, preconditioner):
    inputs = make_inputs(2, 30, 2, 8, 6, initial_state=True, requires_grad=True)
    solver = SolverSettings(max_iter=40, tol=tol, preconditioner=preconditioner)
    o, (h, s), _ = mesa(**inputs, output_final_state=True, solver=solver, chunk_size=8)
    weights = [torch.randn_like(t) for t in (o, h, s)]
    base = torch.autograd.grad(_loss((o, h, s), weights), leaves(inputs), retain_graph=True)
    for scale in (1e-6, 1e-3, 1e3):
        scaled = torch.autograd.grad(_loss((o, h, s), [w * scale for w in weights]), leaves(inputs), retain_graph=True)
        for name, a, e in zip(LEAF_NAMES, scaled, base):
            assert rel_err(a, e * scale) <= HOMOGENEITY_RTOL, f"d{name} at scale {scale}"


def _steps(inputs: dict, preconditioner: str, every: int | None) -> tuple[float, int]:
    solver = SolverSettings(max_iter=100, tol=1e-4, preconditioner=preconditioner, precondition_every=every)
    _, _, stats = mesa(**inputs, solver=solver, return_stats=True)
    assert stats.max_relative_residual <= 1e-4
    return stats.mean_iterations, stats.max_iterations


def test_in_block_keys_save_cg_steps_where_the_chunk_preconditioner_leaves_them():
    """The chunk preconditioner leaves CG the keys that arrive inside its block; "chunk-keys" folds them in (decayed
    to the block's end), so at the same tolerance it needs fewer steps, refreshed every 16 tokens fewer still."""
    inputs = make_inputs(2, 256, 2, 32, 8, gate="mid", initial_state=True, dtype=torch.float32)
    for every in (None, 16):
        (chunk_mean, chunk_max), (keys_mean, keys_max) = (_steps(inputs, p, every) for p in ("chunk", "chunk-keys"))
        assert keys_mean < chunk_mean and keys_max <= chunk_max, every
    assert _steps(inputs, "chunk-keys", 16)[1] < _steps(inputs, "chunk", 16)[1]


def test_the_chunks_own_keys_in_the_chunk_preconditioner_save_cg_steps(monkeypatch):
    """``"chunk"`` puts the block's own keys into ``P`` at :data:`OWN_KEYS_SHARE` of their mean weight: fewer steps on
    average than the entering state alone, once per chunk and refreshed every 16 tokens, and no more at most when
    refreshed (once per chunk the max may take one step more on random keys: 9 vs 8 here)."""
    inputs = make_inputs(2, 256, 2, 32, 8, gate="mid", initial_state=True, dtype=torch.float32)
    for every in (None, 16):
        with_keys = _steps(inputs, "chunk", every)
        with monkeypatch.context() as patch:
            patch.setattr(preconditioners, "OWN_KEYS_SHARE", 0.0)
            without = _steps(inputs, "chunk", every)
        assert with_keys[0] < without[0], (every, with_keys, without)
        assert every is None or with_keys[1] <= without[1], (every, with_keys, without)


def test_without_decay_chunk_keys_is_the_exact_inverse():
    """Without forgetting the in-block decay is 1, so "chunk-keys" is ``(H_t + Lambda)^{-1}`` itself: its initial
    guess already meets the tolerance, where the chunk preconditioner still needs several steps."""
    inputs = make_inputs(2, 256, 2, 32, 8, gate="none", initial_state=True, dtype=torch.float32)
    assert _steps(inputs, "chunk", None)[0] > 3
    assert _steps(inputs, "chunk-keys", None)[1] == 0 and _steps(inputs, "chunk-keys", 16)[1] == 0


def test_tolerance_stops_early_and_reports_residuals():
    inputs = make_inputs(2, 64, 2, 16, 16, gate="mid", dtype=torch.float32)
    tol = 1e-4
    o, _, stats = mesa(**inputs, solver=SolverSettings(max_iter=100, tol=tol), return_stats=True)
    assert stats.max_relative_residual <= tol
    assert 0 < stats.mean_iterations < stats.max_iterations < 100  # per-token counts differ; all stopped
    # The reported residual is the solver's own: recompute ||q - (H_t + Lambda) x|| independently.
    exact = {n: t.double() for n, t in inputs.items()}
    ref, _ = mesa_reference(**exact)
    assert rel_err(o, ref) <= 100 * tol  # error <= cond * residual; cond ~ 1e2 in this problem


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
def test_without_tolerance_only_the_residual_floor_stops_a_system_early(preconditioner):
    inputs = make_inputs(1, 20, 2, 8, 8)
    _, _, stats = mesa(**inputs, solver=fixed(3, preconditioner), return_stats=True)
    assert stats.iterations.shape == (1, 20, 2) and stats.max_iterations == 3
    floor = RESIDUAL_FLOOR_EPS * torch.finfo(torch.float64).eps
    ran_all = stats.iterations == 3
    assert torch.all(ran_all | (stats.relative_residual <= floor))
    assert float(ran_all.float().mean()) > 0.5  # most of these systems need more than 3 steps


def test_zero_iterations_is_the_jacobi_initial_guess():
    """max_iter = 0 with the Jacobi preconditioner returns the initial guess x0 = q / diag(H_t + Lambda)."""
    inputs = make_inputs(1, 9, 1, 5, 3, initial_state=True)
    o, _, _ = mesa(**inputs, solver=fixed(0, "jacobi"), chunk_size=4)
    h, s = (t[0] for t in inputs["initial_state"])  # [H, Dk, Dk], [H, Dk, Dv]
    expected = []
    for t in range(9):
        gamma, b = inputs["g"][0, t].exp()[:, None, None], inputs["beta"][0, t][:, None, None]  # [H, 1, 1]
        k_t = inputs["k"][0, t]  # [H, Dk]
        h = gamma * h + b * k_t[..., :, None] * k_t[..., None, :]
        s = gamma * s + b * k_t[..., :, None] * inputs["v"][0, t][..., None, :]
        x0 = inputs["q"][0, t] / (h.diagonal(dim1=-2, dim2=-1) + inputs["lam"])
        expected.append(torch.einsum("hkv,hk->hv", s, x0))
    assert rel_err(o[0], torch.stack(expected)) <= F64_EXACT_RTOL


def test_large_lambda_approaches_gated_linear_attention():
    c = 1e6
    inputs = make_inputs(1, 40, 2, 8, 8, gate="mid")
    inputs["lam"] = torch.full_like(inputs["lam"], c)
    o, _, _ = mesa(**inputs, solver=fixed(5))
    gamma = inputs["g"].exp()
    s = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    gla = []
    for t in range(40):
        s = (
            gamma[:, t, :, None, None] * s
            + inputs["beta"][:, t, :, None, None] * inputs["k"][:, t, :, :, None] * inputs["v"][:, t, :, None, :]
        )
        gla.append(torch.einsum("bhkv,bhk->bhv", s, inputs["q"][:, t]))
    assert rel_err(c * o, torch.stack(gla, dim=1)) <= LARGE_LAMBDA_RTOL


def test_zero_query_gives_zero_output_and_finite_gradients():
    inputs = make_inputs(1, 10, 1, 4, 4, requires_grad=True)
    with torch.no_grad():
        inputs["q"][:, 3:6] = 0
    o, _, stats = mesa(**inputs, solver=fixed(10), return_stats=True)
    assert torch.all(o[:, 3:6] == 0) and torch.all(stats.iterations[:, 3:6] == 0)
    grads = torch.autograd.grad(o.sum(), leaves(inputs))
    assert all(torch.isfinite(g).all() for g in grads)


def test_states_stay_float32_on_gpu_shapes_without_cuda():
    """bf16 activations with fp32 gates and lambda: outputs bf16, solver and states fp32."""
    inputs = make_inputs(1, 16, 2, 8, 8, dtype=torch.float32)
    for n in ("q", "k", "v"):
        inputs[n] = inputs[n].to(torch.bfloat16)
    o, (h, s), _ = mesa(**inputs, output_final_state=True)
    assert o.dtype == torch.bfloat16 and h.dtype == s.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batch, length, heads, dk, dv, chunk, gate", SHAPES[2:5])
def test_cuda_matches_cpu_reference(batch, length, heads, dk, dv, chunk, gate):
    inputs = make_inputs(batch, length, heads, dk, dv, gate=gate, initial_state=True, requires_grad=True)
    ro, (rh, rs) = mesa_reference(**inputs)
    weights = [torch.randn_like(t) for t in (ro, rh, rs)]
    ref_grads = torch.autograd.grad(_loss((ro, rh, rs), weights), leaves(inputs))
    cuda_inputs = {
        n: (tuple(t.detach().cuda().requires_grad_() for t in v) if n == "initial_state" else v.detach().cuda().requires_grad_())
        for n, v in inputs.items()
    }
    o, (h, s), _ = mesa(**cuda_inputs, output_final_state=True, solver=fixed(converged_iters(dk)), chunk_size=chunk)
    for name, a, e in (("output", o, ro), ("H_kk", h, rh), ("S_kv", s, rs)):
        assert rel_err(a.cpu(), e) <= F64_RTOL, name
    grads = torch.autograd.grad(_loss((o, h, s), [w.cuda() for w in weights]), leaves(cuda_inputs))
    for name, a, e in zip(LEAF_NAMES, grads, ref_grads):
        assert rel_err(a.cpu(), e) <= F64_RTOL, name


def test_ambient_autocast_does_not_lower_the_solver_precision():
    """Under bf16 autocast the op still runs in fp32: the forward, and the backward called after the autocast
    region as PyTorch recommends (backward inside autocast re-casts PyTorch's own backward matmuls)."""
    inputs = make_inputs(1, 40, 2, 8, 8, dtype=torch.float32, requires_grad=True)
    o_ref, _, _ = mesa(**inputs)
    (grad_ref,) = torch.autograd.grad(o_ref.sum(), inputs["q"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, _, _ = mesa(**inputs)
        loss = o.sum()
    (grad,) = torch.autograd.grad(loss, inputs["q"])
    assert o.dtype == torch.float32
    assert torch.equal(o, o_ref) and torch.equal(grad, grad_ref)
