"""The chunk-entry preconditioner's batched SPD inverse (``ops/preconditioners.py``) against LAPACK, and its
fallback for a matrix that is not positive definite."""

from __future__ import annotations

import pytest
import torch

from mesanet.ops.preconditioners import OWN_KEYS_SHARE, SPD_INVERSE_LEAF, ChunkEntryPreconditioner, spd_inverse

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
    assert torch.equal(inverse, inverse.mT)  # bit for bit: CG's M^{-1} must be symmetric
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


@pytest.mark.parametrize("shift", [2.0, 20.0], ids=["diagonal-positive", "diagonal-negative"])
def test_preconditioner_falls_back_to_jacobi_for_a_block_that_does_not_factor(shift):
    """An indefinite key state: its block falls back to ``diag(P)^{-1}``, to ``Lambda^{-1}`` where that diagonal is not
    positive (always SPD); the other blocks keep their inverses."""
    nc, h, c, d = 2, 2, 4, 40
    gen = torch.Generator().manual_seed(1)
    keys = torch.nn.functional.normalize(torch.randn(nc, h, c, d, generator=gen, dtype=torch.float64), dim=-1)
    b = torch.zeros(nc, h, c, dtype=torch.float64)
    beta = torch.ones(nc, h, c, dtype=torch.float64)
    lam = torch.ones(h, d, dtype=torch.float64)
    h_in = spd_batch((nc, h), d, cond=10.0)
    h_in[1, 0] -= shift * torch.eye(d, dtype=torch.float64)  # (H + Lambda) indefinite for chunk 1, head 0
    h_in[1, 0, 0, 1] = h_in[1, 0, 1, 0] = 1e3  # and not positive definite whatever the shift
    precond = ChunkEntryPreconditioner(h_in, keys, b, beta, lam, block=c)
    matrix = stated_matrices(h_in, keys, b, beta, lam, block=c, keys=False)[:, :, 0]  # one matrix per chunk
    inverse = precond.inverse[:, :, 0]
    expected = torch.linalg.inv(matrix)
    good = [(0, 0), (0, 1), (1, 1)]
    for i, j in good:
        assert (inverse[i, j] - expected[i, j]).norm() / expected[i, j].norm() <= F64_EXACT_RTOL
    diagonal = matrix[1, 0].diagonal()
    fallback = torch.where(diagonal > 0, diagonal, lam[0]).reciprocal()
    assert (diagonal > 0).any() == (shift == 2.0) and (diagonal < 0).any() == (shift == 20.0)
    assert torch.equal(inverse[1, 0], torch.diag_embed(inverse[1, 0].diagonal()))  # diagonal
    assert torch.allclose(inverse[1, 0].diagonal(), fallback, rtol=F64_EXACT_RTOL, atol=0)
    assert (inverse[1, 0].diagonal() > 0).all()


def block_inputs(nc: int, h: int, c: int, d: int, seed: int = 0, gate: tuple[float, float] = (0.8, 0.99)):
    """Chunked inputs of the preconditioner in float64: a PSD entering state, unit keys, gates, beta, lam."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)
    keys = torch.nn.functional.normalize(torch.randn(nc, h, c, d, generator=gen, dtype=torch.float64), dim=-1)
    g = torch.log(gate[0] + (gate[1] - gate[0]) * rand(nc, h, c))
    a = torch.randn(nc, h, d, d, generator=gen, dtype=torch.float64)
    return dict(h_in=a @ a.mT / d, k=keys, b=g.cumsum(-1), beta=rand(nc, h, c), lam=0.25 + rand(h, d))


def stated_matrices(h_in, k, b, beta, lam, block: int, keys: bool) -> torch.Tensor:
    """``M_t [NC, H, C, d, d]`` as the module docstring states them, token by token: the key state entering
    ``t``'s block times the block's mean decay, plus ``Lambda``, plus the block's own keys: with ``keys`` those up to
    ``t`` decayed to the block's last token, without every key of the block at ``OWN_KEYS_SHARE`` of its mean
    weight over the block's tokens (zero before it arrives)."""
    nc, h, c, d = k.shape
    b_full = torch.nn.functional.pad(b, (1, 0))  # b_full[..., i + 1] = b_i, b_{-1} = 0
    out = torch.empty(nc, h, c, d, d, dtype=k.dtype)
    for t in range(c):
        start = t - t % block
        end = min(start + block, c) - 1
        anchor = b_full[..., start]  # log decay before the block  [NC, H]
        entering = anchor.exp()[..., None, None] * h_in
        for i in range(start):
            w = (anchor - b[..., i]).exp() * beta[..., i]
            entering = entering + w[..., None, None] * k[..., i, :, None] * k[..., i, None, :]
        scale = (b[..., start : end + 1] - anchor[..., None]).exp().mean(-1)
        m = scale[..., None, None] * entering + torch.diag_embed(lam)
        if keys:
            for i in range(start, t + 1):
                w = (b[..., end] - b[..., i]).exp() * beta[..., i]
                m = m + w[..., None, None] * k[..., i, :, None] * k[..., i, None, :]
        else:
            for i in range(start, end + 1):
                presence = sum((b[..., s] - b[..., i]).exp() for s in range(i, end + 1)) / (end + 1 - start)
                w = OWN_KEYS_SHARE * presence * beta[..., i]
                m = m + w[..., None, None] * k[..., i, :, None] * k[..., i, None, :]
        out[:, :, t] = m
    return out


# one block per chunk, blocks that divide the chunk, and blocks that leave a partial last block
@pytest.mark.parametrize("block", [12, 4, 5])
@pytest.mark.parametrize("keys", [False, True], ids=["chunk", "chunk-keys"])
def test_preconditioner_applies_the_inverse_of_its_stated_matrix(block, keys):
    """Every row ``t`` gets ``M_t^{-1} r_t`` with ``M_t`` built independently from its definition: with keys, the
    Woodbury rows reproduce the inverse of the entering part plus a growing prefix of the block's keys."""
    inputs = block_inputs(3, 2, 12, 7)
    precond = ChunkEntryPreconditioner(**inputs, block=block, keys=keys)
    r = torch.randn(3, 2, 12, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = torch.linalg.solve(stated_matrices(**inputs, block=block, keys=keys), r.unsqueeze(-1)).squeeze(-1)
    assert (precond.apply(r) - expected).norm() / expected.norm() <= F64_EXACT_RTOL
    # restricting to some chunks (CG's cache blocks) keeps their rows' inverses
    assert torch.equal(precond.restrict(slice(1, 3)).apply(r[1:3]), precond.apply(r)[1:3])


def test_chunk_keys_falls_back_to_the_entering_part_where_the_woodbury_matrix_does_not_factor():
    """A block whose Woodbury matrix is not finite (keys so large that their Gram matrix overflows float32) keeps
    ``P^{-1}`` alone; the other blocks keep their keys."""
    inputs = {n: t.float() for n, t in block_inputs(2, 1, 8, 6).items()}
    inputs["k"][1, 0, 5] *= 1e25  # ||k||^2 ~ 1e50: beyond float32, in chunk 1's second block only
    with_keys = ChunkEntryPreconditioner(**inputs, block=4, keys=True)
    r = torch.randn(2, 1, 8, 6, generator=torch.Generator().manual_seed(2))
    out = with_keys.apply(r)
    plain = torch.matmul(r.unflatten(-2, (2, 4)), with_keys.inverse).flatten(-3, -2)  # r P^{-1}, block by block
    assert torch.isfinite(out).all()
    assert torch.equal(out[1, :, 4:], plain[1, :, 4:])  # the failed block: P^{-1} alone
    assert not torch.allclose(out[1, :, :4], plain[1, :, :4])  # its neighbour still has its keys


def test_the_eval_command_offers_every_preconditioner():
    """``mesanet eval --preconditioner`` lists the names literally (building the parser imports no torch); they
    must stay those of ``PRECONDITIONERS``."""
    from mesanet.cli import build_parser
    from mesanet.ops.solver_settings import PRECONDITIONERS

    action = next(a for a in build_parser().commands["eval"]._actions if "--preconditioner" in a.option_strings)
    assert tuple(action.choices) == PRECONDITIONERS
