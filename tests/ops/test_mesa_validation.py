"""Bad input at the public boundary: a ValueError naming what was expected and what arrived."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import make_inputs
from mesanet.ops import mesa, mesa_sherman_morrison, mesa_step


def good(**overrides):
    inputs = make_inputs(1, 6, 2, 4, 3, dtype=torch.float32, initial_state=True)
    inputs.update(overrides)
    return inputs


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
    ("k_shape", modified("k", lambda t: t[..., :3]), {}, r"expected k of shape \[B, T, H, Dk\] = \[1, 6, 2, 4\], got \[1, 6, 2, 3\]"),
    ("v_length", modified("v", lambda t: t[:, :5]), {}, r"expected v of shape \[B, T, H, Dv\] = \[1, 6, 2, 3\], got \[1, 5, 2, 3\]"),
    ("dtype_mix", modified("k", lambda t: t.double()), {}, r"expected q, k, v of one dtype, got torch.float32, torch.float64, torch.float32"),
    ("int_q", modified("q", lambda t: t.long()), {}, r"expected q to be a floating-point tensor, got dtype torch.int64"),
    ("not_tensor", modified("v", lambda t: t.tolist()), {}, r"expected v to be a torch.Tensor of shape \[B, T, H, Dv\], got list"),
    ("g_shape", modified("g", lambda t: t[..., None]), {}, r"expected g of rank 3 \[B, T, H\], got rank 4"),
    ("lam_shape", modified("lam", lambda t: t[:1]), {}, r"expected lam of shape \[H, Dk\] = \[2, 4\], got \[1, 4\]"),
    ("lam_nonpositive", modified("lam", lambda t: t - 2.0), {}, r"expected lam > 0 .*got min -"),
    ("nan_q", modified("q", nan_at_first), {}, r"expected finite values in q, got 1 non-finite entry"),
    ("inf_v", modified("v", lambda t: t / 0), {}, r"expected finite values in v, got \d+ non-finite entries"),
    ("g_positive", modified("g", lambda t: t + 1.0), {}, r"expected g \(log forget gate, log gamma\) <= 0, got max"),
    ("beta_negative", modified("beta", lambda t: t - 2.0), {}, r"expected beta \(input gate\) >= 0"),
    ("mixed_devices", modified("lam", lambda t: t.to("meta")), {}, r"expected all tensors on one device, got .*lam on meta"),
    ("state_not_pair", modified("initial_state", lambda t: t[0]), {}, r"expected initial_state = \(H_kk, S_kv\), got Tensor"),
    ("state_shape", modified("initial_state", lambda t: (t[0][..., :3, :3], t[1])), {}, r"expected initial_state\[0\] \(H_kk\) of shape \[N, H, Dk, Dk\] = \[1, 2, 4, 4\], got \[1, 2, 3, 3\]"),
    ("state_batch", modified("initial_state", lambda t: (t[0], t[1].repeat(2, 1, 1, 1))), {}, r"expected initial_state\[1\] \(S_kv\) of shape \[N, H, Dk, Dv\] = \[1, 2, 4, 3\], got \[2, 2, 4, 3\]"),
    ("state_asymmetric", modified("initial_state", lambda t: (t[0] + torch.triu(torch.ones(4, 4), 1), t[1])), {}, r"expected initial_state\[0\] \(H_kk\) to be symmetric"),
    ("max_iter_negative", good(), dict(max_iter=-1), r"expected max_iter to be an integer >= 0, got -1"),
    ("max_iter_float", good(), dict(max_iter=3.0), r"expected max_iter to be an integer >= 0, got 3.0"),
    ("tol_nan", good(), dict(tol=float("nan")), r"expected tol to be a finite number >= 0, got nan"),
    ("chunk_zero", good(), dict(chunk_size=0), r"expected chunk_size to be a positive integer, got 0"),
]


@pytest.mark.parametrize("inputs, options, message", [pytest.param(i, o, m, id=n) for n, i, o, m in CASES])
def test_mesa_rejects_bad_input(inputs, options, message):
    with pytest.raises(ValueError, match=r"^mesa: " + message):
        mesa(**inputs, **options)


def packed(cu, batch=1, length=6):
    inputs = make_inputs(batch, length, 2, 4, 3, dtype=torch.float32)
    return inputs, cu


CU_CASES = [
    ("not_increasing", *packed(torch.tensor([0, 4, 4, 6])), r"expected strictly increasing cu_seqlens \(no empty sequences\), got \[0, 4, 4, 6\]"),
    ("decreasing", *packed(torch.tensor([0, 5, 3, 6])), r"expected strictly increasing cu_seqlens"),
    ("float_dtype", *packed(torch.tensor([0.0, 6.0])), r"expected cu_seqlens of dtype torch.int32 or torch.int64, got torch.float32"),
    ("batch_gt_1", *packed(torch.tensor([0, 6]), batch=2), r"expected batch size 1 with cu_seqlens \(sequences are packed along T\), got B = 2"),
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
    with pytest.raises(ValueError, match=re.escape("expected initial_state[0] (H_kk) of shape [N, H, Dk, Dk] = [2, 2, 4, 4], got [1, 2, 4, 4]")):
        mesa(**inputs, cu_seqlens=torch.tensor([0, 2, 6]))


def step_inputs():
    inputs = make_inputs(2, 1, 2, 4, 3, dtype=torch.float32)
    return {n: (t[:, 0] if n != "lam" else t) for n, t in inputs.items()}


def test_mesa_step_rejects_bad_input():
    inputs = step_inputs()
    with pytest.raises(ValueError, match=r"^mesa_step: expected q of rank 3 \[B, H, Dk\], got rank 4"):
        mesa_step(**{**inputs, "q": inputs["q"][:, None]})
    with pytest.raises(ValueError, match=r"^mesa_step: expected solver 'cg' or 'cholesky', got 'lu'"):
        mesa_step(**inputs, solver="lu")
    bad_state = (torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match=re.escape("expected state[1] (S_kv) of shape [B, H, Dk, Dv] = [2, 2, 4, 3], got [2, 2, 4, 4]")):
        mesa_step(**inputs, state=bad_state)
    with pytest.raises(ValueError, match=r"expected lam > 0"):
        mesa_step(**{**inputs, "lam": -inputs["lam"]})


def test_sherman_morrison_rejects_bad_input():
    inputs = make_inputs(1, 4, 2, 4, 3)
    with pytest.raises(ValueError, match=r"^mesa_sherman_morrison: expected lam > 0"):
        mesa_sherman_morrison(**{**inputs, "lam": inputs["lam"] * 0})
