"""Linear probes (analysis 3): closed-form ridge probes on known cases, the preconditioned target, smoke run."""

import csv
import math

import pytest
import torch

from mesanet.mesaopt.analysis.probes import (
    PROBE_KINDS,
    ProbeConfig,
    fit_ridge_probe,
    main,
    normalised_probe_error,
    preconditioned_inputs,
    probe_errors,
)

from tolerances import MESAOPT_F64_RTOL, PROBE_EXACT_NMSE, PROBE_NOISE_NMSE_ATOL


def _features(probes, n, e, seed):
    """Correlated, non-centred features of different scales (like residual streams); one fixed distribution
    per probe (the mixing matrix), ``seed`` picks the samples."""
    mix = torch.randn(probes, e, e, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(probes, n, e, generator=gen, dtype=torch.float64) @ mix + 3.0


def test_exact_linear_target_gives_zero_heldout_error():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(3, 8, 5, generator=gen, dtype=torch.float64)
    c = torch.randn(3, 1, 5, generator=gen, dtype=torch.float64)
    xtr, xte = _features(3, 400, 8, 2), _features(3, 300, 8, 3)
    err = probe_errors(xtr, xtr @ a + c, xte, xte @ a + c, ridge=1e-4)
    assert err.shape == (3,)
    assert float(err.max()) < PROBE_EXACT_NMSE
    # without the ridge the fit is exact up to rounding, and recovers the map itself
    w, b = fit_ridge_probe(xtr, xtr @ a + c, ridge=0.0)
    assert torch.allclose(w, a, rtol=0, atol=1e-8) and torch.allclose(b, c.squeeze(1), rtol=0, atol=1e-7)


def test_independent_noise_gives_unit_error():
    gen = torch.Generator().manual_seed(4)
    xtr, xte = _features(4, 2000, 8, 5), _features(4, 2000, 8, 6)
    ytr = torch.randn(4, 2000, 3, generator=gen, dtype=torch.float64)
    yte = torch.randn(4, 2000, 3, generator=gen, dtype=torch.float64)
    err = probe_errors(xtr, ytr, xte, yte, ridge=1e-4)
    assert float((err - 1.0).abs().max()) < PROBE_NOISE_NMSE_ATOL


def test_partial_information_is_in_between():
    # y = linear part + equal-variance noise: the normalised error is ~ 1/2 (a probe that cannot fail trivially)
    gen = torch.Generator().manual_seed(7)
    xtr, xte = _features(1, 3000, 6, 8), _features(1, 3000, 6, 9)
    a = torch.randn(1, 6, 2, generator=gen, dtype=torch.float64)
    lin_tr, lin_te = xtr @ a, xte @ a
    scale = lin_te.std(1, keepdim=True)
    ytr = lin_tr + scale * torch.randn(lin_tr.shape, generator=gen, dtype=torch.float64)
    yte = lin_te + scale * torch.randn(lin_te.shape, generator=gen, dtype=torch.float64)
    err = float(probe_errors(xtr, ytr, xte, yte, ridge=1e-4)[0])
    assert abs(err - 0.5) < PROBE_NOISE_NMSE_ATOL


def test_normalised_error_of_the_mean_is_one():
    y = torch.randn(2, 50, 3, dtype=torch.float64)
    pred = y.mean(1, keepdim=True).expand_as(y)
    assert torch.allclose(normalised_probe_error(pred, y), torch.ones(2, dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_preconditioned_target_equals_direct_solve(lam):
    gen = torch.Generator().manual_seed(10)
    states = torch.randn(3, 9, 4, generator=gen, dtype=torch.float64)
    got = preconditioned_inputs(states, lam)
    for b in range(3):
        for t in range(9):
            prev = states[b, :t].T  # S_{t-1} = [s_1 .. s_{t-1}] as columns, [n, t-1]
            mat = prev @ prev.T + torch.eye(4, dtype=torch.float64) / lam
            want = torch.linalg.solve(mat, states[b, t])
            assert torch.allclose(got[b, t], want, rtol=MESAOPT_F64_RTOL, atol=0)
    assert torch.allclose(got[:, 0], lam * states[:, 0], rtol=MESAOPT_F64_RTOL, atol=0)  # empty prefix


def test_chebyshev_target_approximates_and_converges_to_solve():
    gen = torch.Generator().manual_seed(11)
    states = torch.rand(4, 20, 5, generator=gen, dtype=torch.float64) * 2 - 1
    exact = preconditioned_inputs(states, 1.0)
    gaps = [float((preconditioned_inputs(states, 1.0, "chebyshev", k) - exact).norm() / exact.norm()) for k in (2, 6, 40)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-8


def test_validation_errors():
    with pytest.raises(ValueError, match="train_seed"):
        ProbeConfig(train_seed=3, test_seed=3)
    with pytest.raises(ValueError, match="precond_method"):
        ProbeConfig(precond_method="cg")
    with pytest.raises(ValueError, match="features"):
        fit_ridge_probe(torch.zeros(2, 5, 3), torch.zeros(2, 4, 1))
    with pytest.raises(ValueError, match="lam"):
        preconditioned_inputs(torch.zeros(1, 3, 2), lam=0.0)


def test_quick_smoke_run(tmp_path):
    assert main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    for name in ("probes.csv", "probes_summary.md", "probes_heatmaps.png", "probes_vs_layer.png", "config.yaml"):
        assert (tmp_path / name).is_file(), name
    with open(tmp_path / "probes.csv") as f:
        rows = list(csv.DictReader(f))
    # quick model: 3 layers (+ input), T = 16 -> t = 1..15, both probe kinds
    assert len(rows) == len(PROBE_KINDS) * 4 * 15
    errs = [float(r["normalised_mse"]) for r in rows]
    assert all(math.isfinite(e) and 0 <= e < 2 for e in errs)
    # the t = 1 target s_2 = W* s_1 with a fresh orthogonal W*: no linear information at any layer
    first = [float(r["normalised_mse"]) for r in rows if r["probe"] == "target" and r["t"] == "1"]
    assert min(first) > 0.8
    summary = (tmp_path / "probes_summary.md").read_text()
    assert "Target check" in summary and ("PASS" in summary or "MISS" in summary)
    # the quick model clips at 4 (linear-4's recipe); its activations are reported per layer (input + 3 blocks)
    clip_line = next(x for x in summary.splitlines() if x.startswith("- quick-linear-3: clip 4;"))
    assert len(clip_line.split("max |e| ")[1].split(";")[0].split()) == 4
