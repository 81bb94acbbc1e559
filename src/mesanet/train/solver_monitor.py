"""CG steps of the Mesa layers during training: metrics columns, progress text and a convergence warning.

:class:`SolverMonitor` opens :func:`mesanet.layers.collect_solver_stats` around the forward passes of one
optimizer step (every micro-batch; this process's systems only), then reads the per-layer totals back
once (one host synchronisation per step, next to the loss's own). It yields

* metrics columns ``cg_mean`` / ``cg_max`` (all Mesa layers) and ``cg_mean_l<i>`` / ``cg_max_l<i>`` (layer
  ``i`` of the model): mean and max CG steps over the step's systems (token x head);
* a compact progress text, ``"5.1/9"`` (mean / max over all layers);
* a :class:`SolverConvergenceWarning` when solves used all ``max_iter`` steps with a relative residual
  above ``tol > 0`` (the implicit backward then gives inexact gradients), at most once per
  ``warn_every`` steps, naming each such layer and its worst residual.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Optional

from torch import nn

from mesanet.layers import LayerSolverSummary, collect_solver_stats, mesa_layers
from mesanet.utils.validation import is_int

#: Default minimum number of steps between two convergence warnings.
WARN_EVERY_STEPS = 100


class SolverConvergenceWarning(RuntimeWarning):
    """Mesa CG solves stopped at ``max_iter`` with a residual above the tolerance."""


class SolverMonitor:
    """Per-step CG statistics of ``model``'s Mesa layers; inert for a model without them or when not ``enabled``."""

    def __init__(self, model: nn.Module, *, enabled: bool = True, warn_every: int = WARN_EVERY_STEPS):
        if not is_int(warn_every, 1):
            raise ValueError(f"SolverMonitor: expected warn_every to be an integer >= 1, got {warn_every!r}")
        self.model, self.warn_every = model, warn_every
        layers = mesa_layers(model) if enabled else []
        self.enabled = bool(layers)
        self.labels = {name: _label(name, i) for i, (name, _) in enumerate(layers)}
        self.columns: tuple[str, ...] = ()
        if self.enabled:
            self.columns = ("cg_mean", "cg_max") + tuple(
                f"cg_{kind}_{lab}" for lab in self.labels.values() for kind in ("mean", "max")
            )
        self.last: list[LayerSolverSummary] = []
        self.last_warning_step: Optional[int] = None

    @contextlib.contextmanager
    def collect(self) -> Iterator[None]:
        """Wrap the forward passes of one step; afterwards :attr:`last` holds its per-layer totals."""
        if not self.enabled:
            yield
            return
        with collect_solver_stats(self.model) as collector:
            yield
        self.last = collector.summary()

    def metrics(self) -> dict:
        """``column -> value`` of the last step (empty before the first step or without Mesa layers)."""
        if not self.last:
            return {}
        systems = sum(s.systems for s in self.last)
        out = {
            "cg_mean": sum(s.mean_iterations * s.systems for s in self.last) / max(systems, 1),
            "cg_max": max(s.max_iterations for s in self.last),
        }
        for s in self.last:
            out[f"cg_mean_{self.labels[s.name]}"] = s.mean_iterations
            out[f"cg_max_{self.labels[s.name]}"] = s.max_iterations
        return out

    def progress_text(self) -> Optional[str]:
        """``"mean/max"`` CG steps of the last step over all Mesa layers, e.g. ``"5.1/9"``; ``None`` without data."""
        m = self.metrics()
        return f"{m['cg_mean']:.1f}/{m['cg_max']}" if m else None

    def check(self, step: int) -> Optional[str]:
        """Warn (rate-limited) if the last step had solves stopped at ``max_iter`` above ``tol > 0``; returns the
        message when it warned."""
        stalled = [s for s in self.last if s.tol > 0 and s.stalled > 0]
        if not stalled or (self.last_warning_step is not None and step - self.last_warning_step < self.warn_every):
            return None
        self.last_warning_step = step
        parts = [
            f"layer {s.name}: {s.stalled} of {s.systems} solves stopped at max_iter = {s.max_iter} with relative "
            f"residual up to {s.worst_stalled_residual:.2e} > tol = {s.tol:g}"
            for s in stalled
        ]
        message = (
            f"step {step}: Mesa CG did not converge ({'; '.join(parts)}); gradients are inexact: raise "
            f"solver_training.max_iter (next warning at the earliest in {self.warn_every} steps)"
        )
        warnings.warn(message, SolverConvergenceWarning, stacklevel=2)
        return message


def _label(name: str, position: int) -> str:
    """``"l<i>"`` from a module path ``...layers.<i>...`` (else the Mesa layer's position)."""
    parts = name.split(".")
    for a, b in zip(parts, parts[1:]):
        if a == "layers" and b.isdigit():
            return f"l{b}"
    return f"l{position}"


__all__ = ["SolverConvergenceWarning", "SolverMonitor", "WARN_EVERY_STEPS"]
