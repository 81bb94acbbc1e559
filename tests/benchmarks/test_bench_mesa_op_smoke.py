"""Smoke test of benchmarks/bench_mesa_op.py: tiny runs through its function API (in-process and one
configuration through the worker subprocesses)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import bench_mesa_op as bench
from benchmarks import harness as h

STAND_IN_PEER = Path(__file__).resolve().parent / "peer_stand_in.py"
TINY_SHAPE = dict(batch=1, heads=2, dk=16, dv=16, chunk=16)
ONE_CALL = h.RepeatPolicy(warmup=1, min_repeats=1, max_repeats=1, budget_s=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tiny_run(out_dir, peer, **options):
    tiny = dict(
        lengths=[32, 64],
        shape=bench.Shape(**TINY_SHAPE),
        policy=ONE_CALL,
        decode_contexts=[32, 64],
        decode_batches=[1, 2],
        decode_policy=ONE_CALL,
        decode_inner=2,
        reference_length=32,
        matmul_size=64,
        isolate=False,
        retries=0,
    )
    return bench.run_benchmark(peer=peer, out_dir=out_dir, log=lambda _: None, **dict(tiny, **options))


def test_tiny_benchmark_with_a_peer_writes_json_and_markdown(tmp_path):
    results = _tiny_run(tmp_path, str(STAND_IN_PEER), preconditioners=True, preconditioner_length=32)
    written = json.loads((tmp_path / "mesa_op.json").read_text())
    markdown = (tmp_path / "mesa_op.md").read_text()
    assert markdown.startswith("# Mesa operator benchmark") and "## Decode" in markdown and "## Preconditioners" in markdown
    expected = {
        "machine",
        "config",
        "peer",
        "flop_formula",
        "matmul_peak",
        "runs",
        "accuracy",
        "reference_check",
        "decode",
        "preconditioners",
        "targets",
        "quiet_machine",
        "total_runtime_s",
    }
    assert expected <= set(written) and expected <= set(results)
    assert written["peer"]["loaded"] and written["matmul_peak"]["peak_gflops"] > 0

    variants = ["default", "fixed-30", "peer-30"]
    assert [v["name"] for v in written["config"]["variants"]] == variants
    assert len(written["runs"]) == 2 * 3 * 2  # lengths x variants x modes
    for run in written["runs"]:
        assert run["median_s"] > 0 and run["peak_memory_bytes"] >= 0 and run["cg_max_iterations"] <= 30
        assert (run["mode"] == "fwd") == ("gflops" in run)
    assert {(a["length"], a["variant"]) for a in written["accuracy"]} == {(n, v) for n in (32, 64) for v in variants}
    for row in written["accuracy"]:
        assert row["relative_error"] < 1e-3  # well-conditioned inputs: every variant converges
    assert written["reference_check"]["relative_error"] < 1e-10

    assert {(r["impl"], r["batch"], r["context"]) for r in written["decode"]} == {
        (impl, b, c) for impl in ("mesa_step", "peer-30") for b in (1, 2) for c in (32, 64)
    }
    assert all(r["median_s"] > 0 and r["relative_error"] < 1e-4 for r in written["decode"])
    assert {(p["inputs"], p["preconditioner"]) for p in written["preconditioners"]} == {
        (kind, name) for kind in ("random", "skewed") for name in bench.preconditioner_settings()
    }
    assert {"none", "jacobi", "chunk"} <= set(bench.preconditioner_settings())

    kinds = {c["kind"] for c in written["targets"]}
    assert {"peer_fwd+bwd", "peer_fwd", "error", "decode_time", "decode_peer", "decode_flat", "scaling", "peak_fraction"} <= kinds
    headline = [c for c in written["targets"] if c.get("headline")]
    assert {c["kind"] for c in headline} == {"peer_fwd+bwd", "peer_fwd", "error"} and all(c["length"] == 64 for c in headline)
    for check in written["targets"]:  # in-process CPU memory can read 0: then its scaling ratio is n/a
        if "memory" not in check["check"]:
            assert isinstance(check["passed"], bool) and math.isfinite(check["measured"]), check


def test_tiny_benchmark_skips_a_missing_peer(tmp_path):
    missing = tmp_path / "naive.py"
    results = _tiny_run(None, str(missing), decode_batches=[1], memory=False)
    assert not results["peer"]["loaded"] and "not found" in results["peer"]["note"]
    assert {r["variant"] for r in results["runs"]} == {"default", "fixed-30"}
    assert {r["impl"] for r in results["decode"]} == {"mesa_step"}
    assert "skipped" in bench.render_markdown(results)
    peer_checks = [c for c in results["targets"] if c["kind"] in ("peer_fwd", "peer_fwd+bwd", "decode_peer")]
    assert peer_checks and all(c["passed"] is None for c in peer_checks)


@pytest.mark.slow
def test_worker_subprocesses_measure_one_configuration(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers inherit the environment (see one_thread)
    spec = dict(
        length=48,
        variant=dict(name="tol", solver=dict(max_iter=3, tol=1e-3)),
        mode="fwd+bwd",
        shape=TINY_SHAPE,
        policy=vars(ONE_CALL),
        device="cpu",
        seed=0,
        retries=0,
        inputs="random",
        peer=None,
    )
    run = bench.measure_config(spec, isolate=True)  # a timing and a memory subprocess
    assert run["length"] == 48 and run["mode"] == "fwd+bwd" and run["repeats"] == 1 and run["attempts"] == 1
    assert run["median_s"] > 0 and run["peak_memory_bytes"] >= 0 and "MALLOC_MMAP_THRESHOLD_" in run["memory_method"]
    assert 1 <= run["cg_max_iterations"] <= 3
