"""CompressedAlg: Chebyshev/Richardson preconditioning converges to ridge; block-scalar compression."""

import pytest
import torch

from mesanet.mesaopt.analysis.compressed import (
    chebyshev_solve,
    compress_block_scalar,
    compress_head,
    compressed_alg_prediction,
    reconstruct_block_scalar,
    ridge_prediction,
)
from mesanet.mesaopt.analysis.one_step_gd import GDConstruction
from mesanet.mesaopt.data.dynamics import LDSConfig, generate_lds


@pytest.mark.parametrize("method", ["chebyshev", "richardson"])
def test_solver_converges_to_inverse(method):
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(4, 6, 20, generator=gen, dtype=torch.float64)
    mat = s @ s.transpose(-1, -2) + torch.eye(6, dtype=torch.float64)
    v = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(mat, v.unsqueeze(-1)).squeeze(-1)
    errs = [(chebyshev_solve(mat, v, k, method=method) - exact).norm().item() for k in (0, 5, 20, 200)]
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-8


def test_chebyshev_beats_richardson():
    gen = torch.Generator().manual_seed(2)
    s = torch.randn(8, 30, generator=gen, dtype=torch.float64)
    mat = s @ s.T + 0.1 * torch.eye(8, dtype=torch.float64)
    v = torch.randn(8, generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(mat, v)
    err = {m: (chebyshev_solve(mat, v, 15, method=m) - exact).norm() for m in ("chebyshev", "richardson")}
    assert err["chebyshev"] < err["richardson"]


def test_compressed_alg_converges_to_ridge_on_lds():
    batch = generate_lds(LDSConfig(), batch_size=8, seed=0, dtype=torch.float64)
    ridge = ridge_prediction(batch.states, lam=1.0)
    errs = [(compressed_alg_prediction(batch.states, 1.0, k) - ridge).abs().max().item() for k in (1, 3, 6, 12, 40, 120)]
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-9
    # the ridge predictor itself is a good next-state predictor late in the sequence
    late = ((ridge[:, 30:-1] - batch.states[:, 31:]) ** 2).mean()
    assert late < 0.05 * (batch.states[:, 31:] ** 2).mean()


def test_block_scalar_compression_lossless():
    gen = torch.Generator().manual_seed(0)
    scalars = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64)  # 3 heads, 4 x 4 blocks of width 10
    product = reconstruct_block_scalar(scalars, 10)
    assert product.shape == (3, 40, 40)
    torch.testing.assert_close(product[1, 10:20, 30:40], scalars[1, 1, 3] * torch.eye(10, dtype=torch.float64))
    # lossless up to float64 rounding of the 10-term diagonal mean
    torch.testing.assert_close(compress_block_scalar(product, 10), scalars, atol=1e-14, rtol=0)
    torch.testing.assert_close(reconstruct_block_scalar(compress_block_scalar(product, 10), 10), product, atol=1e-14, rtol=0)
    dyadic = torch.tensor([[0.5, -2.0], [0.0, 1.25]], dtype=torch.float64)  # exactly representable: bit-exact
    assert torch.equal(compress_block_scalar(reconstruct_block_scalar(dyadic, 4), 4), dyadic)


def test_compress_gd_construction_head():
    head = GDConstruction.build(5, 0.3)
    comp = compress_head(head.kq_product, head.pv_product, block_size=5)
    assert comp.num_parameters == 18  # 3 x 3 blocks per product with 3-slot tokens
    torch.testing.assert_close(comp.kq_product(), head.kq_product, atol=0, rtol=0)
    torch.testing.assert_close(comp.pv_product(), head.pv_product, atol=0, rtol=0)


def test_compression_of_non_block_scalar_is_lossy_mean_diagonal():
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    c = compress_block_scalar(m, 3)
    torch.testing.assert_close(c[0, 1], torch.diagonal(m[:3, 3:]).mean())
    assert (reconstruct_block_scalar(c, 3) - m).abs().max() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of block_size"):
        compress_block_scalar(torch.zeros(10, 10), 3)
    with pytest.raises(ValueError, match="method"):
        chebyshev_solve(torch.eye(3), torch.ones(3), 2, method="jacobi")
    with pytest.raises(ValueError, match="steps"):
        chebyshev_solve(torch.eye(3), torch.ones(3), -1)
    with pytest.raises(ValueError, match="lam"):
        ridge_prediction(torch.zeros(1, 4, 2), lam=0.0)
    with pytest.raises(ValueError, match="lam_min"):
        chebyshev_solve(torch.eye(3), torch.ones(3), 2, lam_min=2.0, lam_max=1.0)
