"""solver_report: CG iterations and residuals of the Mesa layers at a requested stopping rule (through
``collect_solver_stats``: no layer attribute is written)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mesanet.eval import SolverReport, solver_report
from mesanet.eval.solver import mesa_layers
from mesanet.layers import collect_solver_stats
from mesanet.ops import INFERENCE, SolverSettings

from eval_helpers import build_model, random_tokens


def windows_of(n: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(random_tokens(n * length, seed=seed)).view(n, length)


def settings(model):
    """Every attribute of every Mesa layer (a shallow copy: the report must neither write nor add any)."""
    return [copy.copy(vars(l)) for _, l in mesa_layers(model)]


def test_residuals_meet_the_tolerance_and_the_settings_are_restored():
    model = build_model(["mesa", "hawk", "mesa"], num_hidden_layers=3).train()
    before = settings(model)
    report = solver_report(model, windows_of(3, 40), SolverSettings(max_iter=200, tol=1e-3), batch_size=2, progress=False)
    assert isinstance(report, SolverReport) and report.has_mesa and report.message is None
    assert [l.name for l in report.layers] == ["model.layers.0.mixer", "model.layers.2.mixer"]
    assert [l.layer_index for l in report.layers] == [0, 2]
    heads = model.config.num_heads
    for layer in report.layers:
        assert layer.systems == 3 * 40 * heads
        assert layer.max_relative_residual <= 1e-3 and layer.converged_fraction == 1.0
        assert 0 < layer.mean_relative_residual <= layer.max_relative_residual
        assert 1 <= layer.mean_iterations <= layer.max_iterations < 200
    assert report.tokens == 3 * 40 and report.tol == 1e-3 and report.max_iter == 200
    assert report.solver == SolverSettings(max_iter=200, tol=1e-3).to_dict()
    assert settings(model) == before and model.training  # layers untouched, training flag restored


def test_numbers_match_the_layers_own_statistics_at_the_same_settings():
    model = build_model("mesa")
    windows = windows_of(2, 33, seed=1)
    report = solver_report(model, windows, batch_size=8, progress=False)  # the layers' own settings
    assert report.solver == INFERENCE.to_dict()
    with torch.no_grad(), collect_solver_stats(model, keep=True) as collected:
        model(windows, use_cache=False)
    for (name, layer), measured in zip(mesa_layers(model), report.layers):
        (stats,) = collected.records[name]
        assert math.isclose(measured.mean_iterations, stats.mean_iterations, rel_tol=1e-6)  # theirs: a float32 mean
        assert measured.max_iterations == stats.max_iterations
        assert math.isclose(measured.max_relative_residual, stats.max_relative_residual, rel_tol=1e-6)


def test_a_tighter_tolerance_takes_more_iterations_and_tol_zero_runs_every_step():
    model = build_model("mesa")
    windows = windows_of(2, 32, seed=2)
    loose = solver_report(model, windows, dict(tol=1e-2, max_iter=100), progress=False)
    tight = solver_report(model, windows, dict(tol=1e-6, max_iter=100), progress=False)
    assert loose.mean_iterations < tight.mean_iterations
    fixed = solver_report(model, windows, dict(tol=0.0, max_iter=3, preconditioner="jacobi"), progress=False)
    assert all(l.max_iterations == 3 and l.mean_iterations == 3.0 for l in fixed.layers)
    assert "| model.layers.0.mixer | 3.00 | 3 |" in fixed.to_markdown()
    assert "preconditioner = jacobi, over" in fixed.to_markdown()
    refreshed = solver_report(model, windows, dict(tol=1e-4, precondition_every=8), progress=False)
    assert refreshed.solver["precondition_every"] == 8
    assert "preconditioner = chunk refreshed every 8 tokens, over" in refreshed.to_markdown()


def test_settings_are_restored_when_the_forward_fails(monkeypatch):
    model = build_model("mesa")
    before = settings(model)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        solver_report(model, windows_of(1, 8), dict(tol=1e-8, max_iter=5), progress=False)
    assert settings(model) == before


def test_a_model_without_mesa_layers_says_so():
    report = solver_report(build_model(["hawk", "attention"]), windows_of(1, 8), progress=False)
    assert not report.has_mesa and report.layers == [] and report.mean_iterations is None
    assert report.message == "the model has no Mesa layer (mixers: ['attention', 'hawk']): no CG solver to report on"
    assert "no Mesa layer" in report.to_markdown() and report.to_dict()["layers"] == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(solver=dict(tol=-1.0)), "solver_report: solver: SolverSettings.tol: expected a finite number >= 0, got -1.0"),
        (dict(solver=dict(tol=math.nan)), "solver_report: solver: SolverSettings.tol: expected a finite number >= 0"),
        (dict(solver=dict(max_iter=-1)), "solver_report: solver: SolverSettings.max_iter: expected an integer >= 0, got -1"),
        (dict(solver=dict(max_iter=2.5)), "solver_report: solver: SolverSettings.max_iter: expected an integer >= 0, got 2.5"),
        (dict(solver=dict(maxiter=3)), r"solver_report: solver: unknown solver setting\(s\) \['maxiter'\]"),
        (dict(solver="tight"), "solver_report: solver: expected SolverSettings, a mapping of its fields or None, got str"),
        (dict(batch_size=0), "expected batch_size to be an integer >= 1, got 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        solver_report(build_model("mesa"), windows_of(1, 8), progress=False, **kwargs)
