"""What the Mesa operator benchmark runs: shapes, variants (ours at its defaults, the paper's fixed 30 steps, the
peer), seeded inputs, the peer's file, and the issue's targets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks import harness as h
from mesanet.ops import INFERENCE, SolverSettings

MODES = ("fwd", "fwd+bwd")
PEER_FUNCTIONS = ("naive_mesa_net_CG", "naive_mesa_net_decoding_one_step")
PEER_STEPS = 30

#: The issue's targets.
PEER_FWD_BWD_TARGET = 4.0  # peer fwd+bwd time / ours (default settings)
PEER_FWD_TARGET = 3.0  # peer fwd time / ours (default settings)
ERROR_TARGET = 1e-4  # our fp32 relative output error (default settings)
HEADLINE_LENGTH = 2048
DECODE_TIME_TARGET_S = 0.5e-3  # ours, per token per layer at B=1
DECODE_PEER_TARGET = 3.8  # peer decode time / ours at B=1
DECODE_FLAT_TARGET = 1.2  # ours at the longest prefill / the shortest
SCALING_SLACK = 4.5 / 4.0  # time and memory may grow 4.5x when T grows 4x
PEAK_FRACTION_TARGET = 0.40  # fixed-30 forward at T=2048, of the matmul peak

#: Value checks of the ops in the timed calls: on, the ops' default (one host synchronisation per call). The
#: Mesa layer calls the ops with ``validate_inputs=False`` unless asked; the peer checks nothing.
VALIDATE = True

#: The float64 reference: the chunk-preconditioned solve run to the float64 residual floor.
REFERENCE_SOLVER = SolverSettings(max_iter=500, tol=0.0, preconditioner="chunk")


@dataclass(frozen=True)
class Shape:
    batch: int = 1
    heads: int = 4
    dk: int = 64
    dv: int = 64
    chunk: int = 64


@dataclass(frozen=True)
class Variant:
    """One implementation and solver: ``impl`` ``"mesa"`` (``solver``: SolverSettings fields, None for the
    operator's default, i.e. no argument) or ``"peer"`` (``naive_mesa_net_CG`` with ``peer_steps``)."""

    name: str
    impl: str = "mesa"
    solver: Optional[dict] = None
    peer_steps: int = PEER_STEPS

    def settings(self) -> Optional[SolverSettings]:
        return None if self.solver is None else SolverSettings(**self.solver)

    def describe(self) -> str:
        if self.impl == "peer":
            return f"peer naive_mesa_net_CG, {self.peer_steps} CG steps, no preconditioner"
        if self.solver is None:
            return f"mesa, no solver argument (default {INFERENCE})"
        return f"mesa, {self.settings()}"


DEFAULT = Variant("default")
FIXED_30 = Variant("fixed-30", solver=dict(tol=0.0))  # SolverSettings(tol=0.0): the paper's 30 steps
PEER = Variant("peer-30", impl="peer")

DEFAULT_LENGTHS = (512, 2048, 8192)
QUICK_LENGTHS = (256, 512)
DEFAULT_DECODE_CONTEXTS = (512, 8192)
QUICK_DECODE_CONTEXTS = (256, 1024)
DECODE_BATCHES = (1, 8)
DEFAULT_POLICY = h.RepeatPolicy(warmup=1, min_repeats=3, max_repeats=10, budget_s=4.0)
QUICK_POLICY = h.RepeatPolicy(warmup=1, min_repeats=2, max_repeats=3, budget_s=0.5)
#: Decode samples are blocks of ``DECODE_INNER`` calls (a step takes tens of microseconds).
DECODE_POLICY = h.RepeatPolicy(warmup=2, min_repeats=5, max_repeats=30, budget_s=1.0)
DECODE_INNER = 20
PRECONDITIONER_TOL = 1e-4


def preconditioner_settings() -> dict[str, dict[str, Any]]:
    """Label -> SolverSettings fields of the preconditioner comparison (``NAME/16``: refreshed every 16 tokens)."""
    names = ("none", "jacobi", "chunk", "chunk-keys")
    settings = {name: dict(tol=PRECONDITIONER_TOL, preconditioner=name) for name in names}
    for name in ("chunk", "chunk-keys"):
        settings[f"{name}/16"] = dict(settings[name], precondition_every=16)
    return settings


INPUT_KINDS = {
    "random": "q,k unit-norm N(0,1); v N(0,1); gamma U[0.8,0.99]; beta U[0,1]; lam=1",
    "skewed": "k channel scales logspace(0,-2) then unit-norm; q unit-norm N(0,1); v N(0,1); gamma U[0.99,1]; "
    "beta U[0,1]; lam=0.25",
}


def make_inputs(
    shape: Shape,
    length: int,
    *,
    seed: int,
    kind: str = "random",
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    requires_grad: bool = False,
    batch: Optional[int] = None,
) -> dict[str, Tensor]:
    """Seeded inputs of :data:`INPUT_KINDS`, drawn in float64 on the CPU, then cast and moved (every
    dtype and device sees the same values)."""
    gen = torch.Generator().manual_seed(seed)
    rows = (shape.batch if batch is None else batch, length, shape.heads)
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    keys = randn(*rows, shape.dk)
    if kind == "skewed":
        keys = keys * torch.logspace(0, -2, shape.dk, dtype=torch.float64)
        gamma, lam = 0.99 + 0.01 * rand(*rows), 0.25
    elif kind == "random":
        gamma, lam = 0.8 + 0.19 * rand(*rows), 1.0
    else:
        raise ValueError(f"unknown input kind {kind!r}; valid: {list(INPUT_KINDS)}")
    values = dict(
        q=F.normalize(randn(*rows, shape.dk), dim=-1),
        k=F.normalize(keys, dim=-1),
        v=randn(*rows, shape.dv),
        g=torch.log(gamma),
        beta=rand(*rows),
        lam=torch.full((shape.heads, shape.dk), lam, dtype=torch.float64),
    )
    return {n: t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for n, t in values.items()}


_PEERS: dict[str, Any] = {}


def load_peer(path: Optional[str]) -> tuple[Optional[Any], str]:
    """The peer's ``naive.py`` loaded by path (never part of the project), or ``(None, why not)``."""
    key = str(path)
    if key not in _PEERS:
        _PEERS[key] = h.load_module_from_path(path, "mesa_peer_naive", PEER_FUNCTIONS)
    return _PEERS[key]


def require_peer(path: Optional[str]) -> Any:
    peer, note = load_peer(path)
    if peer is None:
        raise RuntimeError(f"peer implementation: {note}")
    return peer
