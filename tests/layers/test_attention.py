"""Softmax attention with RoPE: an explicit reference, the decoding paths, padding, packing, RoPE."""

from __future__ import annotations

import pytest
import torch

from mesanet.layers.attention import Attention, SlidingWindowAttention, WindowKVState
from mesanet.layers.base import KVState, RecurrentState
from mesanet.layers.rope import RotaryEmbedding, apply_rotary

from helpers import rel_err
from tolerances import F32_LAYER_RTOL, F64_EXACT_RTOL

F64 = torch.float64
HIDDEN, HEADS, HEAD_DIM = 16, 4, 8

# (num_kv_heads, window): full attention, sliding windows (1 = attend to self only), GQA
CONFIGS = [
    pytest.param(None, None, id="full"),
    pytest.param(None, 4, id="window4"),
    pytest.param(2, 3, id="gqa_window3"),
    pytest.param(1, None, id="mqa_full"),
    pytest.param(None, 1, id="window1"),
]


def make_layer(num_kv_heads=None, window=None, dtype=F64, seed=0, **kw) -> Attention:
    torch.manual_seed(seed)
    return Attention(HIDDEN, HEADS, HEAD_DIM, num_kv_heads=num_kv_heads, window=window, dtype=dtype, **kw)


def rand(*shape, seed=1, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def rope_reference(x, positions, base=10000.0):
    """Independent RoPE: channel pairs (i, i + D/2) as complex numbers times exp(i * pos * base^(-2i/D))."""
    half = x.shape[-1] // 2
    freq = base ** (-2.0 * torch.arange(half, dtype=F64) / x.shape[-1])  # [D/2]
    angle = positions.to(F64)[..., None, None] * freq  # [B, T, 1, D/2]
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], dim=-1)


def reference_attention(layer: Attention, x, key_mask=None, positions=None):
    """Naive masked softmax attention over whole sequences (no cache): ``y [B, T, D]`` in float64."""
    batch, length, _ = x.shape
    x = x.double()
    w = {n: getattr(layer, n).weight.double() for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    q = (x @ w["q_proj"].T).reshape(batch, length, HEADS, HEAD_DIM)
    k = (x @ w["k_proj"].T).reshape(batch, length, layer.num_kv_heads, HEAD_DIM)
    v = (x @ w["v_proj"].T).reshape(batch, length, layer.num_kv_heads, HEAD_DIM)
    if positions is None:
        positions = torch.arange(length).expand(batch, length)
    q, k = rope_reference(q, positions), rope_reference(k, positions)
    group = HEADS // layer.num_kv_heads
    out = torch.zeros(batch, length, HEADS, HEAD_DIM, dtype=F64)
    for b in range(batch):
        for h in range(HEADS):
            for t in range(length):
                keys = [
                    s
                    for s in range(t + 1)
                    if (layer.window is None or s > t - layer.window) and (key_mask is None or bool(key_mask[b, s]))
                ]
                if not keys:
                    continue
                scores = torch.stack([q[b, t, h] @ k[b, s, h // group] for s in keys]) / HEAD_DIM**0.5
                p = torch.softmax(scores, dim=0)
                out[b, t, h] = sum(p_s * v[b, s, h // group] for p_s, s in zip(p, keys))
    return out.reshape(batch, length, HEADS * HEAD_DIM) @ w["o_proj"].T


def left_padded(seqs, length):
    """Left-pad ``[1, T_i, D]`` sequences with random junk to ``length``: ``(x [B, T, D], mask [B, T])``."""
    rows, masks = [], []
    for i, s in enumerate(seqs):
        pad = length - s.shape[1]
        rows.append(torch.cat([rand(1, pad, HIDDEN, seed=100 + i, dtype=s.dtype), s], dim=1))
        masks.append(torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(s.shape[1], dtype=torch.long)]))
    return torch.cat(rows), torch.stack(masks)


@pytest.mark.parametrize("num_kv_heads, window", CONFIGS)
def test_matches_explicit_reference(num_kv_heads, window):
    layer = make_layer(num_kv_heads, window)
    x = rand(2, 11, HIDDEN)
    y, state = layer(x)
    assert state is None and y.shape == x.shape
    assert rel_err(y, reference_attention(layer, x)) <= F64_EXACT_RTOL


@pytest.mark.parametrize("num_kv_heads, window", CONFIGS)
def test_explicit_reference_with_left_padding(num_kv_heads, window):
    layer = make_layer(num_kv_heads, window)
    x, mask = left_padded([rand(1, 9, HIDDEN, seed=2), rand(1, 5, HIDDEN, seed=3)], 9)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    y, _ = layer(x, attention_mask=mask)
    ref = reference_attention(layer, x, key_mask=mask, positions=positions)
    real = mask.bool()
    assert rel_err(y[real], ref[real]) <= F64_EXACT_RTOL
    assert torch.all(y[~real] == 0)  # padded query rows are set to 0


@pytest.mark.parametrize("num_kv_heads, window", CONFIGS)
def test_decode_and_continuation_match_full_forward(num_kv_heads, window):
    layer = make_layer(num_kv_heads, window)
    x = rand(2, 13, HIDDEN)
    full, _ = layer(x)
    # prefill 5, decode 3 tokens one by one, continue with 4 tokens at once, decode the last one
    outs, state = [], None
    for sl in [slice(0, 5), slice(5, 6), slice(6, 7), slice(7, 8), slice(8, 12), slice(12, 13)]:
        y, state = layer(x[:, sl], state=state, use_cache=True)
        outs.append(y)
        assert state.seen == sl.stop
        if window is not None:
            assert isinstance(state, WindowKVState) and state.key.shape[1] == min(sl.stop, window - 1)
        else:
            assert type(state) is KVState and state.key.shape[1] == sl.stop
    assert rel_err(torch.cat(outs, dim=1), full) <= F64_EXACT_RTOL


@pytest.mark.parametrize("num_kv_heads, window", CONFIGS)
def test_left_padding_matches_each_sequence_alone(num_kv_heads, window):
    layer = make_layer(num_kv_heads, window)
    lengths, total, extra = [7, 3, 5], 7, 3
    seqs = [rand(1, n + extra, HIDDEN, seed=10 + i) for i, n in enumerate(lengths)]
    x, mask = left_padded([s[:, :n] for s, n in zip(seqs, lengths)], total)
    y, state = layer(x, attention_mask=mask, use_cache=True)
    outs = [y]
    for t in range(extra):  # decode with the mask growing by one column per step
        mask = torch.cat([mask, torch.ones(len(lengths), 1, dtype=torch.long)], dim=1)
        step = torch.cat([s[:, n + t : n + t + 1] for s, n in zip(seqs, lengths)])
        y, state = layer(step, state=state, attention_mask=mask, use_cache=True)
        outs.append(y)
    y = torch.cat(outs, dim=1)
    for b, (s, n) in enumerate(zip(seqs, lengths)):
        alone, _ = layer(s)
        assert rel_err(y[b, total - n :], alone[0]) <= F64_EXACT_RTOL
        assert torch.all(y[b, : total - n] == 0)


def test_left_padding_with_multi_token_continuation():
    layer = make_layer(2, 3)
    seqs = [rand(1, 9, HIDDEN, seed=20), rand(1, 6, HIDDEN, seed=21)]
    x, mask = left_padded([seqs[0][:, :5], seqs[1][:, :2]], 5)
    y0, state = layer(x, attention_mask=mask, use_cache=True)
    cont = torch.cat([seqs[0][:, 5:9], seqs[1][:, 2:6]])
    mask = torch.cat([mask, torch.ones(2, 4, dtype=torch.long)], dim=1)
    y1, _ = layer(cont, state=state, attention_mask=mask, use_cache=True)
    for b, (s, n) in enumerate([(seqs[0], 5), (seqs[1], 2)]):
        alone, _ = layer(s)
        got = torch.cat([y0[b, 5 - n :], y1[b]])
        assert rel_err(got, alone[0]) <= F64_EXACT_RTOL


def test_fully_padded_row_is_finite():
    layer = make_layer(None, None)
    x = rand(2, 4, HIDDEN)
    mask = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])
    y, state = layer(x, attention_mask=mask, use_cache=True)
    assert torch.isfinite(y).all() and torch.all(y[0] == 0)
    mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    y1, _ = layer(x[:, :1], state=state, attention_mask=mask)
    alone, _ = layer(x[:1, :1])  # the first real token of row 0 sees only itself
    assert rel_err(y1[0], alone[0]) <= F64_EXACT_RTOL


@pytest.mark.parametrize("num_kv_heads, window", CONFIGS)
def test_packed_sequences_match_each_sequence_alone(num_kv_heads, window):
    layer = make_layer(num_kv_heads, window)
    seqs = [rand(1, n, HIDDEN, seed=30 + i) for i, n in enumerate([3, 6, 1, 4])]
    cu = torch.tensor([0, 3, 9, 10, 14], dtype=torch.int32)
    packed = torch.cat(seqs, dim=1)
    y, _ = layer(packed, cu_seqlens=cu)
    positions = torch.cat([torch.arange(s.shape[1]) for s in seqs]).unsqueeze(0)
    y_pos, _ = layer(packed, cu_seqlens=cu, position_ids=positions)  # the model's explicit positions
    assert rel_err(y_pos, y) <= F64_EXACT_RTOL
    alone = torch.cat([layer(s)[0] for s in seqs], dim=1)
    assert rel_err(y, alone) <= F64_EXACT_RTOL


def test_train_equals_eval():
    layer = make_layer(2, 3)
    x = rand(2, 9, HIDDEN)
    layer.train()
    y_train, _ = layer(x)
    layer.eval()
    y_eval, _ = layer(x)
    assert torch.equal(y_train, y_eval)


@pytest.mark.parametrize("num_kv_heads, window", CONFIGS)
def test_gradients_reach_every_parameter(num_kv_heads, window):
    layer = make_layer(num_kv_heads, window)
    x, mask = left_padded([rand(1, 8, HIDDEN, seed=4), rand(1, 5, HIDDEN, seed=5)], 8)
    x.requires_grad_(True)
    y, _ = layer(x, attention_mask=mask)
    (y * rand(*y.shape, seed=6)).sum().backward()
    for name, p in [("x", x), *layer.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_return_weights():
    layer = make_layer(2, 3)
    x, mask = left_padded([rand(1, 7, HIDDEN, seed=7), rand(1, 4, HIDDEN, seed=8)], 7)
    y, state = layer(x[:, :5], attention_mask=mask[:, :5], use_cache=True)
    y_w, state_w, weights = layer(x[:, :5], attention_mask=mask[:, :5], use_cache=True, return_weights=True)
    assert rel_err(y_w, y) <= F64_EXACT_RTOL and weights.shape == (2, HEADS, 5, 5)
    real = mask[:, :5].bool()
    rows = weights.sum(-1)  # [B, H, T]
    assert torch.allclose(rows.permute(0, 2, 1)[real], torch.ones(()).double())
    assert torch.all(weights.permute(0, 2, 1, 3)[~real] == 0)  # padded query rows
    assert torch.all(weights[1, :, :, :3] == 0)  # padded keys of row 1
    i, j = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    assert torch.all(weights[:, :, (j > i) | (j <= i - 3)] == 0)  # causal, window 3
    # with a (trimmed) cache: weights over the cached keys plus the new one
    _, _, w_step = layer(x[:, 5:6], state=state_w, attention_mask=mask[:, :6], return_weights=True)
    assert w_step.shape == (2, HEADS, 1, 3)
    assert torch.allclose(w_step.sum(-1), torch.ones(()).double())


def test_float32_paths_agree():
    layer = make_layer(2, 4, dtype=torch.float32)
    x = rand(2, 12, HIDDEN, dtype=torch.float32)
    full, _ = layer(x)
    assert rel_err(full, reference_attention(layer, x)) <= F32_LAYER_RTOL
    _, _, weights = layer(x, return_weights=True)
    assert weights.dtype == torch.float32
    y, state = layer(x[:, :6], use_cache=True)
    outs = [y]
    for t in range(6, 12):
        y, state = layer(x[:, t : t + 1], state=state, use_cache=True)
        outs.append(y)
    assert rel_err(torch.cat(outs, dim=1), full) <= F32_LAYER_RTOL


def test_bf16_runs():
    layer = make_layer(2, 4, dtype=torch.bfloat16)
    x = rand(2, 6, HIDDEN, dtype=torch.bfloat16)
    y, state = layer(x, use_cache=True)
    y2, _ = layer(x[:, :1], state=state)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all() and torch.isfinite(y2).all()


def test_rope_scores_depend_only_on_position_differences():
    rope = RotaryEmbedding(HEAD_DIM)
    q, k = rand(1, 1, 1, HEAD_DIM, seed=9), rand(1, 1, 1, HEAD_DIM, seed=10)

    def score(m, n):  # float64 angles, so that the property holds to rounding
        cq, sq = rope(torch.tensor([[m]]), F64)
        ck, sk = rope(torch.tensor([[n]]), F64)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    for m, n in [(0, 0), (5, 2), (2, 5), (17, 3), (1000, 999)]:
        for shift in (1, 7, 123):
            assert rel_err(score(m + shift, n + shift), score(m, n)) <= F64_EXACT_RTOL, (m, n, shift)
    assert rel_err(score(0, 0), (q * k).sum()) <= F64_EXACT_RTOL  # position 0 is the identity
    assert rel_err(score(5, 2), score(2, 5)) > F32_LAYER_RTOL  # but the sign of the offset matters


def test_rope_matches_complex_reference():
    rope = RotaryEmbedding(HEAD_DIM, base=500.0)
    x = rand(2, 6, 3, HEAD_DIM, seed=11)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]])
    cos, sin = rope(positions)
    assert cos.dtype == torch.float32
    assert rel_err(apply_rotary(x, cos, sin), rope_reference(x, positions, base=500.0)) <= F32_LAYER_RTOL


def test_rope_theta_option():
    a, b = make_layer(rope_theta=10000.0), make_layer(rope_theta=100.0)
    x = rand(1, 6, HIDDEN)
    assert rel_err(a(x)[0], b(x)[0]) > 1e-3


def test_reset_parameters_and_factory_kwargs():
    layer = make_layer(2, 3)
    assert all(p.dtype == F64 for p in layer.parameters())
    before = layer.q_proj.weight.clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.q_proj.weight)
    std = float(layer.q_proj.weight.detach().std())  # fan-in normal: 1/sqrt(16) over 512 samples
    assert 0.75 * HIDDEN**-0.5 < std < 1.25 * HIDDEN**-0.5


def test_sliding_window_class():
    layer = SlidingWindowAttention(HIDDEN, HEADS, HEAD_DIM, window=3, num_kv_heads=2, rope_theta=500.0)
    assert layer.window == 3 and layer.num_kv_heads == 2 and layer.rotary.base == 500.0


def test_state_select_keeps_offset():
    layer = make_layer(None, 2)
    x = rand(3, 5, HIDDEN)
    _, state = layer(x, use_cache=True)
    picked = state.select(torch.tensor([2, 0]))
    assert isinstance(picked, WindowKVState) and picked.seen == 5 and picked.key.shape == (2, 1, HEADS, HEAD_DIM)


def bad_calls():
    layer = make_layer(2, 3)
    x = rand(2, 5, HIDDEN)
    _, state = layer(x, use_cache=True)
    one = rand(1, 5, HIDDEN)
    cu = torch.tensor([0, 2, 5])
    return layer, [
        ("rank", lambda: layer(x[0])),
        ("width", lambda: layer(rand(2, 5, HIDDEN + 1))),
        ("empty", lambda: layer(x[:, :0])),
        ("state type", lambda: layer(x, state=RecurrentState())),
        ("state batch", lambda: layer(x[:1], state=state)),
        ("mask length", lambda: layer(x, attention_mask=torch.ones(2, 4))),
        ("mask with state length", lambda: layer(x[:, :1], state=state, attention_mask=torch.ones(2, 1))),
        ("positions shape", lambda: layer(x, position_ids=torch.zeros(2, 4, dtype=torch.long))),
        ("positions dtype", lambda: layer(x, position_ids=torch.zeros(2, 5))),
        ("cu batch", lambda: layer(x, cu_seqlens=cu)),
        ("cu end", lambda: layer(one, cu_seqlens=torch.tensor([0, 2, 4]))),
        ("cu dtype", lambda: layer(one, cu_seqlens=torch.tensor([0.0, 5.0]))),
        ("cu with state", lambda: layer(one, state=KVState(state.key[:1], state.value[:1]), cu_seqlens=cu)),
        ("cu with mask", lambda: layer(one, attention_mask=torch.ones(1, 5), cu_seqlens=cu)),
        ("cu with cache", lambda: layer(one, cu_seqlens=cu, use_cache=True)),
        ("kv heads", lambda: Attention(HIDDEN, 4, 8, num_kv_heads=3)),
        ("odd head_dim", lambda: Attention(HIDDEN, 4, 7)),
        ("window", lambda: Attention(HIDDEN, 4, 8, window=0)),
        ("sliding without window", lambda: SlidingWindowAttention(HIDDEN, 4, 8)),
    ]


@pytest.mark.parametrize("case", [name for name, _ in bad_calls()[1]])
def test_bad_inputs_raise_value_error(case):
    call = dict(bad_calls()[1])[case]
    with pytest.raises(ValueError):
        call()
