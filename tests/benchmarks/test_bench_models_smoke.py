"""Smoke test of benchmarks/bench_models.py: a tiny run through its function API into tmp_path."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_models as bench
from benchmarks import harness as h

ONE_CALL = h.RepeatPolicy(warmup=1, min_repeats=1, max_repeats=1, budget_s=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.slow
def test_tiny_benchmark_writes_json_and_markdown(tmp_path):
    mixers = ["mesa", "gated_deltanet", "attention", "hawk+mesa", "sherman_morrison"]
    results = bench.run_benchmark(  # the Mesa solver stays at the config's defaults
        mixers,
        preset="tiny",
        config_overrides=dict(attention_window=16),
        train_lengths=[32, 64],
        contexts=[32, 64],
        policy=ONE_CALL,
        train_warmup_s=0.0,
        decode_steps=2,
        decode_warmup=1,
        prefill_chunk=48,
        matmul_size=64,
        isolate=False,
        retries=0,
        reruns=0,
        out_dir=tmp_path,
        log=lambda _: None,
    )

    written = json.loads((tmp_path / "models.json").read_text())
    markdown = (tmp_path / "models.md").read_text()
    assert markdown.startswith("# Model benchmark")
    expected = {"machine", "config", "matmul_peak", "models", "targets", "quiet_machine", "total_runtime_s"}
    assert expected <= set(written) and expected <= set(results)
    assert {"torch_version", "torch_threads", "cpu_model", "device"} <= set(written["machine"])
    assert written["matmul_peak"]["peak_gflops"] > 0 and isinstance(written["quiet_machine"]["passed"], bool)
    assert written["config"]["model"]["hidden_size"] == 64 and written["config"]["train_lengths"] == [32, 64]
    assert written["config"]["mesa_solver"]  # read from the config, whatever the field names

    assert [m["name"] for m in written["models"]] == mixers
    by_name = {m["name"]: m for m in written["models"]}
    assert by_name["hawk+mesa"]["layer_types"] == ["hawk", "mesa"]
    for model in written["models"]:
        assert model["params"] > model["params_non_embedding"] > 0
        assert [r["length"] for r in model["train"]] == [32, 64]
        assert [r["context"] for r in model["decode"]] == [32, 64]
        assert f"| {model['name']} |" in markdown
    for name in ("mesa", "gated_deltanet", "attention", "hawk+mesa"):
        for run in by_name[name]["train"]:
            assert run["median_s"] > 0 and run["repeats"] == 1 and run["loss"] > 0
        for run in by_name[name]["decode"]:
            assert run["median_s"] > 0 and len(run["times_s"]) == 2 and run["cache_bytes"] > 0
    # recurrent state: constant size; attention's KV cache grows with the context
    mesa_cache = [r["cache_bytes"] for r in by_name["mesa"]["decode"]]
    attention_cache = [r["cache_bytes"] for r in by_name["attention"]["decode"]]
    assert mesa_cache[0] == mesa_cache[1] and attention_cache[1] == 2 * attention_cache[0]
    # the sequential mixer: trained at these short lengths, its decode skipped with a reason
    sm = by_name["sherman_morrison"]
    assert all(not r.get("skipped") for r in sm["train"]) and all(r["skipped"] and r["reason"] for r in sm["decode"])

    targets = written["targets"]
    assert set(targets) == {
        "mesa_decode_flat",
        "attention_decode_grows",
        "mesa_train_vs_gated_deltanet",
        "mesa_decode_vs_gated_deltanet",
    }
    for check in targets.values():
        assert isinstance(check["passed"], bool) and check["ratio"] > 0
    assert targets["mesa_train_vs_gated_deltanet"]["length"] == 64 and targets["mesa_train_vs_gated_deltanet"]["target"] == 1.3
    # the training-step ratio comes from the two models timed in turns in one process
    paired = written["paired_train"]
    assert paired["length"] == 64 and paired["names"] == ["mesa", "gated_deltanet"]
    mesa_s, gdn_s = (paired["records"][n]["median_s"] for n in paired["names"])
    assert (
        targets["mesa_train_vs_gated_deltanet"]["paired"] and targets["mesa_train_vs_gated_deltanet"]["ratio"] == mesa_s / gdn_s
    )
    assert "(timed in turns in one process)" in markdown
    # so does the decode ratio, at the longest context
    decode = paired["decode"]
    assert decode["context"] == 64 and decode["steps"] == 2 and set(decode["median_s"]) == {"mesa", "gated_deltanet"}
    check = targets["mesa_decode_vs_gated_deltanet"]
    assert check["paired"] and check["ratio"] == decode["median_s"]["mesa"] / decode["median_s"]["gated_deltanet"]
    assert "Mesa / Gated DeltaNet decode per token at L=64 (timed in turns in one process)" in markdown
    assert check["context"] == 64 and check["target"] == 1.5


def test_hawk_expansion_matches_the_mesa_mixer():
    expansion = bench.matched_hawk_expansion("tiny")
    fields = bench.PRESETS["tiny"]
    hawk = bench._mixer_params("hawk", fields, expansion=expansion)
    mesa = bench._mixer_params("mesa", fields)
    assert abs(hawk - mesa) / mesa < 0.1
    assert bench.layer_types(("hawk", "mesa"), 4) == ["hawk", "mesa", "hawk", "mesa"]
