"""Linear dynamical systems with a fresh random orthogonal ``W*`` per sequence (mesa-optimization tasks).

Fully observed generator of von Oswald, Schlegel et al., "Uncovering mesa-optimization algorithms in
Transformers" (digest part B.1)::

    s_1 ~ U(-r, r)^{n_s}   (official code default, r = 1; ``init="normal"`` gives the N(0, I) of the text)
    s_{t+1} = W* s_t + eps_t,   eps_t ~ N(0, noise_std^2 I),   W* Haar-random orthogonal, redrawn per sequence

States are clipped to ``[-clip, clip]`` after every step (code default ``data_clip = 10``; ``clip=None``
disables it). Token formats:

* unconstructed: ``e_t = s_t``                               -> ``[B, T, n_s]``
* constructed:   ``e_t = [0, s_t, s_{t-1}]`` with ``s_0 = 0`` -> ``[B, T, 3 n_s]`` (Proposition 1 layout;
  the official code uses a 4-slot ``[0, s_t, s_t, s_{t-1}]`` variant, not reproduced here)

The next-token target at position ``t`` is ``s_{t+1}``, i.e. ``states[:, 1:]`` for positions ``0..T-2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "LDSConfig", "LDSBatch", "random_orthogonal", "generate_lds", "constructed_tokens", "unconstructed_tokens",
]

_INITS = ("uniform", "normal")


@dataclass(frozen=True)
class LDSConfig:
    """Generator settings; defaults follow the paper / official code for the fully observed task."""

    state_dim: int = 10
    seq_len: int = 50
    noise_std: float = 0.01
    init: str = "uniform"
    init_range: float = 1.0
    clip: float | None = 10.0

    def __post_init__(self) -> None:
        if self.state_dim < 1:
            raise ValueError(f"state_dim: expected >= 1, got {self.state_dim}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len: expected >= 2 (need at least one transition), got {self.seq_len}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std: expected >= 0, got {self.noise_std}")
        if self.init not in _INITS:
            raise ValueError(f"init: expected one of {_INITS}, got {self.init!r}")
        if self.init_range <= 0:
            raise ValueError(f"init_range: expected > 0, got {self.init_range}")
        if self.clip is not None and self.clip <= 0:
            raise ValueError(f"clip: expected > 0 or None, got {self.clip}")


@dataclass(frozen=True)
class LDSBatch:
    """``states [B, T, n_s]`` and the per-sequence ``w_star [B, n_s, n_s]`` that generated them."""

    states: torch.Tensor
    w_star: torch.Tensor

    @property
    def constructed(self) -> torch.Tensor:
        """``[B, T, 3 n_s]`` tokens ``[0, s_t, s_{t-1}]``."""
        return constructed_tokens(self.states)

    @property
    def unconstructed(self) -> torch.Tensor:
        """``[B, T, n_s]`` tokens ``s_t``."""
        return unconstructed_tokens(self.states)

    @property
    def targets(self) -> torch.Tensor:
        """``[B, T-1, n_s]`` next-state targets ``s_{t+1}`` for positions ``0..T-2``."""
        return self.states[:, 1:]


def random_orthogonal(batch: int, dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[batch, dim, dim]`` Haar-distributed orthogonal matrices (QR of a Gaussian with sign fix)."""
    if batch < 1 or dim < 1:
        raise ValueError(f"random_orthogonal: expected batch >= 1 and dim >= 1, got batch={batch}, dim={dim}")
    g = torch.randn(batch, dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (q * signs.unsqueeze(-2)).to(dtype)


def generate_lds(
    config: LDSConfig, batch_size: int, seed: int, dtype: torch.dtype = torch.float32
) -> LDSBatch:
    """Seeded batch of ``batch_size`` sequences; identical ``(config, batch_size, seed)`` give identical data."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    gen = torch.Generator().manual_seed(int(seed))
    n, t_len = config.state_dim, config.seq_len
    w = random_orthogonal(batch_size, n, gen, dtype=torch.float64)
    if config.init == "uniform":
        s = (torch.rand(batch_size, n, generator=gen, dtype=torch.float64) * 2.0 - 1.0) * config.init_range
    else:
        s = torch.randn(batch_size, n, generator=gen, dtype=torch.float64)
    noise = torch.randn(batch_size, t_len - 1, n, generator=gen, dtype=torch.float64) * config.noise_std
    states = [s]
    for t in range(t_len - 1):
        s = torch.einsum("bij,bj->bi", w, s) + noise[:, t]
        if config.clip is not None:
            s = s.clamp(-config.clip, config.clip)
        states.append(s)
    return LDSBatch(states=torch.stack(states, dim=1).to(dtype), w_star=w.to(dtype))


def _check_states(states: torch.Tensor) -> None:
    if states.dim() != 3:
        raise ValueError(f"states: expected shape [B, T, n_s], got {tuple(states.shape)}")


def constructed_tokens(states: torch.Tensor) -> torch.Tensor:
    """``[B, T, n_s] -> [B, T, 3 n_s]``: ``e_t = [0, s_t, s_{t-1}]`` with ``s_{-1} := 0`` at the first position."""
    _check_states(states)
    prev = torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], dim=1)
    return torch.cat([torch.zeros_like(states), states, prev], dim=-1)


def unconstructed_tokens(states: torch.Tensor) -> torch.Tensor:
    """``e_t = s_t`` (a validated view of the states)."""
    _check_states(states)
    return states
