"""evaluate_run on a run directory: the numbers, the files, the data wiring and the error messages."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import sys
import types

import numpy as np
import pytest

from mesanet.eval import CheckpointError, evaluate_lm, evaluate_run, run_eval
from mesanet.ops import INFERENCE

from eval_helpers import random_tokens

TRAIN_LEN = 16


def make_run(model_dir, root, name="tiny", data="data:\n  seq_len: 16\n"):
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {name}\n{data}")
    shutil.copytree(model_dir, run / "final")
    return run


def test_evaluate_run_writes_every_file_with_consistent_numbers(model_dir, tmp_path, eval_windows):
    run = make_run(model_dir, tmp_path)
    val = random_tokens(74, seed=9)  # windows of x1 (16 tokens) and x2 (32) fit; x8 (128) does not
    report = evaluate_run(run, extrapolation=(2, 8), max_windows=3, solver_windows=2, val_tokens=val, progress=False)

    files = {name: run / name for name in ("eval.json", "per_position.csv", "per_position.png", "summary.md")}
    assert all(f.is_file() for f in files.values())
    saved = json.loads(files["eval.json"].read_text())
    assert saved["val"] == report["val"] and saved["name"] == "tiny" and saved["train_len"] == TRAIN_LEN
    assert saved["model_dir"] == str(run / "final") and saved["run_dir"] == str(run)

    from mesanet.eval import load_checkpoint

    model = load_checkpoint(run / "final").model
    span = 64  # the factors share one token span: whole windows of the longest available length (x2, 32 tokens)
    expected = evaluate_lm(model, eval_windows(val[:span], TRAIN_LEN), progress=False)
    assert math.isclose(report["val"]["loss"], expected.loss, rel_tol=1e-6)
    assert math.isclose(report["val"]["ppl"], math.exp(report["val"]["loss"]), rel_tol=1e-12)
    ext = report["extrapolation"]
    assert sorted(ext) == ["1", "2", "8"] and ext["2"]["available"] and ext["2"]["seq_len"] == 32
    assert ext["8"] == dict(factor=8, seq_len=128, available=False, reason=ext["8"]["reason"])
    assert "fewer than one window of 128 tokens" in ext["8"]["reason"]

    solver = report["solver"]
    assert [l["name"] for l in solver["layers"]] == ["model.layers.1.mixer"]
    assert solver["solver"] == model.config.solver_inference == INFERENCE.to_dict()  # the model's own settings
    assert saved["settings"]["solver"] == model.config.solver_inference
    assert saved["model"]["solver_inference"] == model.config.solver_inference
    assert solver["layers"][0]["max_relative_residual"] <= INFERENCE.tol and solver["layers"][0]["converged_fraction"] == 1.0

    with files["per_position.csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["position", "nll_x1", "nll_x2"] and len(rows) == 31  # longest curve: 32 - 1
    assert rows[20]["nll_x1"] == "" and rows[20]["nll_x2"] != ""
    np.testing.assert_allclose([float(r["nll_x1"]) for r in rows[:15]], expected.per_position_nll, rtol=1e-5)

    summary = files["summary.md"].read_text()
    assert summary.startswith("# Evaluation: tiny")
    assert "| x8 | 128 | — | — | unavailable | unavailable |" in summary and "- x8: the validation split has 74 tokens" in summary
    assert (
        "## Mesa CG solver" in summary
        and "| model.layers.1.mixer |" in summary
        and "![per-position NLL](per_position.png)" in summary
    )


def test_out_dir_and_model_directory_outside_a_run(model_dir, tmp_path, eval_windows):
    val = random_tokens(100, seed=1)
    with pytest.raises(
        ValueError, match=r"is a model directory outside a run: give the training length \(mesanet eval --train-len N"
    ):
        evaluate_run(model_dir, val_tokens=val, progress=False)
    with pytest.raises(
        ValueError, match=r"is a model directory outside a run: give the text to evaluate on \(mesanet eval --val-text FILE"
    ):
        evaluate_run(model_dir, train_len=16, progress=False)
    out = tmp_path / "elsewhere"
    report = evaluate_run(model_dir, val_tokens=val, train_len=16, extrapolation=(), out_dir=out, max_windows=2, progress=False)
    assert (out / "eval.json").is_file() and report["run_dir"] is None and list(report["extrapolation"]) == ["1"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(solver=dict(tol=-1e-4)), "evaluate_run: solver: SolverSettings.tol: expected a finite number >= 0, got -0.0001"),
        (dict(solver=dict(max_iter=-2)), "evaluate_run: solver: SolverSettings.max_iter: expected an integer >= 0, got -2"),
        (dict(solver=dict(preconditioner="ilu")), "evaluate_run: solver: SolverSettings.preconditioner"),
        (dict(solver=3), "evaluate_run: solver: expected SolverSettings, a mapping of its fields or None, got int"),
        (dict(extrapolation=(2, 0)), r"expected extrapolation to be a list of integer factors >= 1, got \(2, 0\)"),
        (dict(extrapolation="24"), "expected extrapolation to be a list of integer factors >= 1"),
        (dict(max_windows=0), "expected max_windows to be None or an integer >= 1, got 0"),
        (dict(solver_windows=0), "expected solver_windows to be an integer >= 1, got 0"),
        (dict(batch_size=0), "expected batch_size to be an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_fail_before_anything_is_loaded(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        evaluate_run(tmp_path / "does-not-matter", progress=False, **kwargs)


def test_evaluate_run_errors(model_dir, tmp_path, eval_windows):
    run = make_run(model_dir, tmp_path, data="data: {}\n")
    with pytest.raises(
        ValueError, match="config.yaml: expected data.seq_len to be an integer >= 2 \\(the training length\\), got None"
    ):
        evaluate_run(run, val_tokens=random_tokens(64), progress=False)
    with pytest.raises(ValueError, match="cannot evaluate at the training length: the validation split has 10 tokens"):
        evaluate_run(run, val_tokens=random_tokens(10), train_len=16, progress=False)
    with pytest.raises(ValueError, match="validation token ids reach 600 but the model's vocabulary has 512 entries"):
        evaluate_run(run, val_tokens=np.full(64, 600), train_len=16, progress=False)
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="is a 'gpt2' model, not a MesaNet model"):
        evaluate_run(other, val_tokens=random_tokens(64), train_len=16, progress=False)
    corrupt = make_run(model_dir, tmp_path, name="corrupt")
    (corrupt / "final" / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        evaluate_run(corrupt, val_tokens=random_tokens(64), progress=False)


def test_validation_tokens_come_from_prepare_data_with_the_saved_data_config(model_dir, tmp_path, monkeypatch):
    """The run's ``data:`` section becomes a DataConfig (strictly), prepare_data runs once per config."""
    calls = []

    @dataclasses.dataclass
    class DataConfig:
        source: str = "stdlib"
        seq_len: int = 256
        seed: int = 0

    def prepare_data(cfg, progress=True):
        calls.append(cfg)
        return types.SimpleNamespace(val=random_tokens(200, seed=cfg.seed))

    module = types.ModuleType("mesanet.data")
    module.DataConfig, module.prepare_data = DataConfig, prepare_data
    from eval_helpers import fake_eval_windows

    module.eval_windows = fake_eval_windows
    monkeypatch.setitem(sys.modules, "mesanet.data", module)  # stand-in, whether or not the real one exists
    monkeypatch.setattr(run_eval, "_VAL_CACHE", {})

    run = make_run(model_dir, tmp_path, data="data:\n  source: stdlib\n  seq_len: 16\n  seed: 4\n")
    first = evaluate_run(run, extrapolation=(2,), max_windows=2, solver_windows=1, progress=False)
    second = evaluate_run(run, extrapolation=(2,), max_windows=2, solver_windows=1, progress=False)
    assert calls == [DataConfig(source="stdlib", seq_len=16, seed=4)]  # cached the second time
    assert first["val"] == second["val"] and first["val_split_tokens"] == 200

    bad = make_run(model_dir, tmp_path, name="bad", data="data:\n  seq_len: 16\n  sequence_length: 3\n")
    with pytest.raises(ValueError, match=r"data: unknown keys \['sequence_length'\]"):
        evaluate_run(bad, progress=False)


def test_solver_overrides_replace_fields_of_the_models_own_settings(model_dir, tmp_path, eval_windows):
    run = make_run(model_dir, tmp_path)
    report = evaluate_run(
        run,
        solver=dict(tol=1e-3, max_iter=60),
        extrapolation=(),
        max_windows=2,
        solver_windows=1,
        val_tokens=random_tokens(64, seed=2),
        progress=False,
    )
    own = report["model"]["solver_inference"]
    assert report["solver"]["solver"] == {**own, "tol": 1e-3, "max_iter": 60}  # the rest stays the model's
    assert report["settings"]["solver"] == report["solver"]["solver"]
    assert report["solver"]["layers"][0]["max_relative_residual"] <= 1e-3


def test_cli_flags_become_solver_overrides():
    from mesanet.cli import build_parser, solver_overrides

    parser = build_parser()
    assert solver_overrides(parser.parse_args(["eval", "runs/x"])) is None  # the model's own settings
    ns = parser.parse_args(["eval", "runs/x", "--tol", "1e-6", "--max-iter", "60", "--preconditioner", "jacobi"])
    assert solver_overrides(ns) == dict(tol=1e-6, max_iter=60, preconditioner="jacobi")
    ns = parser.parse_args(["eval", "runs/x", "--preconditioner", "chunk", "--precondition-every", "16"])
    assert solver_overrides(ns) == dict(preconditioner="chunk", precondition_every=16)
