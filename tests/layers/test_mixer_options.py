"""The optional parts of the recurrent mixers' parameterisation (``beta_max``, ``use_output_gate``, ``conv_on_v``):
what each computes, and that every execution path (chunked forward, token-by-token decoding, prefill + continuation,
left padding, packing) still computes one function with them; gradients reach the new parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mesanet.layers import RecurrentState, build_mixer
from mesanet.ops import delta_rule

from helpers import rel_err
from tolerances import F64_EXACT_RTOL, LAYER_CG_F64_RTOL

KINDS = ["mesa", "gla", "mamba2", "deltanet", "gated_deltanet", "sherman_morrison"]
D, H, DK, DV = 32, 2, 16, 8
CHUNK = 8
EXACT_SOLVER = dict(max_iter=3 * DK, tol=0.0)
#: Every option switched on (beta up to 2: the reflecting delta rule).
ALL_ON = dict(use_output_gate=True, conv_on_v=True, beta_max=2.0)


def rtol_for(kind: str) -> float:
    return LAYER_CG_F64_RTOL if kind == "mesa" else F64_EXACT_RTOL


def make_mixer(kind: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "mesa":
        options = dict(solver_training=EXACT_SOLVER, solver_inference=dict(EXACT_SOLVER, decode="cg"), **options)
    if kind == "mamba2":  # no input gate: beta_max has nothing to scale
        options.pop("beta_max", None)
    return build_mixer(kind, D, H, DK, value_head_dim=DV, chunk_size=CHUNK, dtype=torch.float64, **options).eval()


def make_x(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_states_close(actual: RecurrentState, expected: RecurrentState, rtol: float) -> None:
    assert set(actual.conv) == set(expected.conv) == {"q", "k", "v"}
    for a, e in zip((*actual.recurrent, *actual.conv.values()), (*expected.recurrent, *expected.conv.values())):
        assert a.shape == e.shape and rel_err(a, e) <= rtol


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_parameters(kind):
    plain, gated = make_mixer(kind), make_mixer(kind, **ALL_ON)
    assert plain.g_proj is None and plain.v_conv is None
    assert gated.g_proj.weight.shape == (H * DV, D) and gated.v_conv.weight.shape == (H * DV, 4)
    extra = sum(p.numel() for p in gated.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == H * DV * D + H * DV * 4
    x = make_x(2, 13)
    y, state = gated(x, use_cache=True)
    assert y.shape == x.shape and state.conv["v"].shape == (2, 3, H * DV)


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_forward_equals_token_by_token_decoding(kind):
    mixer, x = make_mixer(kind, **ALL_ON), make_x(2, 21)
    y, state = mixer(x, use_cache=True)
    s, outputs = RecurrentState(), []
    for t in range(21):
        y_t, s = mixer(x[:, t : t + 1], state=s, use_cache=True)
        outputs.append(y_t)
    assert rel_err(torch.cat(outputs, dim=1), y) <= rtol_for(kind)
    assert_states_close(s, state, rtol_for(kind))
    pieces, s = [], None  # prefill + continuation in uneven pieces
    for a, b in ((0, 5), (5, 14), (14, 21)):
        y_ab, s = mixer(x[:, a:b], state=s, use_cache=True)
        pieces.append(y_ab)
    assert rel_err(torch.cat(pieces, dim=1), y) <= rtol_for(kind)
    assert_states_close(s, state, rtol_for(kind))


@pytest.mark.parametrize("kind", ["gated_deltanet", "gla"])
def test_left_padding_and_packing_equal_each_sequence_alone(kind):
    mixer = make_mixer(kind, **ALL_ON)
    lengths = [11, 4, 7]
    seqs = [make_x(1, n, seed=10 + i) for i, n in enumerate(lengths)]
    total = max(lengths)
    x, mask = make_x(len(lengths), total, seed=99), torch.zeros(len(lengths), total, dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, total - n :], mask[i, total - n :] = seqs[i][0], 1
    y = mixer(x, attention_mask=mask)[0]
    cu = torch.tensor([0, 11, 15, 22], dtype=torch.int32)
    packed = mixer(torch.cat(seqs, dim=1), cu_seqlens=cu)[0]
    for i, n in enumerate(lengths):
        alone = mixer(seqs[i])[0]
        assert rel_err(y[i, total - n :], alone[0]) <= F64_EXACT_RTOL and bool((y[i, : total - n] == 0).all())
        assert rel_err(packed[:, cu[i] : cu[i + 1]], alone) <= F64_EXACT_RTOL


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    mixer = make_mixer(kind, **ALL_ON).train()
    x = make_x(2, 13).requires_grad_(True)
    y_pre, state = mixer(x[:, :9], use_cache=True)
    y_rest, _ = mixer(x[:, 9:], state=state)
    w = torch.randn(2, 13, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (torch.cat([y_pre, y_rest], dim=1) * w).sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().max()) > 0, name


def test_beta_max_scales_the_input_gate():
    x = 3.0 * make_x(2, 9)
    one, two = make_mixer("gated_deltanet"), make_mixer("gated_deltanet", beta_max=2.0)
    with torch.no_grad():
        (beta1, g1), (beta2, g2) = one.gates(x), two.gates(x)
    assert torch.allclose(beta2, 2 * beta1, rtol=1e-15) and float(beta2.max()) > 1.0 and float(beta2.min()) >= 0
    # the gamma cap sees the scaled beta: gamma = sigmoid(a) * (1 - (1 - cap) beta^2)
    cap = one.gamma_cap
    assert torch.allclose(g2 - g1, torch.log1p(-(1 - cap) * beta2**2) - torch.log1p(-(1 - cap) * beta1**2), rtol=1e-12)
    for bad in (0.0, 2.5, -1.0):
        with pytest.raises(ValueError, match="beta_max"):
            build_mixer("gated_deltanet", D, H, DK, beta_max=bad)


def test_output_gate_multiplies_the_normalised_heads():
    """``y = W_o [RMSNorm(o_h) * SiLU(W_g x)_h]``: with the gate weights zero every output is 0; with the gate
    equal to a constant c the output is SiLU(c) times the ungated layer's."""
    gated, plain = make_mixer("gated_deltanet", use_output_gate=True), make_mixer("gated_deltanet")
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("g_proj")})
    x = make_x(2, 10)
    with torch.no_grad():
        gated.g_proj.weight.zero_()
    assert bool((gated(x)[0] == 0).all())
    # the gate reads only channel 0 of x, set to 1, with weight c: every gate is SiLU(c)
    c = 1.7
    x_gate = x.clone()
    x_gate[..., 0] = 1.0
    with torch.no_grad():
        gated.g_proj.weight[:, 0] = c
    assert rel_err(gated(x_gate)[0], F.silu(torch.tensor(c, dtype=torch.float64)) * plain(x_gate)[0]) <= F64_EXACT_RTOL


def test_conv_on_v_convolves_the_values():
    """With ``conv_on_v`` the values are ``SiLU(conv4(W_v x))`` (causal, width 4), as q and k; the layer equals
    the op applied to streams built by hand."""
    mixer, x = make_mixer("deltanet", conv_on_v=True), make_x(2, 11)

    def causal_conv(z, weight):  # z [B, T, C], weight [C, W]: sum_j weight[:, j] * z_{t-j}
        padded = F.pad(z, (0, 0, weight.shape[1] - 1, 0))
        return F.silu(
            sum(
                weight[:, j] * padded[:, weight.shape[1] - 1 - j : weight.shape[1] - 1 - j + z.shape[1]]
                for j in range(weight.shape[1])
            )
        )

    with torch.no_grad():
        q = F.normalize(causal_conv(mixer.q_proj(x), mixer.q_conv.weight).view(2, 11, H, DK), dim=-1)
        k = F.normalize(causal_conv(mixer.k_proj(x), mixer.k_conv.weight).view(2, 11, H, DK), dim=-1)
        v = causal_conv(mixer.v_proj(x), mixer.v_conv.weight).view(2, 11, H, DV)
        beta, _ = mixer.gates(x)
        o = delta_rule(q, k, v, None, beta).output
        expected = mixer.o_proj(mixer.o_norm(o).reshape(2, 11, H * DV))
        assert rel_err(mixer(x)[0], expected) <= F64_EXACT_RTOL
        # without the option the values are W_v x itself: another function
        assert rel_err(make_mixer("deltanet")(x)[0], expected) > 1e-3
