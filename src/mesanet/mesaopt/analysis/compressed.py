"""CompressedAlg baselines from "Uncovering mesa-optimization algorithms in Transformers".

(a) Iterative preconditioning (Proposition 2 / CompressedAlg-k): ``k`` steps of a Chebyshev (second-order
    Richardson) or plain Richardson iteration approximating ``H_t s_t = (S_{t-1} S_{t-1}^T + I/lam)^{-1} s_t``,
    followed by one GD step from zero on the preconditioned loss, which equals the ridge least-squares
    prediction ``Y_t X_t^T H_t s_t`` as ``k -> inf``. The Chebyshev iteration on spectrum bounds ``[a, b]`` is
    ``x_{k+1} = x_k + d_k``, ``d_{k+1} = rho_{k+1} rho_k d_k + 2 rho_{k+1}/delta * r_{k+1}`` (Saad, Alg. 12.1),
    written here without divisions by ``delta = (b - a)/2`` so that ``a == b`` (e.g. an empty prefix) is exact.
    Richardson uses the fixed step ``2 / (a + b)``.
(b) Block-scalar compression of a per-head weight product (``W_K^T W_Q`` or ``P W_V``): each ``n x n`` block is
    replaced by its mean diagonal value times ``I``. With the paper's 4-slot 40-dimensional tokens this leaves
    ``4 x 4 = 16`` scalars per product (the paper counts "16 parameters per layer head"; whether that counts
    one or both products is not stated in the digest). Lossless iff every block is a scalar times ``I``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "chebyshev_solve", "ridge_prediction", "compressed_alg_prediction",
    "BlockScalarCompression", "compress_block_scalar", "reconstruct_block_scalar", "compress_head",
]

_METHODS = ("chebyshev", "richardson")


# ----------------------------------------------------------------------------------------- preconditioning


def chebyshev_solve(
    matrix: torch.Tensor,
    rhs: torch.Tensor,
    steps: int,
    lam_min: torch.Tensor | float | None = None,
    lam_max: torch.Tensor | float | None = None,
    method: str = "chebyshev",
) -> torch.Tensor:
    """``steps`` iterations from ``x_0 = 0`` towards ``matrix^{-1} rhs`` for SPD ``matrix [..., n, n]``, ``rhs [..., n]``.

    ``lam_min``/``lam_max`` bound the spectrum (scalars or ``[...]`` tensors); ``None`` uses the exact extreme
    eigenvalues. ``steps = 0`` returns zeros.
    """
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected an int >= 0, got {steps!r}")
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2] or rhs.shape != matrix.shape[:-1]:
        raise ValueError(
            f"matrix/rhs: expected [..., n, n] and [..., n], got {tuple(matrix.shape)} and {tuple(rhs.shape)}"
        )
    batch_shape = matrix.shape[:-2]
    if lam_min is None or lam_max is None:
        eig = torch.linalg.eigvalsh(matrix)
        lam_min = eig[..., 0] if lam_min is None else lam_min
        lam_max = eig[..., -1] if lam_max is None else lam_max
    a = torch.as_tensor(lam_min, dtype=matrix.dtype, device=matrix.device).expand(batch_shape)
    b = torch.as_tensor(lam_max, dtype=matrix.dtype, device=matrix.device).expand(batch_shape)
    if bool((a <= 0).any()) or bool((b < a).any()):
        raise ValueError(
            f"spectrum bounds: expected 0 < lam_min <= lam_max, got lam_min in [{a.min().item()}, {a.max().item()}], "
            f"lam_max in [{b.min().item()}, {b.max().item()}]"
        )
    theta, delta = ((b + a) / 2).unsqueeze(-1), ((b - a) / 2).unsqueeze(-1)
    # u_k := rho_k * delta with rho_0 = delta / theta; richardson keeps u = 0 (first-order, step 1/theta).
    u = delta * delta / theta if method == "chebyshev" else torch.zeros_like(theta)
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    d = r / theta
    for _ in range(steps):
        x = x + d
        r = r - (matrix @ d.unsqueeze(-1)).squeeze(-1)
        if method == "chebyshev":
            denom = 2 * theta - u
            d = (u / denom) * d + (2 / denom) * r
            u = delta * delta / denom
        else:
            d = r / theta
    return x


def _prefix_statistics(states: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``X_t = sum_{t'<=t} s_{t'-1} s_{t'-1}^T + I/lam`` and ``C_t = sum_{t'<=t} s_{t'} s_{t'-1}^T``, both ``[B, T, n, n]``."""
    if states.dim() != 3:
        raise ValueError(f"states: expected shape [B, T, n], got {tuple(states.shape)}")
    if not lam > 0:
        raise ValueError(f"lam: expected > 0 (regulariser is I/lam), got {lam}")
    prev = torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], dim=1)
    gram = torch.cumsum(prev.unsqueeze(-1) * prev.unsqueeze(-2), dim=1)
    eye = torch.eye(states.shape[-1], dtype=states.dtype, device=states.device)
    cross = torch.cumsum(states.unsqueeze(-1) * prev.unsqueeze(-2), dim=1)
    return gram + eye / lam, cross


def ridge_prediction(states: torch.Tensor, lam: float) -> torch.Tensor:
    """Exact ridge-regression predictions ``C_t X_t^{-1} s_t`` of ``s_{t+1}`` at every position, ``[B, T, n]``."""
    x_mat, cross = _prefix_statistics(states, lam)
    pre = torch.linalg.solve(x_mat, states.unsqueeze(-1))
    return (cross @ pre).squeeze(-1)


def compressed_alg_prediction(states: torch.Tensor, lam: float, steps: int, method: str = "chebyshev") -> torch.Tensor:
    """CompressedAlg-``steps``: ``steps`` preconditioning iterations on ``X_t`` (spectrum bounds ``[1/lam,
    1/lam + ||S S^T||]``), then one unit GD step from zero on the preconditioned loss: ``C_t H~_t s_t``, ``[B, T, n]``.
    """
    x_mat, cross = _prefix_statistics(states, lam)
    top = torch.linalg.eigvalsh(x_mat)[..., -1]
    pre = chebyshev_solve(x_mat, states, steps, lam_min=1.0 / lam, lam_max=top, method=method)
    return (cross @ pre.unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------------------- compression


def _check_blocks(matrix: torch.Tensor, block_size: int) -> int:
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size: expected an int >= 1, got {block_size!r}")
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2] or matrix.shape[-1] % block_size != 0:
        raise ValueError(
            f"matrix: expected square [..., d, d] with d a multiple of block_size={block_size}, "
            f"got {tuple(matrix.shape)}"
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
        raise ValueError(
            f"products: expected equal shapes, got kq {tuple(kq_product.shape)} and pv {tuple(pv_product.shape)}"
        )
    return BlockScalarCompression(
        kq=compress_block_scalar(kq_product, block_size), pv=compress_block_scalar(pv_product, block_size),
        block_size=block_size,
    )
