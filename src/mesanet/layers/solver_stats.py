"""Mesa solver settings for layers, and CG statistics collected from a context instead of layer attributes.

:func:`collect_solver_stats` is a context manager: while it is open, every
:class:`~mesanet.layers.MesaLayer` of ``model`` asks its op for :class:`~mesanet.ops.SolverStats` and hands
them to the yielded :class:`SolverStatsCollector` (optionally solving with other settings for the
duration). The layers' attributes are never written; the context is a :class:`contextvars.ContextVar`.
Accumulation stays on the device (a few reductions per forward, no host synchronisation) until
:meth:`SolverStatsCollector.summary` reads it back once.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from torch import Tensor, nn

from ..ops.cg import RESIDUAL_FLOOR_EPS
from ..ops.results import SolverStats
from ..ops.solver_settings import INFERENCE, SolverSettings, as_settings

_ACTIVE: contextvars.ContextVar[tuple["SolverStatsCollector", ...]] = contextvars.ContextVar("mesa_solver_stats", default=())
#: True while a checkpointed block is recomputed in the backward pass: the layers solve as in the forward but
#: record nothing (the forward already did). See :func:`replay_quietly`.
_REPLAY: contextvars.ContextVar[bool] = contextvars.ContextVar("mesa_solver_stats_replay", default=False)
_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


@dataclass(frozen=True)
class LayerSolverSummary:
    """CG statistics of one Mesa layer over every system (token x head) recorded in a context.

    ``converged``: systems the stopping rule stopped: final relative residual ``<= tol`` or at the working
    precision's residual floor (:data:`mesanet.ops.cg.RESIDUAL_FLOOR_EPS`, the only stop with ``tol = 0``), or
    frozen before ``max_iter`` (a direct solve counts, with 0 steps); ``stalled``: the others, which used all
    ``max_iter`` steps and still had a residual above ``tol`` and the floor (``worst_stalled_residual`` the
    largest). ``max_iter`` / ``tol``: the settings of the last recorded forward.
    """

    name: str
    layer_index: Optional[int]
    calls: int
    systems: int
    mean_iterations: float
    max_iterations: int
    mean_relative_residual: float
    max_relative_residual: float
    converged: int
    stalled: int
    worst_stalled_residual: float
    max_iter: int
    tol: float

    @property
    def converged_fraction(self) -> float:
        return self.converged / self.systems if self.systems else 0.0


class SolverStatsCollector:
    """Accumulates per-layer :class:`SolverStats` while its :func:`collect_solver_stats` context is open.

    ``solver``: settings every watched layer solves with for the duration (``None``: their own, picked by
    ``layer.training``). ``keep``: also keep each forward's raw stats in :attr:`records` (``[B, T, H]``; a
    decode step is ``[B, 1, H]``); they hold device memory, so keep them off for long runs.
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], solver: Optional[SolverSettings] = None, keep: bool = False):
        self.names = [name for name, _ in layers]
        self._index = {id(layer): i for i, (_, layer) in enumerate(layers)}
        self._layers = [layer for _, layer in layers]  # keeps the ids valid while the collector lives
        self.solver, self.keep = solver, bool(keep)
        self.records: dict[str, list[SolverStats]] = {name: [] for name in self.names}
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far (e.g. at the start of a training step)."""
        self._sums: list[Optional[Tensor]] = [None] * len(self.names)  # systems, iters, residual, converged, stalled
        self._maxes: list[Optional[Tensor]] = [None] * len(self.names)  # iters, residual, stalled residual
        self._calls = [0] * len(self.names)
        self._settings: list[Optional[SolverSettings]] = [None] * len(self.names)
        for name in self.names:
            self.records[name] = []

    def watches(self, layer: nn.Module) -> bool:
        return id(layer) in self._index

    @torch.no_grad()
    def record(self, layer: nn.Module, stats: SolverStats, settings: SolverSettings) -> None:
        """Add one forward's ``stats`` (``iterations`` int ``[..]``, ``relative_residual`` ``[..]``) of ``layer``."""
        i = self._index[id(layer)]
        self._calls[i] += 1
        self._settings[i] = settings
        if self.keep:
            self.records[self.names[i]].append(stats)
        iters = stats.iterations.reshape(-1)
        if iters.numel() == 0:
            return
        residual = stats.relative_residual.reshape(-1).to(torch.float64)
        iters_f = iters.to(torch.float64)
        floor = RESIDUAL_FLOOR_EPS * torch.finfo(stats.relative_residual.dtype).eps  # of the solver's dtype
        converged = (residual <= max(settings.tol, floor)) | (iters < settings.max_iter)
        stalled = ~converged  # all max_iter steps used, residual still above tol and the floor
        sums = torch.stack(
            [
                iters_f.new_tensor(float(iters.numel())),
                iters_f.sum(),
                residual.sum(),
                converged.sum().to(torch.float64),
                stalled.sum().to(torch.float64),
            ]
        )
        maxes = torch.stack([iters_f.max(), residual.max(), torch.where(stalled, residual, 0.0).max()])
        self._sums[i] = sums if self._sums[i] is None else self._sums[i] + sums
        self._maxes[i] = maxes if self._maxes[i] is None else torch.maximum(self._maxes[i], maxes)

    def summary(self) -> list[LayerSolverSummary]:
        """One :class:`LayerSolverSummary` per watched layer (module order) that recorded a forward; one host sync."""
        present = [i for i, s in enumerate(self._sums) if s is not None]
        if not present:
            return []
        rows = [torch.cat([self._sums[i], self._maxes[i]]) for i in present]
        table = torch.stack([row.to(rows[0].device) for row in rows]).cpu().tolist()  # one device-to-host copy
        out = []
        for i, (systems, iters, residual, converged, stalled, max_iters, max_residual, worst) in zip(present, table):
            name, settings = self.names[i], self._settings[i]
            match = _LAYER_INDEX.search(name + ".")
            out.append(
                LayerSolverSummary(
                    name=name,
                    layer_index=int(match.group(1)) if match else None,
                    calls=self._calls[i],
                    systems=int(systems),
                    mean_iterations=iters / systems,
                    max_iterations=int(max_iters),
                    mean_relative_residual=residual / systems,
                    max_relative_residual=max_residual,
                    converged=int(converged),
                    stalled=int(stalled),
                    worst_stalled_residual=worst,
                    max_iter=settings.max_iter,
                    tol=settings.tol,
                )
            )
        return out


def active_collectors(layer: nn.Module) -> tuple[Optional[SolverSettings], list[SolverStatsCollector]]:
    """``(settings override or None, collectors watching layer)`` of the open contexts; the innermost
    collector with ``solver`` set decides the override. Inside ``torch.compile``: ``(None, [])``, the contexts
    are Python state a compiled graph does not read (reading them would break the graph at every Mesa layer), so
    a compiled model records no CG statistics and solves with its own settings."""
    if torch.compiler.is_compiling():
        return None, []
    watching = [c for c in _ACTIVE.get() if c.watches(layer)]
    override = next((c.solver for c in reversed(watching) if c.solver is not None), None)
    return override, ([] if _REPLAY.get() else watching)


def replay_quietly(fn: Callable) -> Callable:
    """``fn`` for activation checkpointing (``torch.utils.checkpoint``): the first call runs as usual; every later
    call (the recomputation in the backward pass, possibly on another thread) runs with the collectors that were
    open at the first call, so the Mesa layers solve with the same settings and give the same outputs, but records
    nothing, so the CG statistics count each forward once."""
    captured: Optional[tuple] = None

    def run(*args, **kwargs):
        nonlocal captured
        if torch.compiler.is_compiling():  # no collectors inside a compiled graph (see active_collectors)
            return fn(*args, **kwargs)
        if captured is None:
            captured = _ACTIVE.get()
            return fn(*args, **kwargs)
        active, replay = _ACTIVE.set(captured), _REPLAY.set(True)
        try:
            return fn(*args, **kwargs)
        finally:
            _REPLAY.reset(replay)
            _ACTIVE.reset(active)

    return run


def mesa_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(module path, layer)`` of every :class:`~mesanet.layers.MesaLayer` in ``model``, in order."""
    from .mesa_layer import MesaLayer

    return [(name, module) for name, module in model.named_modules() if isinstance(module, MesaLayer)]


@contextlib.contextmanager
def collect_solver_stats(
    model: nn.Module, solver: SolverSettings | Mapping[str, Any] | None = None, *, keep: bool = False
) -> Iterator[SolverStatsCollector]:
    """Collect the CG statistics of every Mesa layer of ``model`` from each forward inside the block.

    ``solver``: settings the layers solve with for the duration (a mapping replaces fields of
    :data:`~mesanet.ops.INFERENCE`); ``None``: each layer's own. ``keep``: see :class:`SolverStatsCollector`.
    Nothing on the layers changes, before, during or after; contexts nest.
    """
    settings = None if solver is None else as_settings(solver, INFERENCE, "collect_solver_stats: solver")
    collector = SolverStatsCollector(mesa_layers(model), settings, keep)
    token = _ACTIVE.set(_ACTIVE.get() + (collector,))
    try:
        yield collector
    finally:
        _ACTIVE.reset(token)


__all__ = [
    "LayerSolverSummary",
    "SolverStatsCollector",
    "active_collectors",
    "collect_solver_stats",
    "mesa_layers",
    "replay_quietly",
]
