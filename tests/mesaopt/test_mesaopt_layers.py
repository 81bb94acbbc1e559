"""Mixers of the mesa-optimization models: linear attention from products, linear / softmax self-attention and
the paper-B regression mesa layer, each against an explicit float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

from mesanet.mesaopt.analysis import GDConstruction
from mesanet.mesaopt.layers import LinearSelfAttention, RegressionMesa, SoftmaxSelfAttention
from mesanet.ops import linear_attention_from_products

from helpers import rel_err
from tolerances import MESAOPT_CG_F64_RTOL, MESAOPT_F64_RTOL


def _randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _layer(kind: str, dim=12, heads=2, key=6, seed=0):
    torch.manual_seed(seed)
    if kind == "linear":
        layer = LinearSelfAttention(dim, heads, key, init_std=0.3)
    elif kind == "softmax":
        layer = SoftmaxSelfAttention(dim, heads, key, init_std=0.3)
    else:
        layer = RegressionMesa(dim, heads, key, variant=kind, init_std=0.3)
    return layer.double()


# --------------------------------------------------------------------------- linear attention from products


def test_products_op_matches_explicit_loop():
    b, t, d, h = 2, 7, 5, 3
    x, kq, pv = _randn(b, t, d, seed=1), _randn(h, d, d, seed=2), _randn(h, d, d, seed=3)
    out = linear_attention_from_products(x, kq, pv)
    ref = torch.zeros(b, t, d, dtype=torch.float64)
    for bi in range(b):
        for ti in range(t):
            for hi in range(h):
                acc = torch.zeros(d, dtype=torch.float64)
                for tp in range(ti + 1):
                    acc += x[bi, tp] * float(x[bi, tp] @ kq[hi] @ x[bi, ti])
                ref[bi, ti] += pv[hi] @ acc
    assert rel_err(out, ref) < MESAOPT_F64_RTOL


def test_products_op_rejects_bad_shapes():
    x = _randn(2, 4, 5)
    with pytest.raises(ValueError, match="kq"):
        linear_attention_from_products(x, _randn(2, 4, 4), _randn(2, 5, 5))
    with pytest.raises(ValueError, match="heads"):
        linear_attention_from_products(x, _randn(2, 5, 5), _randn(3, 5, 5))
    with pytest.raises(ValueError, match="x expected"):
        linear_attention_from_products(x[0], _randn(2, 5, 5), _randn(2, 5, 5))


# --------------------------------------------------------------------------- linear self-attention


def test_linear_layer_products_reproduce_its_forward():
    layer = _layer("linear")
    x = _randn(3, 9, 12, seed=4)
    own = layer(x)
    via = layer(x, products=(layer.kq_products(), layer.pv_products()))
    assert rel_err(via, own) < MESAOPT_F64_RTOL
    # the products are W_k^T W_q and P W_v of every head
    assert rel_err(layer.kq_products()[1], layer.w_k[1].T @ layer.w_q[1]) < MESAOPT_F64_RTOL
    assert rel_err(layer.pv_products()[0], layer.proj[0] @ layer.w_v[0]) < MESAOPT_F64_RTOL


def test_linear_layer_with_prop1_weights_is_the_gd_construction():
    n, eta = 4, 0.37
    phi0 = _randn(n, n, seed=5, scale=0.3)
    gd = GDConstruction.build(n, eta, phi0)
    layer = LinearSelfAttention(3 * n, 1, n).double()
    with torch.no_grad():
        layer.w_q.copy_(gd.w_q[None])
        layer.w_k.copy_(gd.w_k[None])
        layer.w_v.copy_(gd.w_v[None])
        layer.proj.copy_(gd.proj[None])
    s = _randn(2, 8, n, seed=6)
    prev = torch.cat([torch.zeros_like(s[:, :1]), s[:, :-1]], dim=1)
    tokens = torch.cat([s @ phi0.T, s, prev], dim=-1)
    assert rel_err(tokens + layer(tokens), gd.forward(tokens)) < MESAOPT_F64_RTOL
    prods = (gd.kq_product[None], gd.pv_product[None])
    assert rel_err(tokens + layer(tokens, products=prods), gd.forward(tokens)) < MESAOPT_F64_RTOL


# --------------------------------------------------------------------------- softmax self-attention


def test_softmax_layer_matches_explicit_attention_and_records_it():
    layer = _layer("softmax")
    x = _randn(2, 6, 12, seed=7)
    layer.record_attention = True
    out = layer(x)
    attn = layer.last_attention
    assert attn.shape == (2, 2, 6, 6)
    ref = torch.zeros_like(out)
    for h in range(2):
        q, k, v = x @ layer.w_q[h].T, x @ layer.w_k[h].T, x @ layer.w_v[h].T
        for t in range(6):
            logits = (k[:, : t + 1] @ q[:, t, :, None]).squeeze(-1) / math.sqrt(6)
            p = torch.softmax(logits, dim=-1)
            assert rel_err(attn[:, h, t, : t + 1], p) < MESAOPT_F64_RTOL
            ref[:, t] += (p[:, None, :] @ v[:, : t + 1]).squeeze(1) @ layer.proj[h].T
    assert rel_err(out, ref) < MESAOPT_F64_RTOL
    assert float(attn.triu(1).abs().max()) == 0.0
    layer.record_attention = False
    layer(x[:, :3])
    assert layer.last_attention.shape[-1] == 6  # not overwritten when not recording


# --------------------------------------------------------------------------- regression mesa


def _set_lam(layer: RegressionMesa, values):
    with torch.no_grad():
        layer.log_lam.copy_(torch.log(torch.tensor(values, dtype=torch.float64)))


def _ridge_reference(layer: RegressionMesa, x, forget: bool):
    """Per head, directly: ``V W K^T (K W K^T + I/lam)^{-1} q_t`` with ``W = diag(prod of later gammas)``."""
    q, k, v = (t.detach() for t in layer.projections(x))
    g = layer.log_forget(x).detach() if forget else torch.zeros(x.shape[0], x.shape[1], layer.num_heads, dtype=x.dtype)
    b, t_len, heads, dk = q.shape
    ref = torch.zeros(b, t_len, heads, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for h in range(heads):
            lam = float(layer.lam[h].detach())
            for t in range(t_len):
                decay = torch.stack([g[bi, tp + 1 : t + 1, h].sum() for tp in range(t + 1)]).exp()
                kk, vv = k[bi, : t + 1, h], v[bi, : t + 1, h]  # [t+1, Dk], [t+1, Dv]
                gram = kk.T @ (decay[:, None] * kk) + torch.eye(dk, dtype=torch.float64) / lam
                ref[bi, t, h] = vv.T @ (decay * (kk @ torch.linalg.solve(gram, q[bi, t, h])))
    return torch.einsum("hdv,bthv->btd", layer.proj.detach(), ref)


@pytest.mark.parametrize("variant", ["mesa", "sherman_morrison"])
def test_regression_mesa_is_exact_ridge(variant):
    layer = _layer(variant)
    _set_lam(layer, [0.6, 2.5])
    x = _randn(2, 14, 12, seed=8)
    assert rel_err(layer(x), _ridge_reference(layer, x, forget=False)) < MESAOPT_CG_F64_RTOL


def test_regression_mesa_forget_is_decayed_ridge():
    layer = _layer("mesa_forget")
    _set_lam(layer, [0.6, 2.5])
    with torch.no_grad():
        layer.b_gate.copy_(torch.tensor([0.5, 2.0], dtype=torch.float64))  # strong forgetting in head 0
    x = _randn(2, 14, 12, seed=9)
    g = layer.log_forget(x).detach()
    assert float(g.max()) < -0.01  # the gate really forgets
    assert rel_err(layer(x), _ridge_reference(layer, x, forget=True)) < MESAOPT_CG_F64_RTOL
    assert rel_err(layer(x), _ridge_reference(layer, x, forget=False)) > 1e-2  # and it matters


def test_sherman_morrison_equals_mesa_without_forgetting():
    a, b = _layer("mesa", seed=3), _layer("sherman_morrison", seed=3)
    b.load_state_dict(a.state_dict())
    _set_lam(a, [0.3, 4.0])
    _set_lam(b, [0.3, 4.0])
    x = _randn(3, 20, 12, seed=10)
    assert rel_err(b(x), a(x)) < MESAOPT_CG_F64_RTOL


def test_regression_mesa_qk_norm_and_lambda_init():
    layer = RegressionMesa(8, 3, 4, qk_norm=True, lam_init=2.0).double()
    assert torch.allclose(layer.lam, torch.full((3,), 2.0, dtype=torch.float64))
    assert getattr(layer.log_lam, "_no_weight_decay", False)
    q, k, _ = layer.projections(_randn(2, 5, 8, seed=11))
    assert torch.allclose(q.norm(dim=-1), torch.ones(2, 5, 3, dtype=torch.float64))
    assert torch.allclose(k.norm(dim=-1), torch.ones(2, 5, 3, dtype=torch.float64))


def test_regression_mesa_lambda_gets_gradients():
    layer = _layer("mesa")
    x = _randn(2, 10, 12, seed=12)
    layer(x).square().sum().backward()
    assert layer.log_lam.grad is not None and float(layer.log_lam.grad.abs().min()) > 0


# --------------------------------------------------------------------------- all kinds


@pytest.mark.parametrize("kind", ["linear", "softmax", "mesa", "mesa_forget", "sherman_morrison"])
def test_every_mixer_is_causal(kind):
    layer = _layer(kind)
    x = _randn(2, 12, 12, seed=13)
    y = x.clone()
    y[:, 7:] += _randn(2, 5, 12, seed=14)
    out_x, out_y = layer(x), layer(y)
    assert rel_err(out_y[:, :7], out_x[:, :7]) < MESAOPT_CG_F64_RTOL
    assert rel_err(out_y[:, 7:], out_x[:, 7:]) > 1e-3  # the change is visible from t = 7 on


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: LinearSelfAttention(0, 2, 4), "dim"),
        (lambda: SoftmaxSelfAttention(8, 2, 0), "key_size"),
        (lambda: RegressionMesa(8, 2, 4, variant="nope"), "variant"),
        (lambda: RegressionMesa(8, 2, 4, lam_init=0.0), "lam_init"),
        (lambda: RegressionMesa(8, 2, 4, forget_init=1.0), "forget_init"),
        (lambda: RegressionMesa(8, 2, 4, solver=dict(max_iter=-1)), r"RegressionMesa: solver: SolverSettings.max_iter"),
    ],
)
def test_bad_layer_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("kind", ["linear", "softmax", "mesa"])
def test_mixers_reject_wrong_width(kind):
    with pytest.raises(ValueError, match="expected"):
        _layer(kind)(_randn(2, 5, 11))
