"""benchmarks/harness.py: report writing, timing records, the external-file loader and the peer skip."""

from __future__ import annotations

import json
import math

from benchmarks import bench_mesa_op
from benchmarks import harness as h


def test_write_results_json_and_markdown(tmp_path):
    results = dict(name="x", value=1.5, missing=float("nan"), nested=[dict(inf=float("inf"))])

    def render(r):
        return "\n".join(["# Title", "", *h.table(["a", "b"], [[1, "two"], [3, h.fmt(None)]])])

    json_path, md_path = h.write_results(results, tmp_path / "out", "demo", render)
    assert (json_path, md_path) == (tmp_path / "out" / "demo.json", tmp_path / "out" / "demo.md")
    written = json.loads(json_path.read_text())  # strict JSON: NaN and infinities become null
    assert written == dict(name="x", value=1.5, missing=None, nested=[dict(inf=None)])
    assert math.isnan(results["missing"])  # the caller's dict is left alone
    assert md_path.read_text() == "# Title\n\n| a | b |\n|---|---|\n| 1 | two |\n| 3 | - |\n"


def test_report_helpers():
    assert (h.flag(True), h.flag(False), h.flag(None)) == ("PASS", "FAIL", "n/a")
    assert (h.percent(0.123), h.percent(None)) == ("12%", "n/a")
    assert (h.fmt(0.0123, ".1f", 1e3), h.fmt(float("nan"))) == ("12.3", "-")
    quiet = dict(
        passed=False,
        worst_foreign_cpu_fraction=0.5,
        worst_foreign_cpu_measurement="m",
        matmul_drift=0.2,
        drift_limit=0.15,
        foreign_cpu_limit=0.1,
    )
    assert "noisy machine" in h.quiet_warning(quiet)[0] and h.quiet_warning(dict(quiet, passed=True)) == []


def test_time_call_and_least_contended():
    calls = []
    policy = h.RepeatPolicy(warmup=1, min_repeats=2, max_repeats=2, budget_s=0.0)
    record, result = h.time_call(lambda: calls.append(1) or len(calls), "cpu", policy, inner=3)
    assert len(calls) == 3 * (1 + 2) and result == 9
    assert record["repeats"] == 2 and len(record["times_s"]) == 2 and record["min_s"] <= record["median_s"]
    loads = iter([0.9, 0.5, 0.7])
    best = h.least_contended(lambda: dict(foreign_cpu_fraction=next(loads)), retries=2, wait=None)
    assert best == dict(foreign_cpu_fraction=0.5, attempts=3)


def test_quiet_machine_check():
    peak = h.matmul_peak_summary(
        dict(size=8, best_gflops=10.0, foreign_cpu_fraction=0.0), dict(size=8, best_gflops=10.5, foreign_cpu_fraction=None)
    )
    assert peak["peak_gflops"] == 10.5 and abs(peak["drift"] - 0.05) < 1e-12
    assert h.quiet_machine_check(peak, [("a", dict(foreign_cpu_fraction=0.05))])["passed"]
    noisy = h.quiet_machine_check(peak, [("a", dict(foreign_cpu_fraction=0.3))])
    assert not noisy["passed"] and noisy["worst_foreign_cpu_measurement"] == "a"


def test_external_module_loader(tmp_path):
    assert h.load_module_from_path(None, "x") == (None, "not given")
    module, note = h.load_module_from_path(tmp_path / "missing.py", "x")
    assert module is None and "not found" in note
    (tmp_path / "ok.py").write_text("def f():\n    return 3\n")
    module, note = h.load_module_from_path(tmp_path / "ok.py", "ok_module", ["f"])
    assert note == "" and module.f() == 3
    module, note = h.load_module_from_path(tmp_path / "ok.py", "ok_module", ["f", "g"])
    assert module is None and "lacks g" in note
    (tmp_path / "bad.py").write_text("raise ImportError('nope')\n")
    module, note = h.load_module_from_path(tmp_path / "bad.py", "bad_module")
    assert module is None and "nope" in note


def test_peer_loader_skips_a_missing_file(tmp_path):
    missing = tmp_path / "naive.py"
    peer, note = bench_mesa_op.load_peer(str(missing))
    assert peer is None and "not found" in note
    peer, note = bench_mesa_op.load_peer(None)
    assert peer is None and note == "not given"


def test_time_interleaved_takes_turns_and_rotates_the_order():
    """Every round times each call once, the first call of a round rotates, and each name gets its own record."""
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name) or name) for name in ("a", "b", "c")}
    policy = h.RepeatPolicy(warmup=1, min_repeats=3, max_repeats=3, budget_s=0.0)
    records, results = h.time_interleaved(calls, "cpu", policy, inner=2)
    assert results == {"a": "a", "b": "b", "c": "c"}
    timed_calls = order[3 * 2 :]  # after one warm-up round of blocks of 2
    rounds = [timed_calls[i : i + 6] for i in range(0, len(timed_calls), 6)]
    assert [r[::2] for r in rounds] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    for name, record in records.items():
        assert record["repeats"] == 3 and record["inner"] == 2 and len(record["times_s"]) == 3
        assert record["median_s"] >= record["min_s"] >= 0 and set(record["interleaved_with"]) == {"a", "b", "c"} - {name}
