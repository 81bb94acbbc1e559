"""CompressedAlg-k with learned step sizes, block-scalar compression of trained models, interpolation."""

import csv

import numpy as np
import pytest
import torch

from mesanet.mesaopt.analysis.compressed import (
    block_scalar_energy,
    chebyshev_coefficients,
    compressed_alg_k,
    compressed_alg_prediction,
    prefix_gram_cross,
    ridge_prediction,
    second_order_richardson,
)
from mesanet.mesaopt.analysis.compressed_alg import (
    LearnedCompressedAlg,
    compress_products,
    interpolate_products,
    main,
    model_products,
    run_with_products,
)
from mesanet.mesaopt.data.dynamics import LDSConfig, constructed_tokens, generate_lds
from mesanet.mesaopt.models import SeqModelConfig, SequenceModel

from helpers import rel_err
from tolerances import CHEBYSHEV_RIDGE_F64_RTOL, COMPRESSED_ALG_F64_RTOL, MESAOPT_F64_RTOL

N = 10
LAM = 0.7


@pytest.fixture(scope="module")
def states():
    return generate_lds(LDSConfig(), batch_size=8, seed=0, dtype=torch.float64).states


def _per_position_chebyshev(states, lam, k):
    gram, _ = prefix_gram_cross(states)
    top = torch.linalg.eigvalsh(gram + torch.eye(N, dtype=torch.float64) / lam)[..., -1]
    return chebyshev_coefficients(1.0 / lam, top, k)


def _chebyshev_polynomial_solution(mat, rhs, lam_min, lam_max, k):
    """Independent reference (Saad, Thm. 12.1 / 12.2): Chebyshev's k-th iterate from zero is
    ``x_k = A^{-1} (I - p_k(A)) rhs`` with the residual polynomial ``p_k(x) = T_k((theta - x)/delta) / T_k(theta/delta)``;
    evaluated on the eigendecomposition of ``A`` with numpy's Chebyshev series (needs ``lam_min < lam_max``)."""
    evals, evecs = torch.linalg.eigh(mat)
    a = torch.as_tensor(lam_min, dtype=torch.float64).expand(mat.shape[:-2]).unsqueeze(-1).numpy()
    b = torch.as_tensor(lam_max, dtype=torch.float64).expand(mat.shape[:-2]).unsqueeze(-1).numpy()
    theta, delta = (a + b) / 2, (b - a) / 2
    t_k = np.zeros(k + 1)
    t_k[k] = 1.0
    ev = evals.numpy()
    p = np.polynomial.chebyshev.chebval((theta - ev) / delta, t_k) / np.polynomial.chebyshev.chebval(theta / delta, t_k)
    filt = torch.from_numpy((1 - p) / ev)
    coef = (evecs.transpose(-1, -2) @ rhs.unsqueeze(-1)).squeeze(-1)
    return (evecs @ (filt * coef).unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("k", [1, 2, 6, 20])
def test_chebyshev_coefficients_match_the_chebyshev_polynomial(k):
    gen = torch.Generator().manual_seed(4)
    s = torch.randn(3, 7, 15, generator=gen, dtype=torch.float64)
    mat = s @ s.transpose(-1, -2) + 0.5 * torch.eye(7, dtype=torch.float64)
    rhs = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    evals = torch.linalg.eigvalsh(mat)
    lo, hi = 0.9 * evals[:, 0], 1.1 * evals[:, -1]  # per-matrix bounds enclosing the spectrum
    alphas, betas = chebyshev_coefficients(lo, hi, k)
    assert alphas.shape == betas.shape == (k, 3)
    want = _chebyshev_polynomial_solution(mat, rhs, lo, hi, k)
    assert rel_err(second_order_richardson(mat, rhs, alphas, betas), want) <= COMPRESSED_ALG_F64_RTOL
    # one step fewer is a different iterate, far outside the tolerance (the check can fail)
    assert rel_err(second_order_richardson(mat, rhs, alphas[:-1], betas[:-1]), want) > 1e-6


@pytest.mark.parametrize("k", [1, 2, 6])
def test_compressed_alg_prediction_matches_chebyshev_polynomial(states, k):
    """Per-position bounds ``[1/lam, lambda_max(X_t)]``: the predictions ``C_t x_k`` against the polynomial reference
    (positions t >= 1; at t = 0, ``C_0 = 0`` and the spectrum is the single point 1/lam)."""
    gram, cross = prefix_gram_cross(states)
    x_mat = gram + torch.eye(N, dtype=torch.float64) / LAM
    top = torch.linalg.eigvalsh(x_mat)[..., -1]
    x_ref = _chebyshev_polynomial_solution(x_mat[:, 1:], states[:, 1:], 1.0 / LAM, top[:, 1:], k)
    want = (cross[:, 1:] @ x_ref.unsqueeze(-1)).squeeze(-1)
    got = compressed_alg_prediction(states, LAM, k)
    assert rel_err(got[:, 1:], want) <= COMPRESSED_ALG_F64_RTOL
    assert torch.equal(got[:, 0], torch.zeros_like(got[:, 0]))
    alphas, betas = _per_position_chebyshev(states, LAM, k)
    assert alphas.shape == (k, *states.shape[:2])
    torch.testing.assert_close(compressed_alg_k(states, alphas, betas, LAM), got, rtol=0, atol=0)


def test_learned_module_set_to_chebyshev_matches_the_chebyshev_polynomial(states):
    k, lam, lam_max = 5, 0.5, 40.0
    alg = LearnedCompressedAlg(k).set_chebyshev(lam_max, lam=lam, eta=1.0)
    gram, cross = prefix_gram_cross(states)
    x_mat = gram + torch.eye(N, dtype=torch.float64) / lam
    x = _chebyshev_polynomial_solution(x_mat, states, 1 / lam, lam_max, k)
    want = (cross @ x.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        got = alg(states)
    assert rel_err(got, want) <= COMPRESSED_ALG_F64_RTOL
    with torch.no_grad():  # eta is the final GD step size: the prediction is linear in it
        alg.eta.fill_(0.25)
        torch.testing.assert_close(alg(states), 0.25 * got, rtol=COMPRESSED_ALG_F64_RTOL, atol=0)


def test_fixed_chebyshev_converges_to_ridge(states):
    ridge = ridge_prediction(states, LAM)
    errs = []
    for k in (1, 3, 6, 12, 40, 120):
        alphas, betas = _per_position_chebyshev(states, LAM, k)
        errs.append(rel_err(compressed_alg_k(states, alphas, betas, LAM), ridge))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] <= CHEBYSHEV_RIDGE_F64_RTOL


def test_second_order_richardson_is_plain_richardson_with_zero_beta():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, 12, generator=gen, dtype=torch.float64)
    mat = s @ s.transpose(-1, -2) + torch.eye(5, dtype=torch.float64)
    rhs = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    alpha = 1.0 / torch.linalg.eigvalsh(mat)[..., -1]
    x = torch.zeros_like(rhs)
    for _ in range(4):
        x = x + alpha[:, None] * (rhs - (mat @ x[..., None])[..., 0])
    got = second_order_richardson(mat, rhs, [alpha] * 4, [0.0] * 4)
    torch.testing.assert_close(got, x, rtol=COMPRESSED_ALG_F64_RTOL, atol=0)


def _block_scalar_model() -> SequenceModel:
    """A 2-layer linear model whose factors are Kronecker products ``A (x) I_10`` with dyadic ``A``: every per-head
    product is exactly block-scalar with exactly representable scalars."""
    cfg = SeqModelConfig(
        layers=["linear", "linear"], input_dim=3 * N, output_dim=N, num_heads=2, key_size=2 * N, activation_clip=4.0
    )
    model = SequenceModel(cfg).double()
    gen = torch.Generator().manual_seed(3)
    eye = torch.eye(N, dtype=torch.float64)
    dyadic = lambda *shape: torch.randint(-4, 5, shape, generator=gen).double() / 8
    for block in model.blocks:
        m = block.mixer
        with torch.no_grad():
            for h in range(2):
                m.w_q[h] = torch.kron(dyadic(2, 3), eye)
                m.w_k[h] = torch.kron(dyadic(2, 3), eye)
                m.w_v[h] = torch.kron(dyadic(2, 3), eye)
                m.proj[h] = torch.kron(dyadic(3, 2), eye)
    return model.eval()


def test_compression_of_block_scalar_model_is_lossless(states):
    model = _block_scalar_model()
    tokens = constructed_tokens(states[:, :20])
    trained = model_products(model)
    compressed = compress_products(trained, N)
    for (kq, pv), (kq_c, pv_c) in zip(trained, compressed):
        assert kq.abs().sum() > 0 and pv.abs().sum() > 0
        assert torch.equal(kq, kq_c) and torch.equal(pv, pv_c)
        assert torch.equal(block_scalar_energy(kq, N), torch.ones(2, dtype=torch.float64))
    with torch.no_grad():
        out_c = run_with_products(model, tokens, compressed)
        out_t = run_with_products(model, tokens, trained)
        ref = model(tokens)
    assert torch.equal(out_c, out_t)
    assert rel_err(out_c, ref) <= MESAOPT_F64_RTOL
    assert out_c.abs().max() > 1e-3  # the model does something


def test_compression_is_an_orthogonal_projection():
    gen = torch.Generator().manual_seed(1)
    mat = torch.randn(4, 3 * N, 3 * N, generator=gen, dtype=torch.float64)
    ((proj, _),) = compress_products([(mat, mat)], N)
    energy = block_scalar_energy(mat, N)
    assert bool(((energy > 0) & (energy < 0.2)).all())  # a random matrix is far from block-scalar
    resid = mat - proj
    torch.testing.assert_close((proj * resid).sum((-1, -2)), torch.zeros(4, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(energy, proj.square().sum((-1, -2)) / mat.square().sum((-1, -2)))
    ((proj2, _),) = compress_products([(proj, proj)], N)
    torch.testing.assert_close(proj2, proj, rtol=1e-14, atol=1e-15)  # idempotent
    # block (1, 2) of the projection is its mean diagonal value times I
    blk = mat[0, N : 2 * N, 2 * N : 3 * N]
    torch.testing.assert_close(proj[0, N : 2 * N, 2 * N : 3 * N], blk.diagonal().mean() * torch.eye(N, dtype=torch.float64))


def test_run_with_products_matches_model_forward(states):
    cfg = SeqModelConfig(
        layers=["linear", "linear"], input_dim=3 * N, output_dim=N, num_heads=3, key_size=7, activation_clip=4.0, init_std=0.2
    )
    torch.manual_seed(0)
    model = SequenceModel(cfg).double().eval()
    tokens = constructed_tokens(states[:, :25])
    with torch.no_grad():
        got = run_with_products(model, tokens, model_products(model))
        want = model(tokens)
    assert rel_err(got, want) <= MESAOPT_F64_RTOL
    assert rel_err(want, tokens[..., :N]) > 1e-2  # the layers change the prediction
    with pytest.raises(ValueError, match="one \\(kq, pv\\) pair per layer"):
        run_with_products(model, tokens, model_products(model)[:1])
    with pytest.raises(ValueError, match="only 'linear' layers"):
        model_products(SequenceModel(SeqModelConfig(layers=["softmax"], input_dim=3 * N, output_dim=N)))


def test_interpolation_endpoints_are_exact(states):
    torch.manual_seed(1)
    cfg = SeqModelConfig(layers=["linear"], input_dim=3 * N, output_dim=N, num_heads=2, key_size=8, init_std=0.2)
    model = SequenceModel(cfg).double().eval()
    trained = model_products(model)
    compressed = compress_products(trained, N)
    assert not torch.equal(trained[0][0], compressed[0][0])
    for w, want in ((0.0, trained), (1.0, compressed)):
        got = interpolate_products(trained, compressed, w)
        assert all(torch.equal(a, b) for pa, pb in zip(got, want) for a, b in zip(pa, pb))
    half = interpolate_products(trained, compressed, 0.5)
    torch.testing.assert_close(half[0][1], (trained[0][1] + compressed[0][1]) / 2)
    tokens = constructed_tokens(states[:, :15])
    with torch.no_grad():
        assert torch.equal(
            run_with_products(model, tokens, interpolate_products(trained, compressed, 0.0)),
            run_with_products(model, tokens, trained),
        )
        assert torch.equal(
            run_with_products(model, tokens, interpolate_products(trained, compressed, 1.0)),
            run_with_products(model, tokens, compressed),
        )


def test_validation_errors():
    with pytest.raises(ValueError, match="lam_min <= lam_max"):
        chebyshev_coefficients(2.0, 1.0, 3)
    with pytest.raises(ValueError, match="steps"):
        LearnedCompressedAlg(0)
    with pytest.raises(ValueError, match="lam"):
        compressed_alg_k(torch.zeros(1, 4, 3), [1.0], [0.0], lam=-1.0)
    with pytest.raises(ValueError, match="equal lengths"):
        second_order_richardson(torch.eye(2), torch.ones(2), [1.0, 1.0], [0.0])


def test_main_quick_smoke(tmp_path):
    out = tmp_path / "ca"
    assert main(["--quick", "--out", str(out), "--no-progress"]) == 0
    for name in (
        "compressed_alg_k.csv",
        "compression.csv",
        "compression_heads.csv",
        "interpolation.csv",
        "summary.md",
        "config.yaml",
        "compressed_alg_k.png",
        "loss_bars.png",
        "interpolation.png",
        "heatmap_linear-1.png",
    ):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "compressed_alg_k.csv")))
    assert [int(r["k"]) for r in rows] == [1, 2]
    assert all(float(r["learned_loss"]) > 0 for r in rows)
    interp = list(csv.DictReader(open(out / "interpolation.csv")))
    assert sorted({float(r["weight"]) for r in interp}) == [0.0, 0.25, 0.5, 0.75, 1.0]
    comp = list(csv.DictReader(open(out / "compression.csv")))
    assert [r["model"] for r in comp] == ["linear-1", "linear-2"]
    for r in comp:  # the interpolation endpoint w = 1 is the compressed model
        w1 = [float(i["loss"]) for i in interp if i["model"] == r["model"] and float(i["weight"]) == 1.0]
        assert w1 == [float(r["compressed_loss"])]
        assert 0 <= float(r["kq_energy_frac_min"]) <= float(r["kq_energy_frac_mean"]) <= 1
    summary = (out / "summary.md").read_text()
    assert "| check | result |" in summary and ("PASS" in summary or "MISS" in summary)
