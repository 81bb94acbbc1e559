"""The recurrent token mixers (Mesa, GLA, Mamba2-style, DeltaNet, Gated DeltaNet, Sherman-Morrison Mesa):
every execution path of the layer contract (full forward, prefill + decode, prefill + continuation, left
padding, packing, train vs eval) computes the same function; gates, Lambda and the registry."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mesanet.layers import (
    GAMMA_CAP,
    LAMBDA_LOWER_BOUND,
    MIXERS,
    DeltaNet,
    GatedDeltaNet,
    GatedLinearAttention,
    Mamba2GLA,
    MesaLayer,
    RecurrentState,
    RMSNorm,
    ShermanMorrisonMesa,
    build_mixer,
    collect_solver_stats,
)
from mesanet.layers.gates import forget_gate_bias, gates

from helpers import rel_err
from tolerances import F64_EXACT_RTOL, LAYER_BF16_RTOL, LAYER_CG_F64_RTOL

KINDS = ["mesa", "gla", "mamba2", "deltanet", "gated_deltanet", "sherman_morrison"]
D, H, DK, DV = 32, 2, 16, 16
#: CG run far past convergence (3 Dk steps, no tolerance) in both modes, so every path is an exact solve
#: (decoding by CG too: the Cholesky decode is compared against it below).
EXACT_SOLVER = dict(max_iter=3 * DK, tol=0.0)
EXACT_MESA = dict(solver_training=EXACT_SOLVER, solver_inference=dict(EXACT_SOLVER, decode="cg"))
CHUNK = 8  # several chunks (and a partial last one) at T <= 40


def rtol_for(kind: str) -> float:
    """Mesa compares CG solves (converged to rounding); every other mixer compares exact algorithms."""
    return LAYER_CG_F64_RTOL if kind == "mesa" else F64_EXACT_RTOL


def make_mixer(kind: str, *, seed: int = 0, dtype=torch.float64, **options) -> torch.nn.Module:
    """A float64 mixer in eval mode, with Lambda and the norm gain moved off their constant inits."""
    torch.manual_seed(seed)
    options = {**(EXACT_MESA if kind == "mesa" else {}), "chunk_size": CHUNK, **options}
    mixer = build_mixer(kind, D, H, DK, value_head_dim=DV, dtype=dtype, **options).eval()
    with torch.no_grad():
        if hasattr(mixer, "lam_raw"):
            mixer.lam_raw.add_(0.5 * torch.randn_like(mixer.lam_raw))
        mixer.o_norm.weight.add_(0.2 * torch.randn_like(mixer.o_norm.weight))
    return mixer


def make_x(batch: int, length: int, *, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def assert_states_close(actual: RecurrentState, expected: RecurrentState, rtol: float) -> None:
    assert len(actual.recurrent) == len(expected.recurrent) > 0
    for a, e in zip(actual.recurrent, expected.recurrent):
        assert a.shape == e.shape
        assert rel_err(a, e) <= rtol
    assert set(actual.conv) == set(expected.conv) == {"q", "k"}
    for name in ("q", "k"):
        assert rel_err(actual.conv[name], expected.conv[name]) <= rtol


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_then_decode_matches_forward(kind):
    mixer, x = make_mixer(kind), make_x(2, 23)
    y, state = mixer(x, use_cache=True)
    assert y.shape == x.shape and state.seen == 23
    y_pre, s = mixer(x[:, :9], use_cache=True)
    outputs = [y_pre]
    for t in range(9, 23):
        y_t, s = mixer(x[:, t : t + 1], state=s, use_cache=True)
        outputs.append(y_t)
    assert s.seen == 23
    assert rel_err(torch.cat(outputs, dim=1), y) <= rtol_for(kind)
    assert_states_close(s, state, rtol_for(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_decode_from_scratch_matches_forward(kind):
    """An empty state (what a fresh cache holds) starts the step path from zero states."""
    mixer, x = make_mixer(kind), make_x(2, 6)
    y, state = mixer(x, use_cache=True)
    s, outputs = RecurrentState(), []
    for t in range(6):
        y_t, s = mixer(x[:, t : t + 1], state=s, use_cache=True)
        outputs.append(y_t)
    assert rel_err(torch.cat(outputs, dim=1), y) <= rtol_for(kind)
    assert_states_close(s, state, rtol_for(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_then_continuation_matches_forward(kind):
    mixer, x = make_mixer(kind), make_x(2, 31)
    y, state = mixer(x, use_cache=True)
    pieces, s = [], None
    for a, b in ((0, 7), (7, 18), (18, 20), (20, 31)):
        y_ab, s = mixer(x[:, a:b], state=s, use_cache=True)
        pieces.append(y_ab)
    assert rel_err(torch.cat(pieces, dim=1), y) <= rtol_for(kind)
    assert_states_close(s, state, rtol_for(kind))
    # without use_cache: same outputs, no state
    y_cont, none = mixer(x[:, 7:18], state=mixer(x[:, :7], use_cache=True)[1])
    assert none is None and rel_err(y_cont, y[:, 7:18]) <= rtol_for(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_left_padding_matches_each_sequence_alone(kind):
    mixer = make_mixer(kind)
    lengths, total, extra = [23, 15, 4], 23, 3
    seqs = [make_x(1, n + extra, seed=10 + i) for i, n in enumerate(lengths)]
    x = make_x(len(lengths), total, seed=99)  # garbage at padded positions: it must be ignored
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, total - n :] = seqs[i][0, :n]
        mask[i, total - n :] = 1
    y, state = mixer(x, attention_mask=mask, use_cache=True)
    # decode a few tokens after the padded prefill, the mask growing as in generate()
    decoded, s = [], state
    for j in range(extra):
        x_t = torch.cat([sq[:, n + j : n + j + 1] for sq, n in zip(seqs, lengths)])
        mask = torch.cat([mask, torch.ones(len(lengths), 1, dtype=torch.long)], dim=1)
        y_t, s = mixer(x_t, state=s, attention_mask=mask, use_cache=True)
        decoded.append(y_t)
    decoded = torch.cat(decoded, dim=1)

    for i, n in enumerate(lengths):
        y_alone, s_alone = mixer(seqs[i][:, :n], use_cache=True)
        assert rel_err(y[i, total - n :], y_alone[0]) <= rtol_for(kind)
        assert bool((y[i, : total - n] == 0).all())  # padded outputs are exactly 0
        assert_states_close(state.select(torch.tensor([i])), s_alone, rtol_for(kind))
        y_more, s_more = mixer(seqs[i][:, n:], state=s_alone, use_cache=True)
        assert rel_err(decoded[i], y_more[0]) <= rtol_for(kind)
        assert_states_close(s.select(torch.tensor([i])), s_more, rtol_for(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_packed_matches_each_sequence_alone(kind):
    mixer = make_mixer(kind)
    lengths = [9, 1, 17, 6]
    seqs = [make_x(1, n, seed=20 + i) for i, n in enumerate(lengths)]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    y, none = mixer(torch.cat(seqs, dim=1), cu_seqlens=cu)
    assert none is None and y.shape == (1, sum(lengths), D)
    # the padded batch, run sequence by sequence, is the reference
    for i, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        assert rel_err(y[:, a:b], mixer(seqs[i])[0]) <= rtol_for(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_train_mode_matches_eval_mode(kind):
    mixer, x = make_mixer(kind), make_x(2, 19)
    y_eval = mixer(x)[0]
    y_train = mixer.train()(x)[0]
    assert rel_err(y_train, y_eval) <= rtol_for(kind)


def test_mesa_modes_use_their_own_solver_settings():
    mixer = make_mixer(
        "mesa",
        solver_training=dict(max_iter=7, tol=0.0, preconditioner="none"),
        solver_inference=dict(max_iter=3, tol=0.0, preconditioner="none", decode="cg"),
    )
    x = make_x(2, 12)
    with collect_solver_stats(mixer, keep=True) as stats:
        y_train = mixer.train()(x)[0]
    assert mixer.solver.max_iter == 7 and stats.summary()[0].max_iterations == 7
    with collect_solver_stats(mixer, keep=True) as stats:
        y_eval, state = mixer.eval()(x, use_cache=True)
        mixer(x[:, :1], state=state)  # decode step: inference settings too
    assert mixer.solver.max_iter == 3 and stats.summary()[0].max_iterations == 3
    prefill, step = stats.records[""]
    assert prefill.iterations.shape == (2, 12, H) and step.iterations.shape == (2, 1, H) and step.max_iterations == 3
    assert rel_err(y_train, y_eval) > 1e-6  # 3 vs 7 steps: the eval path did not use the training settings
    # a tolerance stops early: fewer steps on average than the cap
    loose = make_mixer("mesa", solver_inference=dict(max_iter=3 * DK, tol=1e-4))
    with collect_solver_stats(loose) as stats:
        loose(x)
    (summary,) = stats.summary()
    assert summary.mean_iterations < 3 * DK and summary.max_relative_residual <= 1e-4


def test_mesa_cholesky_decode_matches_cg():
    x = make_x(2, 10)
    cg, chol = make_mixer("mesa"), make_mixer("mesa", solver_inference=dict(EXACT_SOLVER, decode="cholesky"))
    _, state = cg(x[:, :6], use_cache=True)
    for t in range(6, 10):
        y_cg, s_cg = cg(x[:, t : t + 1], state=state, use_cache=True)
        y_ch, state = chol(x[:, t : t + 1], state=state, use_cache=True)
        assert rel_err(y_ch, y_cg) <= LAYER_CG_F64_RTOL
        assert_states_close(state, s_cg, LAYER_CG_F64_RTOL)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    mixer = make_mixer(kind).train()
    x = make_x(2, 13).requires_grad_(True)
    y_pre, state = mixer(x[:, :9], use_cache=True)
    y_rest, _ = mixer(x[:, 9:], state=state)  # through a state hand-over as well
    w = torch.randn(2, 13, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (torch.cat([y_pre, y_rest], dim=1) * w).sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().max()) > 0, name
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_raises_value_error(kind):
    mixer, x = make_mixer(kind), make_x(2, 5)
    _, state = mixer(x, use_cache=True)
    packed, cu = make_x(1, 5), torch.tensor([0, 2, 5], dtype=torch.int32)
    bad_calls = [
        lambda: mixer(make_x(2, 5)[..., :-1]),  # wrong hidden size
        lambda: mixer(x[:, :0]),  # no tokens
        lambda: mixer(x, attention_mask=torch.ones(2, 4)),  # mask shorter than T
        lambda: mixer(x, attention_mask=torch.ones(3, 5)),  # mask of another batch size
        lambda: mixer(x, state=(state.recurrent,)),  # not a RecurrentState
        lambda: mixer(x[:1], state=state),  # state of another batch size
        lambda: mixer(packed, cu_seqlens=cu, state=state.select(torch.tensor([0]))),  # packed + state
        lambda: mixer(x, cu_seqlens=cu),  # packed needs B == 1
        lambda: mixer(packed, cu_seqlens=cu, use_cache=True),  # packed + cache
        lambda: mixer(packed, cu_seqlens=torch.tensor([0, 3, 3, 5])),  # empty sequence
        lambda: mixer(packed, cu_seqlens=torch.tensor([0, 4])),  # does not end at T
        lambda: mixer(packed, cu_seqlens=torch.tensor([0.0, 5.0])),  # not integer
        lambda: mixer(packed, cu_seqlens=cu, attention_mask=torch.tensor([[0, 1, 1, 1, 1]])),  # padding + packed
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()


def test_bad_options_raise_value_error():
    with pytest.raises(ValueError, match="valid kinds: .*gated_deltanet.*mesa"):
        build_mixer("mesa2", D, H, DK)
    for kind, options in [
        ("mesa", dict(solver_inference=dict(decode="lu"))),
        ("mesa", dict(solver_training=dict(max_iter=-1))),
        ("mesa", dict(solver_inference=dict(tol=float("nan")))),
        ("mesa", dict(solver_training=dict(max_iters=3))),
        ("mesa", dict(solver_training="fast")),
        ("mesa", dict(lam_init=0.2)),
        ("gla", dict(gamma_cap=1.5)),
        ("gla", dict(forget_init_range=(0.99, 0.9))),
        ("mamba2", dict(use_input_gate=True)),
        ("deltanet", dict(use_forget_gate=True)),
        ("gated_deltanet", dict(use_forget_gate=False)),
    ]:
        with pytest.raises(ValueError):
            build_mixer(kind, D, H, DK, **options)
    with pytest.raises(ValueError):
        build_mixer("gla", D, 0, DK)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gamma_cap_and_log_space_gate(dtype):
    logits = torch.tensor([-1e30, -1e4, -80.0, -20.0, -1.0, 0.0, 1.0, 20.0, 80.0, 1e4, 1e30], dtype=dtype)
    a, b = torch.meshgrid(logits, logits, indexing="ij")
    beta, g = gates(b, a)
    assert bool(torch.isfinite(g).all()) and bool((g <= 0).all())
    gamma = g.double().exp()
    bound = 1 - (1 - GAMMA_CAP) * beta.double().square()
    eps = torch.finfo(dtype).eps
    assert bool((gamma <= bound * (1 + 4 * eps)).all())
    # the cap is attained at saturated forget logits, and gamma = sigmoid(a) * cap factor in general
    assert math.isclose(float(g[-1, -1].exp()), GAMMA_CAP, rel_tol=4 * eps)
    expected = torch.sigmoid(a.double()) * bound
    assert rel_err(gamma, expected) <= 8 * eps
    # no input gate: beta = 1 in the cap; no forget gate: g = None (gamma = 1)
    beta_none, g_no_input = gates(None, a[:, 0])
    assert beta_none is None and bool((g_no_input.double().exp() <= GAMMA_CAP * (1 + 4 * eps)).all())
    assert gates(b[0], None)[1] is None
    # through a layer, on extreme inputs, and with padding neutral
    mixer = make_mixer("gated_deltanet", dtype=dtype)
    beta_l, g_l = mixer.gates(1e6 * make_x(2, 7, dtype=dtype))
    assert bool(torch.isfinite(g_l).all()) and bool(
        (g_l.double().exp() <= (1 - (1 - GAMMA_CAP) * beta_l.double() ** 2) * (1 + 4 * eps)).all()
    )


def test_forget_gate_init_spreads_time_scales():
    gamma = torch.sigmoid(forget_gate_bias(4))
    log_one_minus = (1 - gamma).log()
    assert torch.allclose(log_one_minus.diff(), torch.full((3,), math.log(1e-2) / 3, dtype=torch.float64))
    assert math.isclose(float(torch.sigmoid(forget_gate_bias(1))), 1 - 1e-2, rel_tol=1e-12)  # geometric mean
    assert math.isclose(float(gamma[0]), 0.9, rel_tol=1e-12) and math.isclose(float(gamma[-1]), 0.999, rel_tol=1e-12)
    assert bool((gamma.diff() > 0).all())
    mixer = make_mixer("gla")
    assert torch.allclose(mixer.a_proj.bias.detach(), forget_gate_bias(H))
    assert bool((mixer.b_proj.bias == 0).all())


@pytest.mark.parametrize("kind", ["mesa", "sherman_morrison"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lambda_init_and_lower_bound(kind, dtype):
    mixer = build_mixer(kind, D, H, DK, dtype=dtype)
    assert mixer.lam.shape == (H, DK)
    assert torch.allclose(mixer.lam, torch.ones_like(mixer.lam), rtol=4 * torch.finfo(dtype).eps, atol=0)
    with torch.no_grad():
        mixer.lam_raw.copy_(torch.tensor([-1e30, -1e4, -100.0, -10.0, 0.0, 10.0, 100.0, 1e4] * (H * DK // 8)).view(H, DK))
    assert bool((mixer.lam >= LAMBDA_LOWER_BOUND).all()) and bool(torch.isfinite(mixer.lam).all())
    assert float(mixer.lam.detach().min()) == LAMBDA_LOWER_BOUND
    mixer.reset_parameters()
    assert torch.allclose(mixer.lam, torch.ones_like(mixer.lam), rtol=4 * torch.finfo(dtype).eps, atol=0)


def test_no_weight_decay_convention():
    for kind in KINDS:
        mixer = build_mixer(kind, D, H, DK)
        marked = {n for n, p in mixer.named_parameters() if getattr(p, "_no_weight_decay", False)}
        expected = {n for n in ("a_proj.bias", "b_proj.bias", "lam_raw") if n in dict(mixer.named_parameters())}
        assert marked == expected, kind
        # the tag survives dtype conversion and copying
        for moved in (copy.deepcopy(mixer), mixer.to(torch.float64), copy.deepcopy(torch.nn.Sequential(mixer))[0]):
            assert {n for n, p in moved.named_parameters() if getattr(p, "_no_weight_decay", False)} == expected


def test_registry_and_factory_kwargs():
    classes = dict(
        mesa=MesaLayer,
        gla=GatedLinearAttention,
        mamba2=Mamba2GLA,
        deltanet=DeltaNet,
        gated_deltanet=GatedDeltaNet,
        sherman_morrison=ShermanMorrisonMesa,
    )
    for kind, cls in classes.items():
        assert MIXERS[kind] is cls
        mixer = build_mixer(kind, D, H, DK, value_head_dim=8, dtype=torch.float64)
        assert type(mixer) is cls
        assert all(p.dtype == torch.float64 for p in mixer.parameters())
        assert mixer.o_proj.weight.shape == (D, H * 8)
        assert mixer(make_x(1, 3))[0].shape == (1, 3, D)
    assert build_mixer("mamba2", D, H, DK).b_proj is None
    assert build_mixer("deltanet", D, H, DK).a_proj is None
    assert build_mixer("sherman_morrison", D, H, DK).a_proj is None


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_activations(kind):
    """bf16 parameters and activations: finite bf16 output, float32 states, close to the float64 layer."""
    exact = make_mixer(kind)
    mixer = copy.deepcopy(exact).to(torch.bfloat16)
    x = make_x(2, 11, dtype=torch.bfloat16)
    y, state = mixer(x, use_cache=True)
    assert y.dtype == torch.bfloat16 and bool(torch.isfinite(y).all())
    assert all(t.dtype == torch.float32 for t in state.recurrent)
    assert state.conv["q"].dtype == torch.bfloat16
    y_ref = copy.deepcopy(mixer).double()(x.double())[0]
    assert rel_err(y, y_ref) <= LAYER_BF16_RTOL


def test_rms_norm_keeps_float64():
    """The per-head norm computes in at least float32: a float64 layer must stay float64 throughout
    (a float32 round trip there would cap every float64 comparison above at ~1e-7)."""
    norm = RMSNorm(DV, dtype=torch.float64)
    x = torch.randn(3, DV, dtype=torch.float64) * (1 + 1e-12)
    expected = x / (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    assert norm(x).dtype == torch.float64 and rel_err(norm(x), expected) <= F64_EXACT_RTOL
    assert rel_err(norm(x.float()), expected) > F64_EXACT_RTOL  # float32 activations: float32 compute


@pytest.mark.parametrize("kind", KINDS)
def test_autocast_bf16(kind):
    """Under CPU autocast the projections run in bf16 but the recurrences and solves stay float32 (the
    ops switch autocast off around themselves); backward (outside the context, as recommended) works."""
    mixer = make_mixer(kind, dtype=torch.float32).train()
    x = make_x(2, 11, dtype=torch.float32).requires_grad_(True)
    y_ref = mixer(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = mixer(x, use_cache=True)
    assert y.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for t in state.recurrent)
    assert rel_err(y, y_ref) <= LAYER_BF16_RTOL
    y.float().square().sum().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in mixer.parameters())
