"""Smoke test of benchmarks/bench_mesa_op.py: a tiny run through its function API, subprocess workers included."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mesa_op.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_mesa_op", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


TINY_SHAPE = dict(batch=1, heads=2, dk=16, dv=16, chunk=16)
ONE_CALL = dict(warmup=1, min_repeats=1, max_repeats=1, budget_s=0.0)


@pytest.mark.slow
def test_tiny_benchmark_writes_json_and_markdown(tmp_path):
    # In-process (isolate=False): each worker subprocess costs ~2-4 s of interpreter start-up;
    # the worker path has its own test below.
    bench = _load_script()
    solvers = [bench.SolverSetting("fixed-2", 2, 0.0), bench.SolverSetting("tol-1e-2", 2, 1e-2)]
    results = bench.run_benchmark(
        lengths=[32, 64], solvers=solvers, shape=bench.Shape(**TINY_SHAPE), policy=bench.RepeatPolicy(**ONE_CALL),
        accuracy_length=32, matmul_size=128, isolate=False, retries=0, out_dir=tmp_path, log=lambda _: None,
    )

    written = json.loads((tmp_path / "mesa_op.json").read_text())
    assert (tmp_path / "mesa_op.md").read_text().startswith("# Mesa operator benchmark")
    expected = {"machine", "config", "flop_formula", "matmul_peak", "runs", "scaling", "accuracy", "targets",
                "quiet_machine", "total_runtime_s"}
    assert expected <= set(written) and expected <= set(results)
    assert {"torch_version", "torch_threads", "cpu_model", "device"} <= set(written["machine"])
    assert written["matmul_peak"]["peak_gflops"] > 0 and isinstance(written["quiet_machine"]["passed"], bool)

    assert len(written["runs"]) == 2 * 2 * 2  # lengths x solvers x modes
    for run in written["runs"]:
        assert {"median_s", "peak_memory_bytes", "cg_mean_iterations", "cg_max_iterations", "cg_steps_run"} <= set(run)
        assert run["median_s"] > 0 and run["cg_max_iterations"] <= 2
        if run["mode"] == "fwd":
            assert run["gflops"] > 0
    assert {(s["solver"], s["mode"]) for s in written["scaling"]} == {(s.name, m) for s in solvers for m in bench.MODES}
    assert all(isinstance(s["time_pass"], bool) for s in written["scaling"])
    assert isinstance(written["targets"]["forward_peak_fraction"]["passed"], bool)

    assert len(written["accuracy"]) == len(solvers) * 2  # float32 and float64 inputs
    for row in written["accuracy"]:
        assert math.isfinite(row["relative_error"]) and row["relative_error"] < 1.0


@pytest.mark.slow
def test_worker_subprocesses_measure_one_configuration():
    bench = _load_script()
    spec = dict(length=48, solver=dict(name="tol", max_iter=3, tol=1e-3), mode="fwd+bwd", shape=TINY_SHAPE,
                policy=ONE_CALL, device="cpu", seed=0)
    run = bench.measure_config(spec, isolate=True, retries=0)  # a timing and a memory subprocess
    assert run["length"] == 48 and run["mode"] == "fwd+bwd" and run["repeats"] == 1 and run["timing_attempts"] == 1
    assert run["median_s"] > 0 and run["peak_memory_bytes"] >= 0 and run["memory_method"]
    assert 1 <= run["cg_steps_run"] == run["cg_max_iterations"] <= 3


def test_flop_formula_at_paper_size():
    """The documented per-token count at d = dv = C = 64 with 30 steps (a hand-checked number)."""
    bench = _load_script()
    states = 2 * 64 * 128
    solve = 31 * (2 * 64 * 64 + 4 * 64 * 64) + 2 * 64 * 64
    output = 2 * 64 * 64 * 3
    assert bench.forward_flops_per_token_head(64, 64, 64, 30) == states + solve + output
