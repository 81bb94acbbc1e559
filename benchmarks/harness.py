# Over 400 lines on purpose for now: the measuring machinery every benchmark shares (timing, memory,
# other-load detection, workers, matmul peak, reports) kept in one importable module so the scripts stay
# short; splitting it by job (timing / memory and load / reports) is the open part of the structure issue.
"""Shared machinery of the benchmarks: timing, peak memory, machine load, workers, matmul peak, reports.

* **Timing** (:func:`timed`, :func:`time_call`): ``time.perf_counter`` around the call, with
  ``torch.cuda.synchronize`` before and after on CUDA; warm-up calls, then the median and min over
  repeats (the count follows the warm-up time, see :class:`RepeatPolicy`).
* **Peak memory** (:class:`PeakMemory`, :func:`peak_memory`): on CUDA ``max_memory_allocated`` minus
  the bytes allocated at the baseline; on Linux the resident-set high-water mark ``VmHWM`` (reset
  through ``/proc/self/clear_refs``) minus ``VmRSS`` at the baseline; elsewhere the ``ru_maxrss`` delta.
  CPU memory is measured in a fresh worker with :data:`MEMORY_WORKER_ENV`.
* **Other load** (:class:`ForeignLoad`, :func:`wait_for_quiet`, :func:`least_contended`): the share of
  the machine's core time that other processes took during a timing; a timing above
  :data:`FOREIGN_LOAD_LIMIT` is taken again. On a shared machine the spin-waiting thread pool turns a
  little foreign load into many-fold slowdowns.
* **Workers** (:func:`call_in_worker`, :func:`worker_main`): a measurement ``"module:function"`` run in
  a fresh interpreter, its progress lines relayed, its JSON result returned.
* **Machine** (:func:`measure_matmul_peak`, :func:`matmul_peak_summary`, :func:`machine_info`,
  :func:`quiet_machine_check`): fp32 matmul throughput at the start and the end of a run; a drift
  above :data:`MATMUL_DRIFT_LIMIT` or a timing above the load limit marks the run as noisy.
* **Reports** (:func:`write_results`, :func:`table`, ...): ``<name>.json`` and ``<name>.md``.
* **External files** (:func:`load_module_from_path`): a Python file outside the project (the peer
  implementation) loaded by path at run time, or a note saying why not.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results"
RESULT_MARKER = "@@bench-result@@ "
MIB = 2.0**20

#: Largest share of the machine's core time other processes may take during a timing.
FOREIGN_LOAD_LIMIT = 0.10
#: How often a timing above :data:`FOREIGN_LOAD_LIMIT` is taken again.
CONTENDED_RETRIES = 2
#: Largest relative change of the matmul throughput between start and end of a trustworthy run.
MATMUL_DRIFT_LIMIT = 0.15

#: Environment of the CPU memory workers. A fixed glibc mmap threshold (which also switches off its
#: dynamic growth) gives every tensor above 128 KiB its own mapping, returned to the OS when freed,
#: so the resident-set peak follows the peak of live tensors rather than what the allocator happens
#: to cache (with glibc's defaults the figure depends on the process's history, by up to ~3x). It
#: slows the timed calls down (a page fault per fresh page), hence separate processes for time and
#: memory. Ignored by other allocators.
MEMORY_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}

Log = Callable[[str], None]


def print_log(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------
# Timing


@dataclass(frozen=True)
class RepeatPolicy:
    """``warmup`` untimed calls, then ``ceil(budget_s / warm-up time)`` timed calls, clamped."""

    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 10
    budget_s: float = 4.0

    def repeats(self, warmup_seconds: float) -> int:
        wanted = math.ceil(self.budget_s / max(warmup_seconds, 1e-9))
        return max(1, self.min_repeats, min(self.max_repeats, wanted))


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes (device work included) and its result."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def time_call(fn: Callable[[], Any], device: str, policy: RepeatPolicy, *, inner: int = 1,
              min_warmup_s: float = 0.0) -> tuple[dict[str, Any], Any]:
    """Warm-up (at least ``policy.warmup`` samples and ``min_warmup_s`` seconds), then repeats of ``fn``;
    every timed sample is a block of ``inner`` calls divided by ``inner`` (for calls of a few microseconds).
    Returns the record (seconds per call: ``times_s``, ``median_s``, ``min_s``, ``warmup_s``, ``repeats``,
    ``inner``, ``foreign_cpu_fraction``) and the last result."""

    def block() -> Any:
        result = None
        for _ in range(inner):
            result = fn()
        return result

    foreign = ForeignLoad()
    foreign.start()
    warmup: list[float] = []
    while len(warmup) < policy.warmup or inner * sum(warmup) < min_warmup_s:
        warmup.append(timed(block, device)[0] / inner)
    repeats = policy.repeats(inner * min(warmup) if warmup else 0.0)
    times, result = [], None
    for _ in range(repeats):
        seconds, result = timed(block, device)
        times.append(seconds / inner)
    record = dict(repeats=repeats, inner=inner, times_s=times, median_s=statistics.median(times), min_s=min(times),
                  warmup_s=warmup, foreign_cpu_fraction=foreign.fraction())
    return record, result


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# ---------------------------------------------------------------------------------------------
# Peak memory


def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _ru_maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakMemory:
    """Peak memory of the work between :meth:`start` and :meth:`peak_delta_bytes`."""

    def __init__(self, device: str):
        self.device = str(device)
        self.method = ""
        self.baseline = 0

    def start(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.method = "torch.cuda.max_memory_allocated - memory_allocated at baseline"
            self.baseline = torch.cuda.memory_allocated()
        elif self._reset_high_water_mark():
            self.method = "Linux VmHWM (reset via /proc/self/clear_refs) - VmRSS at baseline"
            self.baseline = (_proc_status_kib("VmRSS") or 0) * 1024
        else:
            self.method = "ru_maxrss delta (process high-water mark)"
            self.baseline = _ru_maxrss_bytes()

    def peak_delta_bytes(self) -> int:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self.method.startswith("Linux"):
            peak = (_proc_status_kib("VmHWM") or 0) * 1024
        else:
            peak = _ru_maxrss_bytes()
        return max(0, peak - self.baseline)

    @staticmethod
    def _reset_high_water_mark() -> bool:
        if _proc_status_kib("VmHWM") is None:
            return False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False


def peak_memory(fn: Callable[[], Any], device: str, *, warmup_calls: int = 1, before: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Peak memory of one call of ``fn`` after ``warmup_calls`` calls (``before`` runs ahead of each call,
    outside the measurement: clear gradients there)."""
    for _ in range(warmup_calls):
        before()
        fn()
    before()
    memory = PeakMemory(device)
    memory.start()
    fn()
    peak = memory.peak_delta_bytes()
    method = memory.method
    if not str(device).startswith("cuda") and os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        method += f"; glibc MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']}"
    return dict(peak_memory_bytes=peak, peak_memory_mib=peak / MIB, memory_method=method)


# ---------------------------------------------------------------------------------------------
# Other load on the machine


def _machine_busy_seconds() -> Optional[float]:
    """Core-seconds the whole machine spent busy since boot (``/proc/stat``: user, nice, system,
    irq, softirq and steal, i.e. time the hypervisor gave to someone else); None without it."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class ForeignLoad:
    """Share of the machine's core time used by *other* processes (and steal) during a measurement:
    ``(busy core-seconds of the machine - CPU seconds of this process) / (wall seconds * cores)``;
    None where ``/proc/stat`` is missing."""

    def start(self) -> None:
        self.wall, self.busy, self.own = time.perf_counter(), _machine_busy_seconds(), self._own()

    def fraction(self) -> Optional[float]:
        busy = _machine_busy_seconds()
        if busy is None or self.busy is None:
            return None
        wall = max(time.perf_counter() - self.wall, 1e-9)
        foreign = (busy - self.busy) - (self._own() - self.own)
        return min(1.0, max(0.0, foreign / (wall * (os.cpu_count() or 1))))

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system


def is_contended(record: dict[str, Any]) -> bool:
    return (record.get("foreign_cpu_fraction") or 0.0) > FOREIGN_LOAD_LIMIT


def wait_for_quiet(max_wait_s: float = 30.0, window_s: float = 1.0) -> None:
    """Sleep until other processes take at most :data:`FOREIGN_LOAD_LIMIT` of the cores over a window."""
    deadline = time.perf_counter() + max_wait_s
    while time.perf_counter() < deadline:
        probe = ForeignLoad()
        probe.start()
        time.sleep(window_s)
        share = probe.fraction()
        if share is None or share <= FOREIGN_LOAD_LIMIT:
            return


def least_contended(measure: Callable[[], dict[str, Any]], retries: int = CONTENDED_RETRIES, *,
                    wait: Optional[Callable[[], None]] = wait_for_quiet) -> dict[str, Any]:
    """``measure()``, taken again (at most ``retries`` times, each after ``wait``) while other processes
    used more than :data:`FOREIGN_LOAD_LIMIT` of the machine; the least disturbed record, with ``attempts``."""
    best, attempts = measure(), 1
    while is_contended(best) and attempts <= retries:
        if wait is not None:
            wait()
        again, attempts = measure(), attempts + 1
        if (again.get("foreign_cpu_fraction") or 0.0) < (best.get("foreign_cpu_fraction") or 0.0):
            best = again
    return dict(best, attempts=attempts)


# ---------------------------------------------------------------------------------------------
# Workers


def _resolve(target: str) -> Callable[..., dict[str, Any]]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def call_in_worker(target: str, spec: dict[str, Any], *, isolate: bool = True, memory_env: bool = False,
                   log: Log = print_log) -> dict[str, Any]:
    """``target(spec, log)`` (``target`` = ``"package.module:function"``, returning a JSON-able dict).

    With ``isolate`` it runs in a fresh interpreter (:func:`worker_main`), so memory and caches of
    one measurement cannot affect the next; its other stdout lines are relayed to ``log`` as they
    come. ``memory_env`` adds :data:`MEMORY_WORKER_ENV` to the worker's environment.
    """
    if not isolate:
        return _resolve(target)(spec, log)
    env = dict(os.environ)
    if memory_env:
        env.update(MEMORY_WORKER_ENV)
    paths = [str(REPO), str(REPO / "src")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    code = "from benchmarks.harness import worker_main; worker_main()"
    command = [sys.executable, "-c", code, target, json.dumps(spec)]
    result = None
    with tempfile.TemporaryFile("w+") as stderr:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=str(REPO)) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(RESULT_MARKER):
                    result = json.loads(line[len(RESULT_MARKER):])
                else:
                    log(line.rstrip("\n"))
        stderr.seek(0)
        errors = stderr.read()
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"benchmark worker {target} failed (exit {proc.returncode}) for {spec}:\n{errors[-4000:]}")
    return result


def worker_main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry of a worker: ``argv = [target, spec JSON]``; prints the result behind :data:`RESULT_MARKER`."""
    target, spec = (sys.argv[1:] if argv is None else list(argv))[:2]
    result = _resolve(target)(json.loads(spec), print_log)
    print(RESULT_MARKER + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Machine


def measure_matmul_peak(size: int, device: str, warmup: int = 2, repeats: int = 5) -> dict[str, Any]:
    """fp32 GFLOP/s of a square ``size x size`` matmul (``2 size^3`` FLOPs), best and median."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device)
    b = torch.randn(size, size, generator=gen).to(device)
    for _ in range(warmup):
        timed(lambda: a @ b, device)
    foreign = ForeignLoad()
    foreign.start()
    times = [timed(lambda: a @ b, device)[0] for _ in range(repeats)]
    flops = 2.0 * size**3
    return dict(
        size=size, dtype="float32", repeats=repeats, times_s=times, threads=torch.get_num_threads(),
        best_gflops=flops / min(times) / 1e9, median_gflops=flops / statistics.median(times) / 1e9,
        foreign_cpu_fraction=foreign.fraction(),
    )


def measure_matmul_peak_quietly(size: int, device: str, retries: int = CONTENDED_RETRIES) -> dict[str, Any]:
    """:func:`measure_matmul_peak`, measured again (after :func:`wait_for_quiet`) while other processes
    took more than :data:`FOREIGN_LOAD_LIMIT` of the cores; the fastest measurement is kept."""
    best = measure_matmul_peak(size, device)
    for _ in range(retries):
        if not is_contended(best):
            break
        wait_for_quiet()
        again = measure_matmul_peak(size, device)
        best = again if again["best_gflops"] > best["best_gflops"] else best
    return best


def matmul_peak_summary(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """The run's matmul peak: the higher best of start and end, and their drift."""
    return dict(start=start, end=end, size=start["size"], peak_gflops=max(start["best_gflops"], end["best_gflops"]),
                drift=end["best_gflops"] / start["best_gflops"] - 1.0)


def load_average() -> Optional[float]:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_info(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = dict(
        device=device, torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(), cpu_model=cpu, python=platform.python_version(), platform=platform.platform(),
        load_average_1m_at_end=load_average(),
    )
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def quiet_machine_check(peak: dict[str, Any], measured: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Whether the timings can be trusted: the matmul throughput at the start and the end agrees within
    :data:`MATMUL_DRIFT_LIMIT`, and no timing (``measured``: (name, record with ``foreign_cpu_fraction``))
    ran while other processes used more than :data:`FOREIGN_LOAD_LIMIT` of the machine's core time."""
    measured = [("matmul (start)", peak["start"]), ("matmul (end)", peak["end"]), *measured]
    loads = [(name, r["foreign_cpu_fraction"]) for name, r in measured if r.get("foreign_cpu_fraction") is not None]
    worst = max(loads, key=lambda item: item[1], default=(None, None))
    drift_ok = abs(peak["drift"]) <= MATMUL_DRIFT_LIMIT
    load_ok = worst[1] is None or worst[1] <= FOREIGN_LOAD_LIMIT
    return dict(matmul_drift=peak["drift"], drift_limit=MATMUL_DRIFT_LIMIT, worst_foreign_cpu_fraction=worst[1],
                worst_foreign_cpu_measurement=worst[0], foreign_cpu_limit=FOREIGN_LOAD_LIMIT,
                passed=bool(drift_ok and load_ok))


def relative_errors(actual: Tensor, expected: Tensor) -> tuple[float, float]:
    """Norm-wise ``||a - e|| / ||e||`` over the whole tensor, and the worst row (last dim) of it."""
    diff = actual.detach().double().cpu() - expected.double().cpu()
    expected = expected.double().cpu()
    total = float(diff.norm() / expected.norm())
    rows = diff.norm(dim=-1) / expected.norm(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
    return total, float(rows.max())


# ---------------------------------------------------------------------------------------------
# External files


def load_module_from_path(path: Optional[str | Path], name: str, required: Sequence[str] = ()) -> tuple[Optional[ModuleType], str]:
    """A Python file outside the project, loaded by path at run time: ``(module, "")``, or ``(None, note)``
    saying why not (no path given, file missing, import error, missing attributes)."""
    if not path:
        return None, "not given"
    file = Path(path).expanduser()
    if not file.is_file():
        return None, f"file {file} not found"
    try:
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of a foreign file is a skip, with its reason
        return None, f"could not import {file}: {type(e).__name__}: {e}"
    missing = [attr for attr in required if not hasattr(module, attr)]
    if missing:
        return None, f"{file} lacks {', '.join(missing)}"
    return module, ""


# ---------------------------------------------------------------------------------------------
# Reports


def flag(passed: Optional[bool]) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


def percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def fmt(value: Optional[float], spec: str = ".2f", scale: float = 1.0) -> str:
    """``value * scale`` formatted, or ``-`` for None / NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(scale * value, spec)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table as lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def quiet_warning(quiet: dict[str, Any]) -> list[str]:
    """The noisy-machine warning (no lines on a quiet machine)."""
    if quiet["passed"]:
        return []
    worst = quiet["worst_foreign_cpu_fraction"]
    where = "n/a" if worst is None else f"{100 * worst:.0f}% ({quiet['worst_foreign_cpu_measurement']})"
    return [f"**Warning: noisy machine** (matmul throughput drift {100 * quiet['matmul_drift']:+.0f}%, limit "
            f"{100 * quiet['drift_limit']:.0f}%; most core time taken by other processes during a timing: {where}, "
            f"limit {100 * quiet['foreign_cpu_limit']:.0f}%): the timings are not trustworthy; rerun on an idle machine.", ""]


def machine_lines(machine: dict[str, Any], peak: dict[str, Any]) -> list[str]:
    """Report lines on the machine, its load and its matmul peak."""
    load = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    gpu = f" ({machine['gpu']})" if "gpu" in machine else ""
    return [
        f"Device `{machine['device']}`{gpu}, CPU `{machine['cpu_model']}`, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch_version']}. 1-minute load average at start / end: "
        f"{load(machine.get('load_average_1m_at_start'))} / {load(machine.get('load_average_1m_at_end'))}.",
        "",
        f"fp32 matmul {peak['size']}x{peak['size']}: best {peak['start']['best_gflops']:.1f} GFLOP/s at the start, "
        f"{peak['end']['best_gflops']:.1f} GFLOP/s at the end (medians {peak['start']['median_gflops']:.1f} / "
        f"{peak['end']['median_gflops']:.1f}); peak = {peak['peak_gflops']:.1f} GFLOP/s, the higher best.",
        "",
    ]


def _json_safe(value: Any) -> Any:
    """NaN and infinities as None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_results(results: dict[str, Any], out_dir: Path, name: str, render: Callable[[dict[str, Any]], str]) -> tuple[Path, Path]:
    """``<name>.json`` (strict JSON: NaN as null) and ``<name>.md`` (``render(results)``) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n")
    text = render(results)
    md_path.write_text(text if text.endswith("\n") else text + "\n")
    return json_path, md_path
