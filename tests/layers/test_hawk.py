"""Hawk (Griffin's RG-LRU block): the parallel scan, a naive token loop, decoding, padding, packing."""

from __future__ import annotations

import math

import pytest
import torch

from mesanet.layers.base import KVState, RecurrentState
from mesanet.layers.hawk import RG_LRU_INIT_RANGE, Hawk, rg_lru_scan, rg_lru_step

from helpers import GATE_RANGES, rel_err
from tolerances import F32_LAYER_RTOL, F64_EXACT_RTOL

F64 = torch.float64
HIDDEN, HEADS, HEAD_DIM, EXPANSION = 16, 2, 4, 1.25  # recurrence width 2 * 5 = 10


def make_layer(dtype=F64, seed=0, **kw) -> Hawk:
    torch.manual_seed(seed)
    kw.setdefault("expansion", EXPANSION)
    kw.setdefault("chunk_size", 4)  # several chunks at the test lengths
    return Hawk(HIDDEN, HEADS, HEAD_DIM, dtype=dtype, **kw)


def rand(*shape, seed=1, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def naive_scan(a, u, h0):
    h, out = h0, []
    for t in range(a.shape[1]):
        h = a[:, t] * h + u[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def hawk_reference(layer: Hawk, x, key_mask=None, normalise=True):
    """Token loop in float64 written from the Griffin equations: ``y [B, T, D]`` (0 at padded tokens)."""
    batch, length, _ = x.shape
    x = x.double()
    p = {n: t.detach().double() for n, t in layer.named_parameters()}
    heads, width, e = layer.num_heads, layer.width, layer.block_width
    pre = x @ p["gate_proj.weight"].T
    gate = 0.5 * pre * (1 + torch.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre**3)))  # GeLU (tanh)
    xb = x @ p["x_proj.weight"].T  # [B, T, W]
    if key_mask is not None:
        xb = xb * key_mask[..., None]
    base = torch.sigmoid(-p["a_param"])  # a = sigmoid(-Lambda); a_t = a^(c r_t)
    y = torch.zeros(batch, length, HIDDEN, dtype=F64)
    for b in range(batch):
        h = torch.zeros(width, dtype=F64)
        for t in range(length):
            if key_mask is not None and not key_mask[b, t]:
                continue
            z = p["conv.bias"].clone()
            for j in range(layer.conv_size):
                if t - j >= 0:
                    z = z + p["conv.weight"][:, j] * xb[b, t - j]
            zh = z.reshape(heads, e)
            r = torch.sigmoid(torch.einsum("hi,hio->ho", zh, p["r_gate.weight"]) + p["r_gate.bias"]).reshape(width)
            i = torch.sigmoid(torch.einsum("hi,hio->ho", zh, p["i_gate.weight"]) + p["i_gate.bias"]).reshape(width)
            a = base ** (layer.c * r)
            scale = torch.sqrt(1 - a**2) if normalise else 1.0
            h = a * h + scale * i * z
            y[b, t] = (gate[b, t] * h) @ p["o_proj.weight"].T
    return y


def left_padded(seqs, length):
    rows, masks = [], []
    for i, s in enumerate(seqs):
        pad = length - s.shape[1]
        rows.append(torch.cat([rand(1, pad, HIDDEN, seed=100 + i, dtype=s.dtype), s], dim=1))
        masks.append(torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(s.shape[1], dtype=torch.long)]))
    return torch.cat(rows), torch.stack(masks)


# ---------------------------------------------------------------------------------------------- scan


def scan_inputs(gate, batch=2, length=37, width=5, dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lo, hi = GATE_RANGES[gate]
    a = lo + (hi - lo) * torch.rand(batch, length, width, generator=gen, dtype=F64)
    a[:, ::9] = 0.0  # resets (packed-sequence starts)
    u = torch.randn(batch, length, width, generator=gen, dtype=F64)
    h0 = torch.randn(batch, width, generator=gen, dtype=F64)
    return [t.to(dtype).requires_grad_(True) for t in (a, u, h0)]


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
@pytest.mark.parametrize("gate", list(GATE_RANGES))
def test_scan_matches_naive_loop(gate, chunk):
    a, u, h0 = scan_inputs(gate)
    h = rg_lru_scan(a, u, h0, chunk)
    ref = naive_scan(a, u, h0)
    assert rel_err(h, ref) <= F64_EXACT_RTOL
    w = rand(*h.shape, seed=3)
    grads = torch.autograd.grad((h * w).sum(), (a, u, h0))
    ref_grads = torch.autograd.grad((ref * w).sum(), (a, u, h0))
    for name, g, r in zip(("a", "u", "h0"), grads, ref_grads):
        assert rel_err(g, r) <= F64_EXACT_RTOL, name


def test_scan_gradcheck():
    a, u, h0 = scan_inputs("mid", batch=1, length=11, width=3)
    assert torch.autograd.gradcheck(lambda a, u, h0: rg_lru_scan(a, u, h0, 4), (a, u, h0))


def test_scan_float32_and_extreme_decay():
    a, u, h0 = scan_inputs("strong", dtype=torch.float32)
    ref = naive_scan(*(t.double() for t in (a, u, h0)))
    assert rel_err(rg_lru_scan(a, u, h0, 8), ref) <= F32_LAYER_RTOL
    # decays far below float32's range of products, and exactly 1 (padding): still exact and finite
    a = torch.full((1, 300, 4), 1e-30)
    a[:, 100:200] = 1.0
    u = torch.randn(1, 300, 4)
    h = rg_lru_scan(a, u, None, 16)
    assert (
        torch.isfinite(h).all() and rel_err(h, naive_scan(a.double(), u.double(), torch.zeros(1, 4, dtype=F64))) <= F32_LAYER_RTOL
    )


def test_step_matches_scan():
    a, u, h0 = scan_inputs("mid", length=1)
    assert rel_err(rg_lru_step(a[:, 0], u[:, 0], h0), rg_lru_scan(a, u, h0)[:, 0]) <= F64_EXACT_RTOL


# ---------------------------------------------------------------------------------------------- layer


def test_matches_naive_token_loop_with_normalisation():
    layer = make_layer()
    x = rand(2, 13, HIDDEN)
    y, state = layer(x)
    assert state is None and y.shape == x.shape
    assert rel_err(y, hawk_reference(layer, x)) <= F64_EXACT_RTOL
    # the sqrt(1 - a^2) input normalisation is there: without it the reference is far off
    assert rel_err(y, hawk_reference(layer, x, normalise=False)) > 0.5


def test_matches_naive_token_loop_with_left_padding():
    layer = make_layer()
    x, mask = left_padded([rand(1, 10, HIDDEN, seed=2), rand(1, 4, HIDDEN, seed=3)], 10)
    y, _ = layer(x, attention_mask=mask)
    assert rel_err(y, hawk_reference(layer, x, key_mask=mask)) <= F64_EXACT_RTOL
    assert torch.all(y[~mask.bool()] == 0)


def test_decode_and_continuation_match_full_forward():
    layer = make_layer()
    x = rand(2, 14, HIDDEN)
    full, _ = layer(x)
    outs, state = [], None
    for sl in [slice(0, 5), slice(5, 6), slice(6, 7), slice(7, 8), slice(8, 13), slice(13, 14)]:
        y, state = layer(x[:, sl], state=state, use_cache=True)
        outs.append(y)
        assert isinstance(state, RecurrentState) and state.seen == sl.stop
        assert state.recurrent[0].shape == (2, layer.width) and state.conv["x"].shape == (2, 3, layer.width)
    assert rel_err(torch.cat(outs, dim=1), full) <= F64_EXACT_RTOL
    # decoding from the very first token
    outs, state = [], None
    for t in range(4):
        y, state = layer(x[:, t : t + 1], state=state, use_cache=True)
        outs.append(y)
    assert rel_err(torch.cat(outs, dim=1), full[:, :4]) <= F64_EXACT_RTOL


def test_left_padding_matches_each_sequence_alone():
    layer = make_layer()
    lengths, total, extra = [7, 2, 5], 7, 3
    seqs = [rand(1, n + extra + 2, HIDDEN, seed=10 + i) for i, n in enumerate(lengths)]
    x, mask = left_padded([s[:, :n] for s, n in zip(seqs, lengths)], total)
    y, state = layer(x, attention_mask=mask, use_cache=True)
    outs = [y]
    for t in range(extra):
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
        y, state = layer(
            torch.cat([s[:, n + t : n + t + 1] for s, n in zip(seqs, lengths)]), state=state, attention_mask=mask, use_cache=True
        )
        outs.append(y)
    mask = torch.cat([mask, torch.ones(3, 2, dtype=torch.long)], dim=1)  # multi-token continuation
    y, _ = layer(torch.cat([s[:, n + extra : n + extra + 2] for s, n in zip(seqs, lengths)]), state=state, attention_mask=mask)
    outs.append(y)
    y = torch.cat(outs, dim=1)
    for b, (s, n) in enumerate(zip(seqs, lengths)):
        alone, _ = layer(s)
        assert rel_err(y[b, total - n :], alone[0]) <= F64_EXACT_RTOL
        assert torch.all(y[b, : total - n] == 0)


def test_padding_leaves_the_recurrent_state_unchanged():
    layer = make_layer()
    x = rand(2, 6, HIDDEN)
    _, state = layer(x[:, :4], use_cache=True)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    y, after = layer(x[:, 4:], state=state, attention_mask=mask, use_cache=True)
    assert torch.equal(after.recurrent[0][0], state.recurrent[0][0])  # row 0: both tokens padded
    assert not torch.equal(after.recurrent[0][1], state.recurrent[0][1])
    assert torch.all(y[0] == 0) and torch.all(y[1, 1] == 0)
    _, step = layer(x[:, 4:5], state=state, attention_mask=mask[:, :5], use_cache=True)  # decode path
    assert torch.equal(step.recurrent[0][0], state.recurrent[0][0])


def test_packed_sequences_match_each_sequence_alone():
    layer = make_layer()
    seqs = [rand(1, n, HIDDEN, seed=30 + i) for i, n in enumerate([3, 6, 1, 5])]
    cu = torch.tensor([0, 3, 9, 10, 15], dtype=torch.int32)
    y, state = layer(torch.cat(seqs, dim=1), cu_seqlens=cu)
    alone = torch.cat([layer(s)[0] for s in seqs], dim=1)
    assert state is None and rel_err(y, alone) <= F64_EXACT_RTOL


def test_train_equals_eval():
    layer = make_layer()
    x = rand(2, 9, HIDDEN)
    layer.train()
    y_train, _ = layer(x)
    layer.eval()
    y_eval, _ = layer(x)
    assert torch.equal(y_train, y_eval)


def test_gradients_reach_every_parameter():
    layer = make_layer()
    x, mask = left_padded([rand(1, 9, HIDDEN, seed=4), rand(1, 5, HIDDEN, seed=5)], 9)
    x.requires_grad_(True)
    y, _ = layer(x, attention_mask=mask)
    (y * rand(*y.shape, seed=6)).sum().backward()
    for name, p in [("x", x), *layer.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_gradients_match_naive_token_loop():
    layer = make_layer()
    x = rand(1, 9, HIDDEN)
    w = rand(1, 9, HIDDEN, seed=7)
    grads = torch.autograd.grad((layer(x)[0] * w).sum(), list(layer.parameters()))
    # the reference with live parameters: same equations, autograd through the token loop
    ref_layer = make_layer()
    params = dict(ref_layer.named_parameters())
    ref = _reference_with_grad(ref_layer, x)
    ref_grads = torch.autograd.grad((ref * w).sum(), list(params.values()))
    for (name, _), g, r in zip(layer.named_parameters(), grads, ref_grads):
        assert rel_err(g, r) <= F64_EXACT_RTOL, name


def _reference_with_grad(layer: Hawk, x):
    """:func:`hawk_reference` without the detach (no padding), for gradients."""
    p = dict(layer.named_parameters())
    heads, width, e = layer.num_heads, layer.width, layer.block_width
    gate = torch.nn.functional.gelu(x @ p["gate_proj.weight"].T, approximate="tanh")
    xb = x @ p["x_proj.weight"].T
    base = torch.sigmoid(-p["a_param"])
    h, out = torch.zeros(width, dtype=F64), []
    for t in range(x.shape[1]):
        z = p["conv.bias"] + sum(p["conv.weight"][:, j] * xb[0, t - j] for j in range(layer.conv_size) if t - j >= 0)
        zh = z.reshape(heads, e)
        r = torch.sigmoid(torch.einsum("hi,hio->ho", zh, p["r_gate.weight"]) + p["r_gate.bias"]).reshape(width)
        i = torch.sigmoid(torch.einsum("hi,hio->ho", zh, p["i_gate.weight"]) + p["i_gate.bias"]).reshape(width)
        a = base ** (layer.c * r)
        h = a * h + torch.sqrt(1 - a**2) * i * z
        out.append((gate[0, t] * h) @ p["o_proj.weight"].T)
    return torch.stack(out).unsqueeze(0)


def test_lambda_init_and_parameters():
    layer = make_layer(dtype=torch.float32)
    a_c = torch.exp(-layer.c * torch.nn.functional.softplus(layer.a_param.detach().double()))
    lo, hi = RG_LRU_INIT_RANGE
    assert a_c.min() >= lo and a_c.max() <= hi
    big = Hawk(16, 4, 64, dtype=torch.float64)  # 256 draws: spread over the range
    a_c = torch.exp(-big.c * torch.nn.functional.softplus(big.a_param.detach()))
    assert a_c.min() < lo + 0.1 * (hi - lo) and a_c.max() > hi - 0.1 * (hi - lo)
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    assert layer.width == HEADS * round(EXPANSION * HEAD_DIM) and layer.o_proj.in_features == layer.width
    assert getattr(layer.a_param, "_no_weight_decay", False) and getattr(layer.r_gate.bias, "_no_weight_decay", False)
    before = layer.a_param.detach().clone()
    layer.reset_special_parameters()
    assert not torch.equal(before, layer.a_param)


def test_float32_paths_agree():
    layer = make_layer(dtype=torch.float32)
    x = rand(2, 12, HIDDEN, dtype=torch.float32)
    full, _ = layer(x)
    assert rel_err(full, hawk_reference(layer, x)) <= F32_LAYER_RTOL
    y, state = layer(x[:, :5], use_cache=True)
    assert state.recurrent[0].dtype == torch.float32
    outs = [y]
    for t in range(5, 12):
        y, state = layer(x[:, t : t + 1], state=state, use_cache=True)
        outs.append(y)
    assert rel_err(torch.cat(outs, dim=1), full) <= F32_LAYER_RTOL


def test_bf16_runs_with_float32_state():
    layer = make_layer(dtype=torch.bfloat16)
    x = rand(2, 6, HIDDEN, dtype=torch.bfloat16)
    y, state = layer(x, use_cache=True)
    y2, state = layer(x[:, :1], state=state, use_cache=True)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all() and torch.isfinite(y2).all()
    assert state.recurrent[0].dtype == torch.float32


def bad_calls():
    layer = make_layer()
    x = rand(2, 5, HIDDEN)
    _, state = layer(x, use_cache=True)
    one = rand(1, 5, HIDDEN)
    cu = torch.tensor([0, 2, 5])
    return [
        ("rank", lambda: layer(x[0])),
        ("width", lambda: layer(rand(2, 5, HIDDEN + 1))),
        ("empty", lambda: layer(x[:, :0])),
        ("state type", lambda: layer(x, state=KVState(x, x))),
        ("state batch", lambda: layer(x[:1], state=state)),
        ("mask batch", lambda: layer(x, attention_mask=torch.ones(3, 5))),
        ("mask short", lambda: layer(x, attention_mask=torch.ones(2, 4))),
        ("cu batch", lambda: layer(x, cu_seqlens=cu)),
        ("cu end", lambda: layer(one, cu_seqlens=torch.tensor([0, 2, 4]))),
        ("cu with state", lambda: layer(one, state=state.select(torch.tensor([0])), cu_seqlens=cu)),
        ("cu with mask", lambda: layer(one, attention_mask=torch.ones(1, 5), cu_seqlens=cu)),
        ("cu with cache", lambda: layer(one, cu_seqlens=cu, use_cache=True)),
        ("expansion", lambda: Hawk(HIDDEN, 2, 4, expansion=0.0)),
        ("init range", lambda: Hawk(HIDDEN, 2, 4, decay_init_range=(0.9, 1.0))),
        ("heads", lambda: Hawk(HIDDEN, 0, 4)),
        ("scan shapes", lambda: rg_lru_scan(torch.rand(1, 3, 2), torch.rand(1, 3, 3))),
    ]


@pytest.mark.parametrize("case", [name for name, _ in bad_calls()])
def test_bad_inputs_raise_value_error(case):
    with pytest.raises(ValueError):
        dict(bad_calls())[case]()
