"""The adaptive CG rule in training (tolerance, chunk preconditioner) against a fixed-budget solve."""

from __future__ import annotations

import torch

from mesanet.train import read_metrics, train

from tolerances import ADAPTIVE_TRAIN_LOSS_RTOL

FIXED = dict(max_iter=30, tol=0.0, preconditioner="jacobi")  # every system runs to the float32 floor
ADAPTIVE = dict(max_iter=30)  # mesanet.ops.TRAINING: chunk-preconditioned CG to tol 1e-4


def _model(solver: dict) -> dict:
    return dict(preset="tiny", mixer="mesa", overrides=dict(solver_training=solver, solver_inference=solver))


def test_adaptive_training_tracks_the_fixed_budget_loss_with_fewer_steps(make_cfg):
    over = dict(max_steps=12, optim=dict(warmup_steps=2))
    fixed = train(make_cfg(name="fixed", model=_model(FIXED), **over), progress=False)
    adaptive = train(make_cfg(name="adaptive", model=_model(ADAPTIVE), **over), progress=False)
    rows_f, rows_a = read_metrics(fixed.run_dir / "metrics.csv"), read_metrics(adaptive.run_dir / "metrics.csv")
    loss_f = torch.tensor([r["train_loss"] for r in rows_f], dtype=torch.float64)
    loss_a = torch.tensor([r["train_loss"] for r in rows_a], dtype=torch.float64)
    torch.testing.assert_close(loss_a[:4], loss_f[:4], rtol=ADAPTIVE_TRAIN_LOSS_RTOL, atol=0)
    assert loss_a[-1] < loss_a[0] and loss_f[-1] < loss_f[0]  # both learn
    steps_f = sum(r["cg_mean"] for r in rows_f) / len(rows_f)
    steps_a = sum(r["cg_mean"] for r in rows_a) / len(rows_a)
    assert steps_a < steps_f  # and solves with fewer CG steps per system
