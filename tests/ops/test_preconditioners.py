"""The chunk-entry preconditioner's batched SPD inverse (``ops/preconditioners.py``) against LAPACK, and its
fallback for a matrix that is not positive definite."""

from __future__ import annotations

import pytest
import torch

from mesanet.ops.preconditioners import SPD_INVERSE_LEAF, ChunkEntryPreconditioner, spd_inverse

from tolerances import F64_EXACT_RTOL


def spd_batch(shape: tuple[int, ...], n: int, cond: float, seed: int = 0) -> torch.Tensor:
    """SPD matrices ``[*shape, n, n]`` with eigenvalues log-spaced in ``[1, cond]`` and random eigenvectors."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(*shape, n, n, generator=gen, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return (basis * eig) @ basis.mT


# orders below, at and above the leaf, odd and not a power of two, and two levels of recursion
@pytest.mark.parametrize("n", [1, 7, SPD_INVERSE_LEAF, SPD_INVERSE_LEAF + 1, 48, 100, 128])
@pytest.mark.parametrize("shape", [(3,), (2, 3)])
def test_spd_inverse_matches_lapack_in_float64(n, shape):
    matrix = spd_batch(shape, n, cond=1e4)
    inverse, ok = spd_inverse(matrix)
    assert inverse.shape == matrix.shape and ok.shape == shape and bool(ok.all())
    expected = torch.linalg.inv(matrix)
    # eps(float64) * cond = 2e-12 for cond 1e4: far inside F64_EXACT_RTOL
    assert (inverse - expected).norm() / expected.norm() <= F64_EXACT_RTOL


@pytest.mark.parametrize("position", ["leading block", "schur complement"])
def test_spd_inverse_flags_a_matrix_that_is_not_positive_definite(position):
    """The flag is False for exactly the matrices that are indefinite, whether the leading block or the Schur
    complement is where it shows."""
    matrix = spd_batch((4,), 64, cond=10.0).clone()
    # a negative eigenvalue hidden in one half: the other matrices of the batch stay flagged True
    index = 0 if position == "leading block" else SPD_INVERSE_LEAF
    matrix[2, index, index] = -5.0
    _, ok = spd_inverse(matrix)
    assert ok.tolist() == [True, True, False, True]


@pytest.mark.parametrize("index", [20, SPD_INVERSE_LEAF + 20])
def test_spd_inverse_flags_a_singular_matrix_instead_of_raising(index):
    """A zero pivot (a singular PSD matrix: a zero row and column) leaves a zero on the partial Cholesky factor,
    on which LAPACK's inverse raises; the batch's other matrices are still inverted exactly."""
    matrix = spd_batch((4,), 64, cond=10.0).clone()
    matrix[1, index, :] = 0.0
    matrix[1, :, index] = 0.0
    inverse, ok = spd_inverse(matrix)
    assert ok.tolist() == [True, False, True, True]
    expected = torch.linalg.inv(matrix[ok])
    assert (inverse[ok] - expected).norm() / expected.norm() <= F64_EXACT_RTOL


def test_preconditioner_falls_back_to_jacobi_for_a_block_that_does_not_factor():
    nc, h, c, d = 2, 2, 4, 40
    gen = torch.Generator().manual_seed(1)
    keys = torch.nn.functional.normalize(torch.randn(nc, h, c, d, generator=gen, dtype=torch.float64), dim=-1)
    b = torch.zeros(nc, h, c, dtype=torch.float64)
    beta = torch.ones(nc, h, c, dtype=torch.float64)
    lam = torch.ones(h, d, dtype=torch.float64)
    h_in = spd_batch((nc, h), d, cond=10.0)
    h_in[1, 0] -= 20.0 * torch.eye(d, dtype=torch.float64)  # (H + Lambda) indefinite for chunk 1, head 0
    precond = ChunkEntryPreconditioner(h_in, keys, b, beta, lam, block=c)
    matrix = h_in + torch.diag_embed(lam)  # exp(b) = 1: the preconditioner's matrix itself
    inverse = precond.inverse[:, :, 0]
    expected = torch.linalg.inv(matrix)
    good = [(0, 0), (0, 1), (1, 1)]
    for i, j in good:
        assert (inverse[i, j] - expected[i, j]).norm() / expected[i, j].norm() <= F64_EXACT_RTOL
    assert torch.equal(inverse[1, 0], torch.diag_embed(matrix[1, 0].diagonal().reciprocal()))
