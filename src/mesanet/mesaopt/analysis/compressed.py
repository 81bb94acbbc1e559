"""CompressedAlg baselines from "Uncovering mesa-optimization algorithms in Transformers": the preconditioning
iteration (one implementation of Chebyshev's method) and block-scalar compression of weight products.

(a) Iterative preconditioning (Proposition 2 / CompressedAlg-k): ``k`` steps of a second-order Richardson
    iteration from ``x_0 = x_{-1} = 0`` approximating ``H_t s_t = X_t^{-1} s_t``, ``X_t = S_{t-1} S_{t-1}^T + I/lam``::

        x_{j+1} = x_j + alpha_j (s_t - X_t x_j) + beta_j (x_j - x_{j-1}),     j = 0..k-1
        pred_t  = eta * C_t x_k,     C_t = sum_{t' <= t} s_{t'} s_{t'-1}^T

    then one GD step of size ``eta`` from zero on the preconditioned loss, which equals the ridge least-squares
    prediction ``C_t X_t^{-1} s_t`` as ``k -> inf`` (:func:`ridge_prediction`). Chebyshev's method on spectrum
    bounds ``[a, b]`` is the coefficient schedule :func:`chebyshev_coefficients` (Saad, Alg. 12.1, written without
    divisions by ``delta = (b - a)/2`` so that ``a == b``, e.g. an empty prefix, is exact); plain Richardson is
    ``alpha_j = 2 / (a + b)``, ``beta_j = 0``. :func:`chebyshev_solve` runs either schedule through
    :func:`second_order_richardson`, the only iteration here; learned coefficients run through the same function
    (:mod:`~mesanet.mesaopt.analysis.compressed_alg`). The first iterate ``alpha_0 s_t`` is free (the token holds
    ``s_t``), so CompressedAlg-1 is the one-step GD of Proposition 1 and ``k`` counts layers.
(b) Block-scalar compression of a per-head weight product (``W_K^T W_Q`` or ``P W_V``): each ``n x n`` block is
    replaced by its mean diagonal value times ``I`` (the orthogonal projection onto block-scalar matrices). With the
    paper's 4-slot 40-dimensional tokens this leaves ``4 x 4 = 16`` scalars per product (the paper counts "16
    parameters per layer head"; whether that counts one or both products is not stated). Lossless iff every block
    is a scalar times ``I``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mesanet.utils.validation import check_choice, check_int

__all__ = [
    "prefix_gram_cross",
    "second_order_richardson",
    "chebyshev_coefficients",
    "chebyshev_solve",
    "ridge_prediction",
    "ridge_loss",
    "compressed_alg_prediction",
    "compressed_alg_k",
    "BlockScalarCompression",
    "compress_block_scalar",
    "reconstruct_block_scalar",
    "compress_head",
    "block_scalar_energy",
]

_METHODS = ("chebyshev", "richardson")


# ----------------------------------------------------------------------------------------- preconditioning


def _check_states(states: Tensor) -> None:
    if states.dim() != 3 or states.shape[1] < 1 or states.shape[2] < 1:
        raise ValueError(f"states: expected [B, T, n], got {tuple(states.shape)}")


def _check_lam(lam) -> Tensor | float:
    if bool((torch.as_tensor(lam) <= 0).any()):
        raise ValueError(f"lam: expected > 0 (the regulariser is I/lam), got {lam}")
    return lam


def prefix_gram_cross(states: Tensor) -> tuple[Tensor, Tensor]:
    """``G_t = sum_{t'<=t} s_{t'-1} s_{t'-1}^T`` and ``C_t = sum_{t'<=t} s_{t'} s_{t'-1}^T`` (``s_{-1} = 0``),
    both ``[B, T, n, n]`` for ``states [B, T, n]`` (no regulariser: ``X_t = G_t + I/lam``)."""
    _check_states(states)
    prev = torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], dim=1)
    gram = torch.cumsum(prev.unsqueeze(-1) * prev.unsqueeze(-2), dim=1)
    cross = torch.cumsum(states.unsqueeze(-1) * prev.unsqueeze(-2), dim=1)
    return gram, cross


def _regularised(states: Tensor, lam) -> tuple[Tensor, Tensor]:
    """``X_t = G_t + I/lam`` and ``C_t`` (:func:`prefix_gram_cross`), both ``[B, T, n, n]``."""
    _check_states(states)
    lam_t = torch.as_tensor(_check_lam(lam), dtype=states.dtype, device=states.device)
    gram, cross = prefix_gram_cross(states)
    eye = torch.eye(states.shape[-1], dtype=states.dtype, device=states.device)
    return gram + eye / lam_t, cross


def second_order_richardson(matrix: Tensor, rhs: Tensor, alphas, betas) -> Tensor:
    """``len(alphas)`` steps of ``x_{j+1} = x_j + alpha_j (rhs - matrix x_j) + beta_j (x_j - x_{j-1})`` from zero.

    ``matrix [..., n, n]``, ``rhs [..., n]``; ``alphas``/``betas``: sequences (or ``[k, ...]`` tensors) whose
    entries are scalars or tensors broadcastable to ``matrix.shape[:-2]`` (per-position coefficients).
    Returns ``x_k [..., n]`` (zeros for ``k = 0``).
    """
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2] or rhs.shape != matrix.shape[:-1]:
        raise ValueError(f"matrix/rhs: expected [..., n, n] and [..., n], got {tuple(matrix.shape)} and {tuple(rhs.shape)}")
    if len(alphas) != len(betas):
        raise ValueError(f"alphas/betas: expected equal lengths, got {len(alphas)} and {len(betas)}")
    x_prev = x = torch.zeros_like(rhs)
    for a, b in zip(alphas, betas):
        a = torch.as_tensor(a, dtype=rhs.dtype, device=rhs.device).unsqueeze(-1)
        b = torch.as_tensor(b, dtype=rhs.dtype, device=rhs.device).unsqueeze(-1)
        r = rhs - (matrix @ x.unsqueeze(-1)).squeeze(-1)
        x, x_prev = x + a * r + b * (x - x_prev), x
    return x


def _spectrum_bounds(lam_min, lam_max) -> tuple[Tensor, Tensor]:
    a = torch.as_tensor(lam_min, dtype=torch.float64) if not torch.is_tensor(lam_min) else lam_min
    b = torch.as_tensor(lam_max, dtype=a.dtype, device=a.device) if not torch.is_tensor(lam_max) else lam_max
    a, b = torch.broadcast_tensors(a, b.to(a.dtype))
    if bool((a <= 0).any()) or bool((b < a).any()):
        raise ValueError(
            f"spectrum bounds: expected 0 < lam_min <= lam_max, got lam_min in [{a.min().item()}, "
            f"{a.max().item()}], lam_max - lam_min min {(b - a).min().item()}"
        )
    return a, b


def chebyshev_coefficients(lam_min, lam_max, steps: int, method: str = "chebyshev") -> tuple[Tensor, Tensor]:
    """Chebyshev's method on the spectrum ``[lam_min, lam_max]`` in the form of :func:`second_order_richardson`:
    ``alphas, betas [steps, *shape]`` (``shape`` = the broadcast shape of the bounds; float64 for float bounds).

    With ``theta = (a+b)/2``, ``delta = (b-a)/2``, ``u_0 = delta^2/theta``: ``alpha_0 = 1/theta``, ``beta_0 = 0``;
    ``alpha_{j+1} = 2/(2 theta - u_j)``, ``beta_{j+1} = u_j/(2 theta - u_j)``, ``u_{j+1} = delta^2/(2 theta - u_j)``
    (``u_j = rho_j delta`` in Saad's Alg. 12.1; no division by ``delta``). ``method="richardson"``: the
    first-order schedule ``alpha_j = 1/theta``, ``beta_j = 0``.
    """
    check_int("steps", steps, minimum=0)
    check_choice("method", method, _METHODS)
    a, b = _spectrum_bounds(lam_min, lam_max)
    theta, delta = (b + a) / 2, (b - a) / 2
    if not steps:
        return theta.new_zeros((0, *theta.shape)), theta.new_zeros((0, *theta.shape))
    alphas, betas = [1 / theta], [torch.zeros_like(theta)]
    u = delta * delta / theta
    for _ in range(1, steps):
        if method == "richardson":
            alphas.append(1 / theta)
            betas.append(torch.zeros_like(theta))
            continue
        denom = 2 * theta - u
        alphas.append(2 / denom)
        betas.append(u / denom)
        u = delta * delta / denom
    return torch.stack(alphas), torch.stack(betas)


def chebyshev_solve(
    matrix: Tensor,
    rhs: Tensor,
    steps: int,
    lam_min: Tensor | float | None = None,
    lam_max: Tensor | float | None = None,
    method: str = "chebyshev",
) -> Tensor:
    """``steps`` iterations from ``x_0 = 0`` towards ``matrix^{-1} rhs`` for SPD ``matrix [..., n, n]``, ``rhs [..., n]``:
    :func:`second_order_richardson` with :func:`chebyshev_coefficients` (``method`` ``"chebyshev"`` or
    ``"richardson"``).

    ``lam_min``/``lam_max`` bound the spectrum (scalars or ``[...]`` tensors); ``None`` uses the exact extreme
    eigenvalues. ``steps = 0`` returns zeros.
    """
    check_choice("method", method, _METHODS)
    check_int("steps", steps, minimum=0)
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2] or rhs.shape != matrix.shape[:-1]:
        raise ValueError(f"matrix/rhs: expected [..., n, n] and [..., n], got {tuple(matrix.shape)} and {tuple(rhs.shape)}")
    if lam_min is None or lam_max is None:
        eig = torch.linalg.eigvalsh(matrix)
        lam_min = eig[..., 0] if lam_min is None else lam_min
        lam_max = eig[..., -1] if lam_max is None else lam_max
    batch_shape = matrix.shape[:-2]
    a = torch.as_tensor(lam_min, dtype=matrix.dtype, device=matrix.device).expand(batch_shape)
    b = torch.as_tensor(lam_max, dtype=matrix.dtype, device=matrix.device).expand(batch_shape)
    alphas, betas = chebyshev_coefficients(a, b, steps, method)
    return second_order_richardson(matrix, rhs, alphas, betas)


def ridge_prediction(states: Tensor, lam: float) -> Tensor:
    """Exact ridge-regression predictions ``C_t X_t^{-1} s_t`` of ``s_{t+1}`` at every position, ``[B, T, n]``."""
    x_mat, cross = _regularised(states, lam)
    pre = torch.linalg.solve(x_mat, states.unsqueeze(-1))
    return (cross @ pre).squeeze(-1)


def ridge_loss(states: Tensor, lam: float) -> Tensor:
    """Per-position loss ``[T - 1]`` of :func:`ridge_prediction` on ``states [B, T, n]`` (float64):
    ``1/2 ||pred_t - s_{t+1}||^2`` averaged over the batch."""
    s = states.double()
    pred = ridge_prediction(s, lam)[:, :-1]
    return 0.5 * (pred - s[:, 1:]).square().sum(-1).mean(0)


def compressed_alg_k(states: Tensor, alphas, betas, lam, eta=1.0) -> Tensor:
    """CompressedAlg-k predictions ``eta * C_t x_k`` of ``s_{t+1}``, ``[B, T, n]`` (``k = len(alphas)``; see the
    module docstring). ``lam`` (> 0) and ``eta`` are floats or 0-dim tensors (differentiable)."""
    x_mat, cross = _regularised(states, lam)
    x = second_order_richardson(x_mat, states, alphas, betas)
    return eta * (cross @ x.unsqueeze(-1)).squeeze(-1)


def compressed_alg_prediction(states: Tensor, lam: float, steps: int, method: str = "chebyshev") -> Tensor:
    """CompressedAlg-``steps`` with fixed coefficients on the exact per-position spectrum bounds ``[1/lam,
    lambda_max(X_t)]`` (an oracle no scalar weight can implement), then one unit GD step from zero on the
    preconditioned loss: ``C_t H~_t s_t``, ``[B, T, n]``.
    """
    x_mat, _ = _regularised(states, lam)
    top = torch.linalg.eigvalsh(x_mat)[..., -1]
    alphas, betas = chebyshev_coefficients(torch.full_like(top, 1.0 / lam), top, steps, method)
    return compressed_alg_k(states, alphas, betas, lam)


# ----------------------------------------------------------------------------------------- compression


def _check_blocks(matrix: torch.Tensor, block_size: int) -> int:
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size: expected an int >= 1, got {block_size!r}")
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2] or matrix.shape[-1] % block_size != 0:
        raise ValueError(
            f"matrix: expected square [..., d, d] with d a multiple of block_size={block_size}, got {tuple(matrix.shape)}"
        )
    return matrix.shape[-1] // block_size


def compress_block_scalar(matrix: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[..., d, d] -> [..., d/n, d/n]``: the mean diagonal value of every ``n x n`` block (``n = block_size``)."""
    nb = _check_blocks(matrix, block_size)
    blocks = matrix.reshape(*matrix.shape[:-2], nb, block_size, nb, block_size).transpose(-3, -2)
    return torch.diagonal(blocks, dim1=-2, dim2=-1).mean(dim=-1)


def reconstruct_block_scalar(scalars: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[..., m, m] -> [..., m n, m n]``: block ``(i, j)`` is ``scalars[..., i, j] * I_n``."""
    if scalars.dim() < 2 or scalars.shape[-1] != scalars.shape[-2]:
        raise ValueError(f"scalars: expected square [..., m, m], got {tuple(scalars.shape)}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size: expected an int >= 1, got {block_size!r}")
    eye = torch.eye(block_size, dtype=scalars.dtype, device=scalars.device)
    m = scalars.shape[-1]
    out = scalars[..., :, None, :, None] * eye[:, None, :]
    return out.reshape(*scalars.shape[:-2], m * block_size, m * block_size)


@dataclass(frozen=True)
class BlockScalarCompression:
    """Compressed head: block scalars of ``W_K^T W_Q`` and ``P W_V`` (each ``[m, m]``) for blocks of width ``block_size``."""

    kq: torch.Tensor
    pv: torch.Tensor
    block_size: int

    @property
    def num_parameters(self) -> int:
        return self.kq.numel() + self.pv.numel()

    def kq_product(self) -> torch.Tensor:
        return reconstruct_block_scalar(self.kq, self.block_size)

    def pv_product(self) -> torch.Tensor:
        return reconstruct_block_scalar(self.pv, self.block_size)


def compress_head(kq_product: torch.Tensor, pv_product: torch.Tensor, block_size: int) -> BlockScalarCompression:
    """Compress both per-head products of one linear-attention head."""
    if kq_product.shape != pv_product.shape:
        raise ValueError(f"products: expected equal shapes, got kq {tuple(kq_product.shape)} and pv {tuple(pv_product.shape)}")
    return BlockScalarCompression(
        kq=compress_block_scalar(kq_product, block_size),
        pv=compress_block_scalar(pv_product, block_size),
        block_size=block_size,
    )


def block_scalar_energy(matrix: torch.Tensor, block_size: int) -> torch.Tensor:
    """``||B(M)||_F^2 / ||M||_F^2`` per leading index (``B`` = block-scalar projection; 1 iff lossless).
    ``matrix [..., d, d] -> [...]``; a zero matrix gives 1."""
    proj = reconstruct_block_scalar(compress_block_scalar(matrix, block_size), block_size)
    total = matrix.square().sum((-1, -2))
    kept = proj.square().sum((-1, -2))
    return torch.where(total > 0, kept / total.clamp_min(torch.finfo(matrix.dtype).tiny), torch.ones_like(total))
