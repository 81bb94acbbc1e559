"""CG solver diagnostics of a model's Mesa layers at a chosen stopping rule.

``solver_report`` sets every :class:`~mesanet.layers.MesaLayer` to the requested inference settings
(``max_iter_inference``, ``tol_inference``) with ``record_solver_stats`` on, runs the windows through the
model in eval mode, and restores every layer's settings (and the model's training flag) afterwards, also
when something fails. A system is one (token, head) solve; its relative residual is ``||q - (H+Lambda)x|| / ||q||``
at exit, and it counts as converged when that is ``<= tol``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..layers import MesaLayer
from .evaluate import check_windows, model_device

_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


@dataclass(frozen=True)
class LayerSolverReport:
    name: str  # module path, e.g. "model.layers.1.mixer"
    layer_index: Optional[int]
    systems: int
    mean_iterations: float
    max_iterations: int
    mean_relative_residual: float
    max_relative_residual: float
    converged_fraction: float  # share of systems with relative residual <= tol


@dataclass(frozen=True)
class SolverReport:
    tol: float
    max_iter: int
    tokens: int
    layers: list[LayerSolverReport]
    message: Optional[str] = None  # set when there was nothing to measure (no Mesa layer)

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
            tol=self.tol, max_iter=self.max_iter, tokens=self.tokens, message=self.message,
            mean_iterations=self.mean_iterations, max_relative_residual=self.max_relative_residual,
            layers=[asdict(layer) for layer in self.layers],
        )

    def to_markdown(self) -> str:
        if not self.layers:
            return f"{self.message[0].upper()}{self.message[1:]}.\n"
        head = f"CG at tol = {self.tol:g}, max_iter = {self.max_iter}, over {self.tokens} tokens"
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


def mesa_layers(model: nn.Module) -> list[tuple[str, MesaLayer]]:
    """``(module path, layer)`` of every Mesa layer in ``model``, in order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, MesaLayer)]


def _check_settings(tol, max_iter) -> None:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"solver_report: expected tol to be a finite number >= 0, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"solver_report: expected max_iter to be an integer >= 0, got {max_iter!r}")


@torch.no_grad()
def solver_report(
    model: nn.Module, windows, tol: float = 1e-4, max_iter: int = 30, *, batch_size: int = 8, progress: bool = True
) -> SolverReport:
    """Per Mesa layer: mean / max CG iterations and mean / max final relative residual on ``windows [N, T]``
    at the stopping rule ``(max_iter, tol)``. A model without Mesa layers is not run; the report says so."""
    _check_settings(tol, max_iter)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"solver_report: expected batch_size to be an integer >= 1, got {batch_size!r}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    windows = check_windows(windows, vocab, where="solver_report")
    layers = mesa_layers(model)
    if not layers:
        kinds = getattr(getattr(model, "config", None), "mixer_types", None)
        detail = f" (mixers: {sorted(set(kinds))})" if kinds else ""
        return SolverReport(float(tol), max_iter, 0, [], f"the model has no Mesa layer{detail}: no CG solver to report on")

    saved = [(layer, layer.max_iter_inference, layer.tol_inference, layer.record_solver_stats, layer.last_solver_stats) for _, layer in layers]
    was_training = model.training
    totals = [dict(systems=0, iters=0.0, max_iters=0, residual=0.0, max_residual=0.0, converged=0) for _ in layers]
    device = model_device(model)
    try:
        model.eval()
        for _, layer in layers:
            layer.max_iter_inference, layer.tol_inference, layer.record_solver_stats = max_iter, float(tol), True
        for start in tqdm(range(0, len(windows), batch_size), desc=f"CG stats (tol {tol:g})", unit="batch", disable=not progress, leave=False):
            for _, layer in layers:
                layer.last_solver_stats = None
            model(input_ids=windows[start : start + batch_size].to(device), use_cache=False)
            for (name, layer), total in zip(layers, totals):
                stats = layer.last_solver_stats
                if stats is None:
                    raise RuntimeError(f"solver_report: Mesa layer {name} recorded no solver statistics")
                iters = stats.iterations.double()
                residual = stats.relative_residual.double()
                total["systems"] += iters.numel()
                total["iters"] += float(iters.sum())
                total["max_iters"] = max(total["max_iters"], int(iters.max()))
                total["residual"] += float(residual.sum())
                total["max_residual"] = max(total["max_residual"], float(residual.max()))
                total["converged"] += int((residual <= tol).sum())
    finally:
        for layer, iters, tol_saved, record, last in saved:
            layer.max_iter_inference, layer.tol_inference, layer.record_solver_stats, layer.last_solver_stats = iters, tol_saved, record, last
        model.train(was_training)

    reports = []
    for (name, _), total in zip(layers, totals):
        n = total["systems"]
        match = _LAYER_INDEX.search(name + ".")
        reports.append(LayerSolverReport(
            name=name, layer_index=int(match.group(1)) if match else None, systems=n,
            mean_iterations=total["iters"] / n, max_iterations=total["max_iters"],
            mean_relative_residual=total["residual"] / n, max_relative_residual=total["max_residual"],
            converged_fraction=total["converged"] / n,
        ))
    return SolverReport(float(tol), max_iter, int(windows.numel()), reports)


__all__ = ["LayerSolverReport", "SolverReport", "mesa_layers", "solver_report"]
