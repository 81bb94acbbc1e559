"""CG solver diagnostics of a model's Mesa layers at a chosen stopping rule.

``solver_report`` runs the windows through the model in eval mode inside
:func:`mesanet.layers.collect_solver_stats` (which may override the layers' solver settings for the duration;
no layer attribute is written) and restores the model's training flag afterwards, also when something fails.
A system is one (token, head) solve; its relative residual is ``||q - (H+Lambda)x|| / ||q||`` at exit, and it
counts as converged when the stopping rule stopped it (``<= tol``, or at the working precision's residual floor,
before ``max_iter``; :class:`mesanet.layers.solver_stats.LayerSolverSummary`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from mesanet.utils.validation import is_int

from ..layers import collect_solver_stats, mesa_layers
from ..ops import INFERENCE, SolverSettings
from ..ops.solver_settings import as_settings
from .evaluate import check_windows, model_device


@dataclass(frozen=True)
class LayerSolverReport:
    name: str  # module path, e.g. "model.layers.1.mixer"
    layer_index: Optional[int]
    systems: int
    mean_iterations: float
    max_iterations: int
    mean_relative_residual: float
    max_relative_residual: float
    converged_fraction: float  # share of systems the stopping rule stopped (tol or residual floor)


@dataclass(frozen=True)
class SolverReport:
    """``solver``: the settings the report ran with (``SolverSettings.to_dict()``; ``None`` when the layers
    used their own settings and those differ between layers)."""

    solver: Optional[dict]
    tokens: int
    layers: list[LayerSolverReport]
    message: Optional[str] = None  # set when there was nothing to measure (no Mesa layer)

    @property
    def tol(self) -> Optional[float]:
        return None if self.solver is None else self.solver["tol"]

    @property
    def max_iter(self) -> Optional[int]:
        return None if self.solver is None else self.solver["max_iter"]

    @property
    def has_mesa(self) -> bool:
        return bool(self.layers)

    @property
    def mean_iterations(self) -> Optional[float]:
        """Mean over every system of every Mesa layer (``None`` without Mesa layers)."""
        total = sum(layer.systems for layer in self.layers)
        return sum(layer.mean_iterations * layer.systems for layer in self.layers) / total if total else None

    @property
    def max_relative_residual(self) -> Optional[float]:
        return max((layer.max_relative_residual for layer in self.layers), default=None)

    def to_dict(self) -> dict:
        return dict(
            solver=self.solver,
            tol=self.tol,
            max_iter=self.max_iter,
            tokens=self.tokens,
            message=self.message,
            mean_iterations=self.mean_iterations,
            max_relative_residual=self.max_relative_residual,
            layers=[asdict(layer) for layer in self.layers],
        )

    def to_markdown(self) -> str:
        if not self.layers:
            return f"{self.message[0].upper()}{self.message[1:]}.\n"
        rule = (
            "each layer's own settings"
            if self.solver is None
            else (f"tol = {self.tol:g}, max_iter = {self.max_iter}, preconditioner = {self.solver['preconditioner']}")
        )
        every = (self.solver or {}).get("precondition_every")
        rule += f" refreshed every {every} tokens" if every else ""
        head = f"CG at {rule}, over {self.tokens} tokens"
        rows = [
            "| layer | mean iters | max iters | mean rel. residual | max rel. residual | converged |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for layer in self.layers:
            rows.append(
                f"| {layer.name} | {layer.mean_iterations:.2f} | {layer.max_iterations} | {layer.mean_relative_residual:.2e} "
                f"| {layer.max_relative_residual:.2e} | {100 * layer.converged_fraction:.1f}% |"
            )
        return head + ":\n\n" + "\n".join(rows) + "\n"


@torch.no_grad()
def solver_report(
    model: nn.Module,
    windows,
    solver: SolverSettings | Mapping[str, Any] | None = None,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> SolverReport:
    """Per Mesa layer: mean / max CG iterations and mean / max final relative residual on ``windows [N, T]``.

    ``solver``: the :class:`~mesanet.ops.SolverSettings` to measure (a mapping replaces fields of
    :data:`~mesanet.ops.INFERENCE`); ``None``: each layer's own ``solver_inference``. A model without Mesa
    layers is not run; the report says so."""
    if not is_int(batch_size, 1):
        raise ValueError(f"solver_report: expected batch_size to be an integer >= 1, got {batch_size!r}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    windows = check_windows(windows, vocab, where="solver_report")
    solver = None if solver is None else as_settings(solver, INFERENCE, "solver_report: solver")
    layers = mesa_layers(model)
    with collect_solver_stats(model, solver) as collector:
        if not layers:
            kinds = getattr(getattr(model, "config", None), "mixer_types", None)
            detail = f" (mixers: {sorted(set(kinds))})" if kinds else ""
            settings = None if collector.solver is None else collector.solver.to_dict()
            return SolverReport(settings, 0, [], f"the model has no Mesa layer{detail}: no CG solver to report on")
        was_training = model.training
        device = model_device(model)
        label = "own settings" if collector.solver is None else f"tol {collector.solver.tol:g}"
        try:
            model.eval()
            for start in tqdm(
                range(0, len(windows), batch_size), desc=f"CG stats ({label})", unit="batch", disable=not progress, leave=False
            ):
                model(input_ids=windows[start : start + batch_size].to(device), use_cache=False)
        finally:
            model.train(was_training)
    summaries = {s.name: s for s in collector.summary()}
    missing = [name for name, _ in layers if name not in summaries]
    if missing:
        raise RuntimeError(f"solver_report: Mesa layer(s) {missing} recorded no solver statistics")
    reports = [
        LayerSolverReport(
            name=s.name,
            layer_index=s.layer_index,
            systems=s.systems,
            mean_iterations=s.mean_iterations,
            max_iterations=s.max_iterations,
            mean_relative_residual=s.mean_relative_residual,
            max_relative_residual=s.max_relative_residual,
            converged_fraction=s.converged_fraction,
        )
        for s in (summaries[name] for name, _ in layers)
    ]
    if collector.solver is not None:
        settings = collector.solver.to_dict()
    else:
        own = {layer.solver_inference for _, layer in layers}
        settings = own.pop().to_dict() if len(own) == 1 else None
    return SolverReport(settings, int(windows.numel()), reports)


__all__ = ["LayerSolverReport", "SolverReport", "mesa_layers", "solver_report"]
