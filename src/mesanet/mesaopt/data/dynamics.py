"""Linear (and nonlinear) dynamical systems with a fresh random ``W*`` per sequence (mesa-optimization tasks).

Generators of von Oswald, Schlegel et al., "Uncovering mesa-optimization algorithms in Transformers".
Per sequence, with the hidden state ``h_t`` and the observation ``s_t``::

    h_1 ~ U(-r, r)^{n_h}   (official code default, r = 1; ``init="normal"`` gives the N(0, I) of the text)
    h_{t+1} = W* f*(h_t) + eps_t,   eps_t ~ N(0, noise_std^2 I)
    s_t     = C* h_t + eps_s,       eps_s ~ N(0, obs_noise_std^2 I)     (default obs_noise_std = 0)

``LDSConfig.kind`` picks the family (``state_dim`` is always n_s, the observed width the model sees):

* ``"linear"``      (default) fully observed: ``C* = I``, ``f* = id``, ``W*`` Haar-orthogonal per sequence;
                    n_s = 10, T = 50.
* ``"partial"``     partially observed: ``hidden_dim`` = n_h > n_s (paper: n_s = 5, n_h = 15, see
                    ``lds_preset``), ``C*_ij = obs_std * N(0, 1)`` per sequence. The paper writes N(0, 0.5);
                    the official code draws ``0.5 * N(0, 1)``, i.e. **std** 0.5, which is what we use.
* ``"nonlinear"``   ``C* = I``, ``f*(h) = normalize(B GELU(A h))`` (unit L2 norm, as in the code) with
                    ``A [n_m, n_h]`` and ``B [n_h, n_m]`` entries ``mlp_std * N(0, 1)`` per sequence
                    (``share_mlp=True``: one pair for all, from ``teacher_seed``). The paper writes N(0, 1.1);
                    we read 1.1 as the **std**, the reading the code confirms for C*'s N(0, 0.5). n_m
                    (``mlp_dim``) is not stated in the paper; default ``4 n_h``. GELU is the exact (erf) one.
                    Because of the normalisation the scale of B has no effect.
* ``"contracting"`` ``W = Q diag(ev) Q^T``, ``ev_1..ev_{n-1} ~ U[eig_min, eig_max]`` and one eigenvalue fixed
                    at ``eig_max`` (randomly placed), ``Q`` Haar-orthogonal per sequence; states are clipped
                    to ``[-contracting_clip, contracting_clip]`` (SI E: 2). ``contracting_basis="gaussian"``
                    gives the official code's ``W = U diag(ev) U^{-1}`` with a Gaussian ``U`` (non-normal,
                    hence the transient blow-ups the clipping is for).
* ``"fixed"``       the control without mesa-optimization: one Haar-orthogonal ``W*`` drawn from
                    ``teacher_seed`` and shared by every sequence of every call.

Hidden states are clipped to ``[-clip, clip]`` after every step (code default ``data_clip = 10``;
``clip=None`` disables it). ``LDSBatch.states`` are the observations (what the model sees); ``hidden``,
``w_star``, ``c_star``, ``mlp_a`` / ``mlp_b`` and ``eigenvalues`` expose the generating quantities.

Token formats (functions on ``states [B, T, n]``, also ``LDSBatch`` properties):

* unconstructed: ``e_t = s_t``                                   -> ``[B, T, n]``
* constructed:   ``e_t = [0, s_t, s_{t-1}]`` with ``s_0 = 0``     -> ``[B, T, 3n]`` (Proposition 1 layout)
* 4-slot:        ``e_t = [0, s_t, s_t, s_{t-1}]``                 -> ``[B, T, 4n]`` (the official code's
  40-dim layout for n_s = 10; the paper's 1-layer runs mask the second slot, leaving ``[0, 0, s_t, s_{t-1}]``)
* k-shift:       ``z_t = [s_{t-k+1}; ...; s_t]`` (oldest first, zeros before the start) -> ``[B, T, k n]``
  (partial observation: a linear map ``z_t -> z_{t+1}`` needs ``k n_s >= n_h``; probes use k = 5).
  ``constructed_tokens(kshift_tokens(s, k))`` is the Proposition-1 layout on the lifted states.

The next-token target at position ``t`` is ``s_{t+1}``, i.e. ``states[:, 1:]`` for positions ``0..T-2``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from mesanet.utils.validation import is_int, is_real

__all__ = [
    "LDS_KINDS",
    "LDSConfig",
    "LDSBatch",
    "lds_preset",
    "random_orthogonal",
    "generate_lds",
    "constructed_tokens",
    "constructed_tokens_4slot",
    "kshift_tokens",
    "unconstructed_tokens",
]

_INITS = ("uniform", "normal")
#: Task families of ``LDSConfig.kind``.
LDS_KINDS = ("linear", "partial", "nonlinear", "contracting", "fixed")
_BASES = ("orthogonal", "gaussian")


@dataclass(frozen=True)
class LDSConfig:
    """Generator settings; defaults follow the paper / official code for the fully observed task.

    ``kind`` in ``LDS_KINDS``; the kind-specific fields are ignored by the other kinds.
    """

    state_dim: int = 10
    seq_len: int = 50
    noise_std: float = 0.01
    init: str = "uniform"
    init_range: float = 1.0
    clip: float | None = 10.0
    kind: str = "linear"
    # partial observation
    hidden_dim: int | None = None
    obs_std: float = 0.5
    obs_noise_std: float = 0.0
    # nonlinear
    mlp_dim: int | None = None
    mlp_std: float = 1.1
    share_mlp: bool = False
    # contracting
    eig_min: float = 0.3
    eig_max: float = 0.9
    contracting_basis: str = "orthogonal"
    contracting_clip: float | None = 2.0
    # fixed (and nonlinear with share_mlp)
    teacher_seed: int = 0

    def __post_init__(self) -> None:
        if not is_int(self.state_dim) or self.state_dim < 1:
            raise ValueError(f"state_dim: expected an int >= 1, got {self.state_dim!r}")
        if not is_int(self.seq_len) or self.seq_len < 2:
            raise ValueError(f"seq_len: expected an int >= 2 (need at least one transition), got {self.seq_len!r}")
        if not is_real(self.noise_std) or self.noise_std < 0:
            raise ValueError(f"noise_std: expected >= 0, got {self.noise_std!r}")
        if self.init not in _INITS:
            raise ValueError(f"init: expected one of {_INITS}, got {self.init!r}")
        if not is_real(self.init_range) or self.init_range <= 0:
            raise ValueError(f"init_range: expected > 0, got {self.init_range!r}")
        if self.clip is not None and (not is_real(self.clip) or self.clip <= 0):
            raise ValueError(f"clip: expected > 0 or None, got {self.clip!r}")
        if self.kind not in LDS_KINDS:
            raise ValueError(f"kind: expected one of {LDS_KINDS}, got {self.kind!r}")
        if self.kind == "partial":
            if not is_int(self.hidden_dim) or self.hidden_dim <= self.state_dim:
                raise ValueError(
                    f"hidden_dim: kind 'partial' expects an int n_h > state_dim = {self.state_dim} "
                    f"(paper: lds_preset('partial') has n_s = 5, n_h = 15), got {self.hidden_dim!r}"
                )
        elif self.hidden_dim is not None and self.hidden_dim != self.state_dim:
            raise ValueError(
                f"hidden_dim: kind {self.kind!r} is fully observed, expected None or state_dim = {self.state_dim}, "
                f"got {self.hidden_dim!r}"
            )
        if not is_real(self.obs_std) or self.obs_std <= 0:
            raise ValueError(f"obs_std: expected > 0, got {self.obs_std!r}")
        if not is_real(self.obs_noise_std) or self.obs_noise_std < 0:
            raise ValueError(f"obs_noise_std: expected >= 0, got {self.obs_noise_std!r}")
        if self.mlp_dim is not None and (not is_int(self.mlp_dim) or self.mlp_dim < 1):
            raise ValueError(f"mlp_dim: expected an int >= 1 or None, got {self.mlp_dim!r}")
        if not is_real(self.mlp_std) or self.mlp_std <= 0:
            raise ValueError(f"mlp_std: expected > 0, got {self.mlp_std!r}")
        if not isinstance(self.share_mlp, bool):
            raise ValueError(f"share_mlp: expected a bool, got {self.share_mlp!r}")
        if not (is_real(self.eig_min) and is_real(self.eig_max) and 0 <= self.eig_min <= self.eig_max):
            raise ValueError(f"eig_min, eig_max: expected 0 <= eig_min <= eig_max, got {self.eig_min!r}, {self.eig_max!r}")
        if self.contracting_basis not in _BASES:
            raise ValueError(f"contracting_basis: expected one of {_BASES}, got {self.contracting_basis!r}")
        if self.contracting_clip is not None and (not is_real(self.contracting_clip) or self.contracting_clip <= 0):
            raise ValueError(f"contracting_clip: expected > 0 or None, got {self.contracting_clip!r}")
        if not is_int(self.teacher_seed) or self.teacher_seed < 0:
            raise ValueError(f"teacher_seed: expected an int >= 0, got {self.teacher_seed!r}")

    @property
    def n_hidden(self) -> int:
        """n_h: ``hidden_dim`` for ``"partial"``, else ``state_dim``."""
        return self.hidden_dim if self.kind == "partial" else self.state_dim

    @property
    def n_mlp(self) -> int:
        """n_m of the nonlinear teacher: ``mlp_dim`` or ``4 n_h``."""
        return self.mlp_dim if self.mlp_dim is not None else 4 * self.n_hidden

    @property
    def effective_clip(self) -> float | None:
        """The clip bound actually applied to hidden states (the tighter of ``clip`` and, for
        ``"contracting"``, ``contracting_clip``)."""
        bounds = [self.clip] + ([self.contracting_clip] if self.kind == "contracting" else [])
        bounds = [b for b in bounds if b is not None]
        return min(bounds) if bounds else None


def lds_preset(kind: str = "linear", **overrides) -> LDSConfig:
    """Paper settings per kind (``"partial"``: n_s = 5, n_h = 15; others n_s = 10), T = 50; ``overrides``
    replace any field (unknown names -> ``ValueError``)."""
    if kind not in LDS_KINDS:
        raise ValueError(f"kind: expected one of {LDS_KINDS}, got {kind!r}")
    base = LDSConfig(kind="partial", state_dim=5, hidden_dim=15) if kind == "partial" else LDSConfig(kind=kind)
    try:
        return replace(base, **overrides)
    except TypeError as e:  # unknown field name
        raise ValueError(f"lds_preset: {e}") from None


@dataclass(frozen=True)
class LDSBatch:
    """One batch of sequences and what generated them.

    ``states [B, T, n_s]`` observations s_t (what the model sees); ``w_star [B, n_h, n_h]``;
    ``hidden [B, T, n_h]`` hidden states h_t (same values as ``states`` for fully observed kinds without
    observation noise); ``c_star [B, n_s, n_h]`` (``"partial"``); ``mlp_a [B, n_m, n_h]``, ``mlp_b [B, n_h, n_m]``
    (``"nonlinear"``); ``eigenvalues [B, n_h]`` of ``w_star`` (``"contracting"``); None where unused.
    """

    states: torch.Tensor
    w_star: torch.Tensor
    hidden: torch.Tensor | None = None
    c_star: torch.Tensor | None = None
    mlp_a: torch.Tensor | None = None
    mlp_b: torch.Tensor | None = None
    eigenvalues: torch.Tensor | None = None
    kind: str = "linear"

    @property
    def observations(self) -> torch.Tensor:
        """``[B, T, n_s]`` alias of ``states``."""
        return self.states

    @property
    def constructed(self) -> torch.Tensor:
        """``[B, T, 3 n_s]`` tokens ``[0, s_t, s_{t-1}]``."""
        return constructed_tokens(self.states)

    @property
    def constructed_4slot(self) -> torch.Tensor:
        """``[B, T, 4 n_s]`` tokens ``[0, s_t, s_t, s_{t-1}]`` (official code layout)."""
        return constructed_tokens_4slot(self.states)

    @property
    def unconstructed(self) -> torch.Tensor:
        """``[B, T, n_s]`` tokens ``s_t``."""
        return unconstructed_tokens(self.states)

    def kshift(self, k: int) -> torch.Tensor:
        """``[B, T, k n_s]`` tokens ``[s_{t-k+1}; ...; s_t]``."""
        return kshift_tokens(self.states, k)

    @property
    def targets(self) -> torch.Tensor:
        """``[B, T-1, n_s]`` next-observation targets ``s_{t+1}`` for positions ``0..T-2``."""
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


def _contracting_matrices(config: LDSConfig, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``W [B, n, n]`` and its eigenvalues ``[B, n]``: n-1 uniform in [eig_min, eig_max], one at eig_max."""
    n = config.n_hidden
    ev = config.eig_min + (config.eig_max - config.eig_min) * torch.rand(batch, n, generator=gen, dtype=torch.float64)
    fixed_at = torch.randint(0, n, (batch,), generator=gen)
    ev[torch.arange(batch), fixed_at] = config.eig_max
    if config.contracting_basis == "orthogonal":
        q = random_orthogonal(batch, n, gen, dtype=torch.float64)
        w = (q * ev.unsqueeze(-2)) @ q.transpose(-1, -2)
    else:
        u = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
        w = torch.linalg.solve(u, (u * ev.unsqueeze(-2)), left=False)  # U diag(ev) U^{-1}
    return w, ev


def _mlp_feature(h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``normalize(B GELU(A h))`` per sequence: ``h [B, n_h]``, ``a [B, n_m, n_h]``, ``b [B, n_h, n_m]``."""
    f = torch.einsum("bij,bj->bi", b, F.gelu(torch.einsum("bij,bj->bi", a, h)))
    return f / f.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def generate_lds(config: LDSConfig, batch_size: int, seed: int, dtype: torch.dtype = torch.float32) -> LDSBatch:
    """Seeded batch of ``batch_size`` sequences; identical ``(config, batch_size, seed)`` give identical data.

    Everything is computed in float64 and cast to ``dtype`` at the end. For ``kind="linear"`` the random
    stream is the same as before the other kinds existed (same seed -> same data).
    """
    if not isinstance(config, LDSConfig):
        raise ValueError(f"config: expected an LDSConfig, got {type(config).__name__}")
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size!r}")
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype: expected a floating dtype, got {dtype}")
    gen = torch.Generator().manual_seed(int(seed))
    kind, n_h, t_len = config.kind, config.n_hidden, config.seq_len
    extras: dict[str, torch.Tensor] = {}

    if kind == "fixed":
        teacher = torch.Generator().manual_seed(config.teacher_seed)
        w = random_orthogonal(1, n_h, teacher, dtype=torch.float64).expand(batch_size, n_h, n_h).clone()
    elif kind == "contracting":
        w, extras["eigenvalues"] = _contracting_matrices(config, batch_size, gen)
    else:
        w = random_orthogonal(batch_size, n_h, gen, dtype=torch.float64)
    if config.init == "uniform":
        h = (torch.rand(batch_size, n_h, generator=gen, dtype=torch.float64) * 2.0 - 1.0) * config.init_range
    else:
        h = torch.randn(batch_size, n_h, generator=gen, dtype=torch.float64)
    noise = torch.randn(batch_size, t_len - 1, n_h, generator=gen, dtype=torch.float64) * config.noise_std

    if kind == "nonlinear":
        n_m = config.n_mlp
        mlp_gen = torch.Generator().manual_seed(config.teacher_seed) if config.share_mlp else gen
        count = 1 if config.share_mlp else batch_size
        a = torch.randn(count, n_m, n_h, generator=mlp_gen, dtype=torch.float64) * config.mlp_std
        b = torch.randn(count, n_h, n_m, generator=mlp_gen, dtype=torch.float64) * config.mlp_std
        extras["mlp_a"], extras["mlp_b"] = a.expand(batch_size, -1, -1).clone(), b.expand(batch_size, -1, -1).clone()

    clip = config.effective_clip
    hidden = [h]
    for t in range(t_len - 1):
        f = _mlp_feature(h, extras["mlp_a"], extras["mlp_b"]) if kind == "nonlinear" else h
        h = torch.einsum("bij,bj->bi", w, f) + noise[:, t]
        if clip is not None:
            h = h.clamp(-clip, clip)
        hidden.append(h)
    hidden_t = torch.stack(hidden, dim=1)

    if kind == "partial":
        c = torch.randn(batch_size, config.state_dim, n_h, generator=gen, dtype=torch.float64) * config.obs_std
        extras["c_star"] = c
        obs = torch.einsum("bij,btj->bti", c, hidden_t)
    else:
        obs = hidden_t
    if config.obs_noise_std > 0:
        obs = obs + torch.randn(obs.shape, generator=gen, dtype=torch.float64) * config.obs_noise_std

    cast = {name: value.to(dtype) for name, value in extras.items()}
    return LDSBatch(states=obs.to(dtype), w_star=w.to(dtype), hidden=hidden_t.to(dtype), kind=kind, **cast)


def _check_states(states: torch.Tensor) -> None:
    if not isinstance(states, torch.Tensor) or states.dim() != 3:
        shape = tuple(states.shape) if isinstance(states, torch.Tensor) else type(states).__name__
        raise ValueError(f"states: expected shape [B, T, n_s], got {shape}")


def _previous(states: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """``s_{t-shift}`` with zeros before the start."""
    t_len = states.shape[1]
    if shift >= t_len:
        return torch.zeros_like(states)
    return torch.cat([torch.zeros_like(states[:, :shift]), states[:, : t_len - shift]], dim=1)


def constructed_tokens(states: torch.Tensor) -> torch.Tensor:
    """``[B, T, n_s] -> [B, T, 3 n_s]``: ``e_t = [0, s_t, s_{t-1}]`` with ``s_{-1} := 0`` at the first position."""
    _check_states(states)
    return torch.cat([torch.zeros_like(states), states, _previous(states)], dim=-1)


def constructed_tokens_4slot(states: torch.Tensor) -> torch.Tensor:
    """``[B, T, n_s] -> [B, T, 4 n_s]``: ``e_t = [0, s_t, s_t, s_{t-1}]`` (official code layout, 40 dims for
    n_s = 10; the prediction is read from the first slot)."""
    _check_states(states)
    return torch.cat([torch.zeros_like(states), states, states, _previous(states)], dim=-1)


def kshift_tokens(states: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, T, n_s] -> [B, T, k n_s]``: ``z_t = [s_{t-k+1}; ...; s_t]``, oldest first, zeros before the start
    (``k = 1`` returns the states)."""
    _check_states(states)
    if not is_int(k) or k < 1:
        raise ValueError(f"k: expected an int >= 1, got {k!r}")
    return torch.cat([_previous(states, shift) for shift in range(k - 1, -1, -1)], dim=-1)


def unconstructed_tokens(states: torch.Tensor) -> torch.Tensor:
    """``e_t = s_t`` (a validated view of the states)."""
    _check_states(states)
    return states
