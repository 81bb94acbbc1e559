"""One ``SolverSettings`` from layer to op, and CG statistics from :func:`collect_solver_stats` (no layer
attribute is written)."""

from __future__ import annotations

import copy

import pytest
import torch

from mesanet.layers import MesaLayer, collect_solver_stats, mesa_layers
from mesanet.layers import mesa_layer as mesa_layer_module
from mesanet.ops import INFERENCE, TRAINING, SolverSettings
from mesanet.ops.results import MesaOutput, SolverStats
from mesanet.ops.solver_settings import as_settings

D, H, DK = 16, 2, 8


def make_layer(**options) -> MesaLayer:
    torch.manual_seed(0)
    return MesaLayer(D, H, DK, chunk_size=4, **options)


class Spy:
    """Stands in for an op: records the ``solver`` and ``return_stats`` it got, returns zeros and fixed stats."""

    def __init__(self, iterations: int = 3, residual: float = 1e-5):
        self.calls: list[dict] = []
        self.iterations, self.residual = iterations, residual

    def __call__(self, q, k, v, g, beta, lam, state=None, *, solver=None, return_stats=False, **kwargs):
        self.calls.append(dict(solver=solver, return_stats=return_stats))
        b, h, dk = q.shape[0], q.shape[-2], q.shape[-1]
        shape = q.shape[:-1]
        stats = SolverStats(torch.full(shape, self.iterations, dtype=torch.int32), torch.full(shape, self.residual))
        zeros = torch.zeros(b, h, dk, dk, dtype=q.dtype)
        return MesaOutput(
            torch.zeros_like(v), (zeros, torch.zeros(b, h, dk, v.shape[-1], dtype=q.dtype)), stats if return_stats else None
        )


@pytest.fixture()
def spies(monkeypatch):
    parallel, step = Spy(), Spy()
    monkeypatch.setattr(mesa_layer_module, "mesa", parallel)
    monkeypatch.setattr(mesa_layer_module, "mesa_step", step)
    return parallel, step


def test_defaults_and_mappings():
    layer = make_layer()
    assert layer.solver_training == TRAINING and layer.solver_inference == INFERENCE
    layer = make_layer(solver_training=dict(max_iter=5), solver_inference=INFERENCE.replace(decode="cg"))
    assert layer.solver_training == TRAINING.replace(max_iter=5)  # a mapping replaces fields of the default
    assert layer.solver_inference.decode == "cg"
    assert layer.train().solver is layer.solver_training and layer.eval().solver is layer.solver_inference


def test_the_op_receives_the_settings_of_the_mode(spies):
    parallel, step = spies
    train_settings, eval_settings = SolverSettings(max_iter=7, tol=0.0), SolverSettings(max_iter=3, tol=1e-3, decode="cg")
    layer = make_layer(solver_training=train_settings, solver_inference=eval_settings)
    x = torch.randn(2, 5, D)
    layer.train()(x)
    _, state = layer.eval()(x, use_cache=True)
    layer(x[:, :1], state=state)  # the one-token step
    assert [c["solver"] for c in parallel.calls] == [train_settings, eval_settings]
    assert [c["solver"] for c in step.calls] == [eval_settings]
    assert not any(c["return_stats"] for c in parallel.calls + step.calls)  # no stats asked outside a context


@pytest.mark.parametrize(
    "options, message",
    [
        (
            dict(solver_training=dict(max_iter=-1)),
            r"MesaLayer: solver_training: SolverSettings.max_iter: expected an integer >= 0",
        ),
        (dict(solver_inference=dict(tol=float("nan"))), r"MesaLayer: solver_inference: SolverSettings.tol"),
        (dict(solver_inference=dict(decode="lu")), r"MesaLayer: solver_inference: SolverSettings.decode"),
        (dict(solver_training=dict(maxiter=3)), r"MesaLayer: solver_training: unknown solver setting\(s\) \['maxiter'\]"),
        (
            dict(solver_training="fast"),
            r"MesaLayer: solver_training: expected SolverSettings, a mapping of its fields or None, got str",
        ),
    ],
)
def test_bad_settings_raise_value_error_naming_the_field(options, message):
    with pytest.raises(ValueError, match=message):
        make_layer(**options)


def test_solver_settings_helper():
    assert as_settings(None, TRAINING, "x") is TRAINING
    assert as_settings({"tol": 0.0}, INFERENCE, "x") == INFERENCE.replace(tol=0.0)
    with pytest.raises(ValueError, match="^where: "):
        as_settings({"preconditioner": "ilu"}, INFERENCE, "where")


class Stack(torch.nn.Module):
    """Mixers in sequence (each returns ``(y, state)``)."""

    def __init__(self, *mixers):
        super().__init__()
        self.layers = torch.nn.ModuleList(mixers)

    def forward(self, x):
        for mixer in self.layers:
            x = x + mixer(x)[0]
        return x


def test_collect_leaves_the_layers_untouched_and_reports_per_layer():
    model = Stack(make_layer(), Stack(), make_layer(solver_inference=dict(max_iter=4, tol=0.0))).eval()  # no Mesa layer at 1
    before = [copy.copy(vars(layer)) for _, layer in mesa_layers(model)]
    x = torch.randn(2, 6, D)
    with collect_solver_stats(model) as stats:
        model(x)
        model(x[:1])
    after = [vars(layer) for _, layer in mesa_layers(model)]
    assert after == before  # no attribute written, none added
    summary = stats.summary()
    assert [s.name for s in summary] == ["layers.0", "layers.2"] and [s.calls for s in summary] == [2, 2]
    assert [s.layer_index for s in summary] == [0, 2]
    assert all(s.systems == (2 + 1) * 6 * H for s in summary)
    first, second = summary
    assert 1 <= first.mean_iterations <= first.max_iterations <= INFERENCE.max_iter
    assert second.max_iterations <= 4 and second.tol == 0.0 and second.max_iter == 4
    assert 0 <= first.max_relative_residual and 0 <= first.converged_fraction <= 1
    stats.reset()
    assert stats.summary() == []
    # outside the context nothing is collected any more
    model(x)
    assert stats.summary() == []


def test_collect_can_override_the_settings_for_the_duration(spies):
    parallel, _ = spies
    layer = make_layer().eval()
    override = SolverSettings(max_iter=2, tol=0.0)
    with collect_solver_stats(layer, override) as outer:
        layer(torch.randn(1, 3, D))
        with collect_solver_stats(layer, dict(max_iter=9)) as inner:  # the innermost override wins
            layer(torch.randn(1, 3, D))
    layer(torch.randn(1, 3, D))
    assert [c["solver"] for c in parallel.calls] == [override, INFERENCE.replace(max_iter=9), INFERENCE]
    assert [c["return_stats"] for c in parallel.calls] == [True, True, False]
    assert outer.summary()[0].calls == 2 and inner.summary()[0].calls == 1
    assert layer.solver_inference == INFERENCE
    with pytest.raises(ValueError, match="collect_solver_stats: solver: SolverSettings.max_iter"):
        with collect_solver_stats(layer, dict(max_iter=-3)):
            pass


def test_stalled_solves_are_counted(spies):
    parallel, _ = spies
    parallel.iterations, parallel.residual = 2, 0.5  # every system used all steps and is far from tol
    layer = make_layer(solver_inference=dict(max_iter=2, tol=1e-4)).eval()
    with collect_solver_stats(layer) as stats:
        layer(torch.randn(2, 3, D))
    (s,) = stats.summary()
    assert s.stalled == s.systems == 2 * 3 * H and s.worst_stalled_residual == pytest.approx(0.5) and s.converged == 0


def test_with_tol_zero_a_solve_stopped_at_the_residual_floor_counts_as_converged():
    """tol = 0 leaves only the working precision's residual floor: systems it stopped are converged, systems the
    step budget cut off are not (and, above tol, stalled)."""
    layer = make_layer().eval()
    x = torch.randn(2, 6, D)
    with collect_solver_stats(layer, SolverSettings(max_iter=200, tol=0.0)) as ample:
        layer(x)
    with collect_solver_stats(layer, SolverSettings(max_iter=1, tol=0.0)) as cut:
        layer(x)
    (a,), (c,) = ample.summary(), cut.summary()
    assert a.max_iterations < 200 and a.converged == a.systems and a.stalled == 0
    assert c.converged < c.systems and c.stalled == c.systems - c.converged
