"""Analysis "per-step-loss": the ridge / oracle references on cases with known answers, config validation and a
smoke run of ``main(["--quick", ...])``."""

from __future__ import annotations

import csv

import pytest
import torch

from mesanet.mesaopt.analysis.compressed import ridge_prediction
from mesanet.mesaopt.analysis.per_step_loss import (
    PerStepLossConfig,
    main,
    oracle_per_step_loss,
    ridge_loss,
    tune_ridge_lambda,
)
from mesanet.mesaopt.data.dynamics import LDSConfig, generate_lds

from tolerances import MESA_RIDGE_CONSTRUCTION_F32_RTOL, ORACLE_NOISE_FLOOR_RTOL, RIDGE_NOISELESS_ATOL


def test_tuned_ridge_is_exact_on_noiseless_data():
    task = LDSConfig(state_dim=4, seq_len=16, noise_std=0.0)
    states = generate_lds(task, 128, seed=5, dtype=torch.float64).states
    lam, loss = tune_ridge_lambda(states, -2.0, 8.0)
    assert lam >= 1e5  # noiseless: the optimal regulariser I/lam vanishes
    curve = ridge_loss(states, lam)
    n = task.state_dim
    # once the prefix holds n pairs (position index >= n) ridge recovers W* exactly: the oracle loss 0
    assert float(curve[n:].max()) <= RIDGE_NOISELESS_ATOL
    assert float(oracle_per_step_loss(task, 128, 5).max()) <= RIDGE_NOISELESS_ATOL
    # before that the system is underdetermined: the loss is clearly positive
    assert float(curve[: n - 1].min()) > 1e-3
    assert loss == pytest.approx(float(curve.mean()), rel=1e-12)


def test_tuned_lambda_beats_every_grid_point_on_noisy_data():
    task = LDSConfig(state_dim=3, seq_len=12, noise_std=0.3)
    states = generate_lds(task, 128, seed=7, dtype=torch.float64).states
    lam, loss = tune_ridge_lambda(states, -2.0, 4.0, grid=13)
    assert 1e-2 < lam < 1e4  # noisy: an interior optimum
    for k in range(13):
        grid_lam = 10.0 ** (-2.0 + 0.5 * k)
        assert loss <= float(ridge_loss(states, grid_lam).mean()) + 1e-12
    # ridge_loss is the loss of compressed.ridge_prediction, read one position ahead
    pred = ridge_prediction(states, lam)
    direct = 0.5 * (pred[:, 3] - states[:, 4]).square().sum(-1).mean()
    assert float(ridge_loss(states, lam)[3]) == pytest.approx(float(direct), rel=1e-12)


def test_oracle_loss_is_the_noise_floor():
    task = LDSConfig(state_dim=4, seq_len=16, noise_std=0.05)
    curve = oracle_per_step_loss(task, 2048, 5)
    floor = 0.5 * task.state_dim * task.noise_std**2
    assert curve.shape == (task.seq_len - 1,)
    assert float(curve.mean()) == pytest.approx(floor, rel=ORACLE_NOISE_FLOOR_RTOL)


def test_config_rejects_models_outside_the_zoo():
    with pytest.raises(ValueError, match="valid names") as info:
        PerStepLossConfig(models=["linear-1", "no-such-model"])
    assert "no-such-model" in str(info.value) and "mesa-1" in str(info.value)
    with pytest.raises(ValueError, match="non-empty"):
        PerStepLossConfig(models=[])
    with pytest.raises(ValueError, match="distinct"):
        PerStepLossConfig(models=["mesa-1", "mesa-1"])


def test_quick_run_writes_outputs(tmp_path):
    torch.set_num_threads(1)
    assert main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    for name in ("per_step_loss.csv", "per_step_loss.png", "summary.csv", "summary.md", "config.yaml"):
        assert (tmp_path / name).is_file(), name
    with open(tmp_path / "per_step_loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 49
    assert set(rows[0]) == {"t", "linear-1", "mesa-1", "softmax-2", "hybrid-softmax-mesa", "ridge", "oracle"}
    assert sum(float(r["oracle"]) for r in rows) < sum(float(r["ridge"]) for r in rows)
    md = (tmp_path / "summary.md").read_text()
    assert md.count("PASS") + md.count("MISS") == 2
    # the single-layer diagnostics: the ridge construction of mesa-1's layer reproduces ridge (ratio 1.0000)
    assert "Single-layer diagnostics (`mesa-1`)" in md
    line = next(x for x in md.splitlines() if x.strip().startswith("last / ridge ="))
    assert float(line.split("=")[1].split(",")[0]) == pytest.approx(1.0, abs=MESA_RIDGE_CONSTRUCTION_F32_RTOL + 5e-5)
