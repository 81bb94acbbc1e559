"""Mesa CG steps in the training metrics (CSV, TensorBoard, progress bar) and the rate-limited warning for
solves that stop at ``max_iter`` above the tolerance."""

from __future__ import annotations

import warnings

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mesanet.layers import MesaLayer
from mesanet.train import SolverConvergenceWarning, SolverMonitor, Trainer, read_metrics, train
from mesanet.train import trainer as trainer_module
from mesanet.train.metrics import MetricsLogger


def test_metrics_csv_tensorboard_and_progress_get_the_cg_steps(make_cfg, monkeypatch):
    postfixes = []

    class Bar:  # records what the trainer shows in the progress bar
        def __init__(self, *args, **kwargs):
            pass

        def set_postfix(self, postfix, refresh=True):
            postfixes.append(dict(postfix))

        def update(self, n=1):
            pass

        def close(self):
            pass

    monkeypatch.setattr(trainer_module, "tqdm", Bar)
    adaptive = dict(model=dict(overrides=dict(solver_training=dict(max_iter=30, tol=1e-3))), max_steps=3)
    result = train(make_cfg(**adaptive), progress=True)
    rows = read_metrics(result.run_dir / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # tiny preset: layer 1 is the Mesa layer; a tolerance stops most solves early
        assert 1 <= r["cg_mean"] < r["cg_max"] <= 30 and isinstance(r["cg_max"], int)
        assert r["cg_mean_l1"] == r["cg_mean"] and r["cg_max_l1"] == r["cg_max"]
    assert len(postfixes) == 3 and all("cg" in p for p in postfixes)
    mean, peak = postfixes[-1]["cg"].split("/")
    assert float(mean) == pytest.approx(rows[-1]["cg_mean"], abs=0.05) and int(peak) == rows[-1]["cg_max"]
    events = EventAccumulator(str(result.run_dir / "tb"))
    events.Reload()
    assert {"train/cg_mean", "train/cg_max", "train/cg_mean_l1", "train/cg_max_l1"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("train/cg_max_l1")] == [r["cg_max_l1"] for r in rows]


def test_no_cg_columns_without_mesa_layers(make_cfg):
    result = train(make_cfg(model=dict(preset="tiny", mixer="hawk", overrides={}), max_steps=2), progress=False)
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "cg_" not in header


def test_resume_adds_cg_columns_to_an_older_metrics_file(tmp_path):
    old = MetricsLogger(tmp_path, tensorboard=False)
    old.log(1, lr=0.1, train_loss=2.0, grad_norm=1.0, tokens_per_s=10.0, elapsed=1.0, tokens=8)
    old.log(2, lr=0.1, train_loss=1.5, grad_norm=1.0, tokens_per_s=10.0, elapsed=2.0, tokens=16)
    old.close()
    new = MetricsLogger(tmp_path, start_step=1, tensorboard=False, extra_columns=("cg_mean", "cg_max"))
    new.log(
        2, lr=0.1, train_loss=1.4, grad_norm=1.0, tokens_per_s=10.0, elapsed=2.0, tokens=16, extra=dict(cg_mean=2.5, cg_max=4)
    )
    new.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [(r["step"], r["cg_mean"], r["cg_max"]) for r in rows] == [(1, None, None), (2, 2.5, 4)]


def mesa_model(max_iter: int, tol: float) -> torch.nn.Module:
    torch.manual_seed(0)
    solver = dict(max_iter=max_iter, tol=tol, preconditioner="none")
    return torch.nn.Sequential(MesaLayer(16, 2, 8, chunk_size=4, solver_training=solver)).train()


def run_steps(monitor: SolverMonitor, model: torch.nn.Module, steps: int) -> list[str]:
    messages = []
    for step in range(1, steps + 1):
        with monitor.collect():
            model(torch.randn(2, 12, 16))
        message = monitor.check(step)
        if message:
            messages.append(message)
    return messages


def test_warning_for_too_few_steps_is_rate_limited():
    model = mesa_model(max_iter=1, tol=1e-6)
    monitor = SolverMonitor(model, warn_every=3)
    with pytest.warns(SolverConvergenceWarning) as caught:
        messages = run_steps(monitor, model, steps=5)
    assert len(caught) == len(messages) == 2  # steps 1 and 4, nothing at 2, 3, 5
    assert messages[0].startswith("step 1: ") and messages[1].startswith("step 4: ")
    assert "layer 0: " in messages[0] and "stopped at max_iter = 1 with relative residual up to" in messages[0]
    assert "> tol = 1e-06" in messages[0]
    assert monitor.metrics()["cg_max"] == 1 and monitor.progress_text() == "1.0/1"


@pytest.mark.parametrize("max_iter, tol", [(1, 0.0), (64, 1e-3)])
def test_no_warning_without_tolerance_or_when_converged(max_iter, tol):
    model = mesa_model(max_iter=max_iter, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SolverConvergenceWarning)
        assert run_steps(SolverMonitor(model, warn_every=1), model, steps=2) == []


def test_the_trainer_warns_once_per_interval(make_cfg):
    over = dict(model=dict(overrides=dict(solver_training=dict(max_iter=1, tol=1e-6, preconditioner="none"))), max_steps=3)
    with pytest.warns(
        SolverConvergenceWarning, match=r"step 1: Mesa CG did not converge \(layer model.layers.1.mixer: "
    ) as caught:
        Trainer(make_cfg(**over), progress=False).fit()
    assert len([w for w in caught if w.category is SolverConvergenceWarning]) == 1  # default interval: 100 steps


def test_monitor_rejects_a_bad_interval():
    with pytest.raises(ValueError, match="SolverMonitor: expected warn_every to be an integer >= 1, got 0"):
        SolverMonitor(torch.nn.Linear(2, 2), warn_every=0)
