"""Smoke test of benchmarks/bench_training_options.py on a tiny model (the eager compile backend; one timed call)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_training_options as bench
from benchmarks import harness as h

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_tiny_run_measures_checkpointing_and_compile(tmp_path):
    results = bench.run_benchmark(
        ["hawk+mesa"],
        preset="tiny",
        overrides=dict(chunk_size=16),
        batch=2,
        length=64,
        backend="eager",
        policy=h.RepeatPolicy(warmup=1, min_repeats=1, max_repeats=1, budget_s=0.0),
        out_dir=tmp_path,
        log=lambda _: None,
    )
    written = json.loads((tmp_path / "training_options.json").read_text())
    assert (tmp_path / "training_options.md").read_text().startswith("# Training options")
    [model] = written["models"]
    assert model["name"] == "hawk+mesa" and results["config"]["backend"] == "eager"
    # checkpointing keeps only the blocks' inputs for the backward pass: far fewer saved activation bytes
    assert 0 < model["checkpointing"]["saved_activation_bytes"] < 0.5 * model["plain"]["saved_activation_bytes"]
    assert model["compiled"]["graph_breaks"] == 0 and model["compiled"]["compile_s"] > 0
