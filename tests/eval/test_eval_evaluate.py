"""evaluate_lm (loss, ppl, per-position NLL) and extrapolation to longer contexts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mesanet.eval import ExtrapolationResult, LMEvalResult, evaluate_lm, extrapolation, perplexity

from eval_helpers import build_model, random_tokens


def windows_of(n: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(random_tokens(n * length, seed=seed)).view(n, length)


def test_per_position_nll_equals_a_manual_cross_entropy_and_ppl_is_exp_loss():
    model = build_model(["attention", "mesa"])
    windows = windows_of(5, 24)
    result = evaluate_lm(model, windows, batch_size=2, progress=False)  # batches of 2, 2, 1
    with torch.no_grad():
        logits = model(windows, use_cache=False).logits.double()
    manual = F.cross_entropy(logits[:, :-1].transpose(1, 2), windows[:, 1:], reduction="none")  # [N, T-1]
    assert isinstance(result, LMEvalResult)
    assert result.per_position_nll.shape == (23,)
    np.testing.assert_allclose(result.per_position_nll, manual.mean(0).numpy(), rtol=1e-5)
    assert math.isclose(result.loss, float(manual.mean()), rel_tol=1e-6)
    assert math.isclose(result.loss, float(result.per_position_nll.mean()), rel_tol=1e-12)
    assert result.ppl == math.exp(result.loss)
    assert (result.tokens, result.windows, result.seq_len) == (5 * 23, 5, 24)
    # the model's own mean loss is the same quantity
    with torch.no_grad():
        assert math.isclose(result.loss, float(model(windows, labels=windows).loss), rel_tol=1e-5)


def test_batch_size_does_not_change_the_result_and_the_training_flag_is_restored():
    model = build_model("mesa").train()
    windows = windows_of(4, 16, seed=1)
    one = evaluate_lm(model, windows, batch_size=1, progress=False)
    four = evaluate_lm(model, windows.numpy(), batch_size=4, progress=False)  # numpy input works too
    assert model.training
    np.testing.assert_allclose(one.per_position_nll, four.per_position_nll, rtol=1e-5)


def test_perplexity_overflow_is_inf():
    assert perplexity(0.0) == 1.0 and perplexity(1e4) == math.inf


@pytest.mark.parametrize(
    "windows, batch_size, message",
    [
        (torch.zeros(8, dtype=torch.long), 2, r"expected windows of shape \[N, T\], got \[8\]"),
        (torch.zeros(2, 8), 2, "expected integer token ids, got dtype torch.float32"),
        (torch.zeros(2, 1, dtype=torch.long), 2, "at least one window of at least 2 tokens"),
        (torch.full((2, 8), 512), 2, r"token ids must lie in \[0, 512\), got ids in \[512, 512\]"),
        ([[1, 2, 3]], 2, "expected windows to be a LongTensor"),
        (torch.zeros(2, 8, dtype=torch.long), 0, "expected batch_size to be an integer >= 1, got 0"),
    ],
)
def test_evaluate_lm_rejects_bad_input(windows, batch_size, message):
    with pytest.raises(ValueError, match=message):
        evaluate_lm(build_model("hawk"), windows, batch_size=batch_size, progress=False)


def test_extrapolation_reports_each_factor_and_marks_too_long_ones_unavailable(eval_windows):
    model = build_model(["hawk", "mesa"])
    val = random_tokens(150, seed=3)  # x1 (32) and x2 (64) fit, x4 (128) fits, x8 (256) does not
    results = extrapolation(model, val, train_len=32, factors=(1, 2, 4, 8), max_windows=2, batch_size=4, progress=False)
    assert sorted(results) == [1, 2, 4, 8]
    assert all(isinstance(r, ExtrapolationResult) for r in results.values())
    span = 128  # every factor scores the same tokens: whole windows of the longest available length (x4)
    for factor in (1, 2, 4):
        r = results[factor]
        assert r.available and r.seq_len == 32 * factor and r.per_position_nll.shape == (32 * factor - 1,)
        assert r.result.windows * r.seq_len == span
        expected = evaluate_lm(model, eval_windows(val[:span], 32 * factor), progress=False)
        assert math.isclose(r.loss, expected.loss, rel_tol=1e-6) and r.ppl == math.exp(r.loss)
    unavailable = results[8]
    assert not unavailable.available and unavailable.loss is None and unavailable.ppl is None
    assert unavailable.reason == (
        "the validation split has 150 tokens, fewer than one window of 256 tokens (8 x the training length 32)"
    )
    assert unavailable.to_dict() == dict(factor=8, seq_len=256, available=False, reason=unavailable.reason)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(train_len=1), "expected train_len to be an integer >= 2, got 1"),
        (dict(factors=(1, 0)), r"expected factors to be integers >= 1, got \[1, 0\]"),
        (dict(factors=(1.5,)), "expected factors to be integers >= 1"),
        (dict(factors=()), "expected at least one factor"),
        (dict(max_windows=0), "expected max_windows to be None or an integer >= 1, got 0"),
        (dict(val_tokens=np.zeros((4, 4), dtype=np.int64)), r"expected a 1-D array of token ids, got shape \[4, 4\]"),
        (dict(val_tokens=np.zeros(64)), "expected integer token ids, got dtype float64"),
    ],
)
def test_extrapolation_rejects_bad_arguments(kwargs, message, eval_windows):
    args = dict(val_tokens=random_tokens(64), train_len=16) | kwargs
    with pytest.raises(ValueError, match=message):
        extrapolation(build_model("hawk"), progress=False, **args)
