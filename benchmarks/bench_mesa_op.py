"""Benchmark of the chunkwise-parallel Mesa operator ``mesanet.ops.mesa``.

What is measured (defaults: B=1, H=4, Dk=Dv=64, chunk C=64, T in {512, 2048, 8192}):

* **Wall time** of the forward and of forward+backward, for two solver settings: a fixed 30 CG
  steps (``tol=0``) and a tolerance ``tol=1e-4`` (``max_iter=30``), with the CG steps actually used
  (mean and max over systems, from ``SolverStats``). One warm-up call, then the median (and min)
  over repeats timed with ``time.perf_counter``; the repeat count follows the warm-up time.
* **Peak memory** of one call (after a full-size warm-up call): the increase of the process's
  peak resident set size over a baseline taken after the imports, the inputs and the warm-up. Time
  and memory of every configuration are measured in two fresh subprocesses, so that memory cached
  by earlier runs cannot hide a peak; the memory process runs with a fixed glibc mmap threshold so
  that freed tensors go back to the OS and the peak follows the live tensors (see
  ``MEMORY_WORKER_ENV``). On Linux the kernel's high-water mark is reset first
  (``/proc/self/clear_refs``) and ``VmHWM - VmRSS`` is reported; elsewhere the ``ru_maxrss`` delta.
  With ``--device cuda``: ``torch.cuda.max_memory_allocated`` minus the allocated bytes at the baseline.
* **Accuracy** against the exact sequential float64 reference ``mesa_reference`` at a short T:
  norm-wise relative error ``||o - o_ref|| / ||o_ref||`` (and the worst per-token-and-head row) of
  both solver settings, with float32 and with float64 inputs.
* **Machine fp32 matmul throughput**: a square ``N x N`` matmul (default N=4096) with the default
  thread count; warm-up, then best and median over repeats, measured at the start and again at the
  end. The operator's forward GFLOP/s is reported as a fraction of the higher best.
* **Other load**: every timing records the share of the machine's core time that other processes
  took meanwhile (``/proc/stat`` minus this process); a timing above 10% is taken again (twice at
  most, after waiting up to 30 s for the other load to drop). A remaining one, or a matmul drift above 15% between start and end, marks the run as noisy,
  with a warning in the report: on a shared machine the spin-waiting thread pool turns a little
  foreign load into many-fold slowdowns.
* **Targets** (reported as flags, never as an exit status): time and peak-memory ratios
  T=8192 / T=2048 <= 4.5 (linear scaling), and forward at T=2048 with 30 steps >= 40% of the
  measured matmul peak.

FLOP count of the forward (per token per head; see :func:`forward_flops_per_token_head`)::

    states  = 2 d (d + dv)                   chunk state update K^T diag(w) [K | V]
    matvec  = 2 d^2 + 4 C d                  exp(b) (P H_c^T) + (M o (P K^T)) K, one CG step
    solve   = (steps + 1) matvec + 2 C d     +1: initial residual q - A x0; M (K o K): Jacobi diagonal
    output  = 2 d dv + 2 C d + 2 C dv        exp(b) (X S_c) + (M o (X K^T)) V
    total   = states + solve + output

A multiply-add counts as 2 FLOPs; only matrix products are counted (element-wise work, the
O(d (d + dv) / C) chunk-boundary recurrence and the gate exponentials are left out); the intra-chunk
C x C products are counted dense, as the implementation computes them (the causal mask halves the
*useful* work). ``steps`` is the number of batched CG iterations the loop ran: ``max_iter`` with
``tol = 0`` (every step is computed, even for systems already frozen) and
``stats.max_iterations`` with ``tol > 0`` (the loop stops once every system has converged).
Tokens are counted after padding T up to a multiple of C.

Usage::

    python benchmarks/bench_mesa_op.py [--quick] [--device cpu|cuda] [--out DIR]

Writes ``mesa_op.json`` and ``mesa_op.md`` to ``DIR`` (default ``benchmarks/results/``) and prints
the markdown. :func:`run_benchmark` is the same thing as a function (used by the smoke test).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from mesanet.ops import SolverStats, mesa, mesa_reference
except ImportError:  # a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from mesanet.ops import SolverStats, mesa, mesa_reference

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results"
RESULT_MARKER = "@@bench-result@@ "
MODES = ("fwd", "fwd+bwd")
MIB = 2.0**20

#: Linear scaling: time and memory may grow at most 4.5x when T grows 4x (12.5% slack).
SCALING_SLACK = 4.5 / 4.0
#: The issue's throughput target for the forward with a fixed number of CG steps.
PEAK_FRACTION_TARGET = 0.40
PEAK_FRACTION_LENGTH = 2048
#: Largest relative change of the matmul throughput between start and end of a trustworthy run.
MATMUL_DRIFT_LIMIT = 0.15
#: Largest share of the machine's core time that other processes may take during a measurement
#: (see :class:`ForeignLoad`); a timing above it is measured again, up to ``CONTENDED_RETRIES`` times.
FOREIGN_LOAD_LIMIT = 0.10
CONTENDED_RETRIES = 2

FLOP_FORMULA = (
    "forward FLOPs per token per head = 2d(d+dv) [states] + (steps+1)(2d^2 + 4Cd) + 2Cd [CG solve] "
    "+ 2d*dv + 2Cd + 2C*dv [output]; multiply-add = 2 FLOPs, matrix products only, intra-chunk CxC "
    "products counted dense, steps = max_iter (tol=0) or stats.max_iterations (tol>0), "
    "tokens padded to a multiple of C"
)


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Shape:
    """Problem size apart from the sequence length."""

    batch: int = 1
    heads: int = 4
    dk: int = 64
    dv: int = 64
    chunk: int = 64


@dataclass(frozen=True)
class SolverSetting:
    """One CG stopping rule of ``mesa``."""

    name: str
    max_iter: int
    tol: float


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


DEFAULT_LENGTHS = (512, 2048, 8192)
QUICK_LENGTHS = (512, 2048)
DEFAULT_SOLVERS = (SolverSetting("fixed-30", 30, 0.0), SolverSetting("tol-1e-4", 30, 1e-4))
DEFAULT_POLICY = RepeatPolicy()
QUICK_POLICY = RepeatPolicy(warmup=1, min_repeats=2, max_repeats=3, budget_s=1.0)


# ---------------------------------------------------------------------------------------------
# Inputs and the FLOP model


def make_inputs(
    shape: Shape, length: int, *, seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu",
    requires_grad: bool = False,
) -> dict[str, Tensor]:
    """Realistic seeded inputs: unit-norm q and k, v ~ N(0, 1), gamma ~ U[0.8, 0.99] per token and
    head (``g = log gamma``), beta ~ U[0, 1], ``lam = 1`` (the paper's initialisation).

    Drawn in float64 on the CPU, then cast and moved, so every dtype and device sees the same values.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = (shape.batch, length, shape.heads)
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)
    values = dict(
        q=F.normalize(randn(*rows, shape.dk), dim=-1),
        k=F.normalize(randn(*rows, shape.dk), dim=-1),
        v=randn(*rows, shape.dv),
        g=torch.log(0.8 + 0.19 * rand(*rows)),
        beta=rand(*rows),
        lam=torch.ones(shape.heads, shape.dk, dtype=torch.float64),
    )
    return {name: t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for name, t in values.items()}


def forward_flops_per_token_head(dk: int, dv: int, chunk: int, cg_steps: int) -> int:
    """Matrix-product FLOPs of the chunkwise forward per token and head (multiply-add = 2 FLOPs).

    * states ``2 dk (dk + dv)``: the chunk state update ``K^T diag(w) [K | V]`` amortised over C tokens.
    * CG solve ``(cg_steps + 1) (2 dk^2 + 4 C dk) + 2 C dk``: one operator application per step plus
      one for the initial residual ``q - A x0``; each is ``P H_c^T`` (``2 dk^2``) and
      ``(M o P K^T) K`` (``4 C dk``). ``M (K o K)`` for the Jacobi diagonal adds ``2 C dk``.
    * output ``2 dk dv + 2 C dk + 2 C dv``: ``X S_c`` and ``(M o X K^T) V``.

    Not counted: element-wise work (gating, masks, CG vector updates and dot products, O(dk) per
    step), the chunk-boundary state recurrence (O(dk (dk + dv) / C) per token), exponentials. The
    C x C intra-chunk products are counted dense, as computed.
    """
    states = 2 * dk * (dk + dv)
    matvec = 2 * dk * dk + 4 * chunk * dk
    solve = (cg_steps + 1) * matvec + 2 * chunk * dk
    output = 2 * dk * dv + 2 * chunk * dk + 2 * chunk * dv
    return states + solve + output


def batched_cg_steps(solver: SolverSetting, max_iterations: int) -> int:
    """CG iterations the batched loop ran: all ``max_iter`` with ``tol = 0`` (frozen systems still
    ride along), else until the slowest system stopped (``stats.max_iterations``)."""
    return solver.max_iter if solver.tol == 0 else max_iterations


def forward_flops(shape: Shape, length: int, cg_steps: int) -> int:
    """Forward FLOPs of one ``mesa`` call (tokens padded to a multiple of the chunk size)."""
    padded = math.ceil(length / shape.chunk) * shape.chunk
    per_token = forward_flops_per_token_head(shape.dk, shape.dv, shape.chunk, cg_steps)
    return per_token * padded * shape.batch * shape.heads


# ---------------------------------------------------------------------------------------------
# Timing and memory probes


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes (device work included) and its result."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


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
        self.device = device
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
    ``(busy core-seconds of the machine - CPU seconds of this process) / (wall seconds * cores)``.

    Other processes on the cores distort timings far beyond their share (the thread pool spin-waits
    for a descheduled thread), so every timing records this; None where ``/proc/stat`` is missing.
    """

    def start(self) -> None:
        self.wall, self.busy, self.own = time.perf_counter(), _machine_busy_seconds(), self._own()

    def fraction(self) -> Optional[float]:
        busy = _machine_busy_seconds()
        if busy is None or self.busy is None:
            return None
        wall = time.perf_counter() - self.wall
        foreign = (busy - self.busy) - (self._own() - self.own)
        return min(1.0, max(0.0, foreign / (wall * (os.cpu_count() or 1))))

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system


# ---------------------------------------------------------------------------------------------
# One configuration (runs inside a worker subprocess)


class OperatorCall:
    """The measured work: one ``mesa`` forward, plus the backward in ``fwd+bwd`` mode."""

    def __init__(self, spec: dict[str, Any], length: int):
        self.shape, self.solver = Shape(**spec["shape"]), SolverSetting(**spec["solver"])
        self.backward = spec["mode"] == "fwd+bwd"
        self.inputs = make_inputs(self.shape, length, seed=spec["seed"], device=spec["device"], requires_grad=self.backward)
        gen = torch.Generator().manual_seed(spec["seed"] + 1)
        self.cotangent = torch.randn(self.inputs["v"].shape, generator=gen).to(spec["device"])

    def clear_grads(self) -> None:
        for t in self.inputs.values():
            t.grad = None

    def __call__(self) -> SolverStats:
        self.clear_grads()
        out = mesa(**self.inputs, max_iter=self.solver.max_iter, tol=self.solver.tol, chunk_size=self.shape.chunk,
                   return_stats=True)
        if self.backward:
            out.output.backward(self.cotangent)
        assert out.stats is not None
        return out.stats


def _warmed_up_call(spec: dict[str, Any]) -> OperatorCall:
    """The call at full size, after a tiny call that initialises thread pools and the autograd engine."""
    OperatorCall(spec, Shape(**spec["shape"]).chunk)()
    return OperatorCall(spec, spec["length"])


def measure_time(spec: dict[str, Any]) -> dict[str, Any]:
    """Wall time and CG steps of one configuration (``spec``: length, solver, mode, shape, policy, device, seed)."""
    solver, policy, device = SolverSetting(**spec["solver"]), RepeatPolicy(**spec["policy"]), spec["device"]
    call = _warmed_up_call(spec)
    rss = PeakMemory(device)  # informational: what the default allocator keeps resident over all calls
    rss.start()
    foreign = ForeignLoad()
    foreign.start()
    warmup_times = [timed(call, device)[0] for _ in range(policy.warmup)]
    repeats = policy.repeats(min(warmup_times) if warmup_times else 0.0)
    times, stats = [], None
    for _ in range(repeats):
        seconds, stats = timed(call, device)
        times.append(seconds)
    assert stats is not None  # at least one timed call
    steps = batched_cg_steps(solver, stats.max_iterations)
    result = dict(
        length=spec["length"], solver=solver.name, max_iter=solver.max_iter, tol=solver.tol, mode=spec["mode"],
        device=device, threads=torch.get_num_threads(), repeats=repeats, times_s=times,
        median_s=statistics.median(times), min_s=min(times), warmup_s=warmup_times,
        cg_mean_iterations=stats.mean_iterations, cg_max_iterations=stats.max_iterations, cg_steps_run=steps,
        cg_max_relative_residual=stats.max_relative_residual,
        foreign_cpu_fraction=foreign.fraction(),
        timing_process_peak_bytes=rss.peak_delta_bytes(), timing_process_peak_method=rss.method,
    )
    if spec["mode"] == "fwd":
        flops = forward_flops(Shape(**spec["shape"]), spec["length"], steps)
        result.update(forward_gflop=flops / 1e9, gflops=flops / result["median_s"] / 1e9)
    return result


def measure_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one call of a configuration, after one full-size warm-up call."""
    call = _warmed_up_call(spec)
    call()
    call.clear_grads()
    memory = PeakMemory(spec["device"])
    memory.start()
    call()
    peak = memory.peak_delta_bytes()
    method = memory.method
    if spec["device"] == "cpu" and os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        method += f"; glibc MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']}"
    return dict(peak_memory_bytes=peak, peak_memory_mib=peak / MIB, memory_method=method)


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"time": measure_time, "memory": measure_memory}

#: Environment of the memory workers. A fixed glibc mmap threshold (which also switches off its
#: dynamic growth) gives every tensor above 128 KiB its own mapping, returned to the OS when freed,
#: so the resident-set peak follows the peak of live tensors rather than what the allocator happens
#: to cache. With glibc's defaults the figure depends on the history: measured over the first calls
#: of a fresh process the fwd+bwd peak at T=8192 read ~1.9x higher (and varied by ~20% between
#: configurations with the same tensors); measured on a call after a warm-up call it read ~3x lower
#: (the call reused cached heap). The fixed threshold would slow the timed calls down (a page fault
#: per fresh page), hence separate processes for time and memory. Ignored by other allocators.
MEMORY_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def run_worker(spec: dict[str, Any], measure: str, isolate: bool = True) -> dict[str, Any]:
    """``WORKERS[measure](spec)``, by default in a fresh interpreter running this file with ``--worker``."""
    spec = dict(spec, measure=measure)
    if not isolate:
        return WORKERS[measure](spec)
    env = dict(os.environ, **MEMORY_WORKER_ENV) if measure == "memory" else None
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker failed (exit {done.returncode}) for {spec}:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_MARKER):])


def _contended(run: dict[str, Any]) -> bool:
    return (run.get("foreign_cpu_fraction") or 0.0) > FOREIGN_LOAD_LIMIT


def wait_for_quiet(max_wait_s: float = 30.0, window_s: float = 1.0) -> None:
    """Sleep until other processes take at most ``FOREIGN_LOAD_LIMIT`` of the cores over a window."""
    deadline = time.perf_counter() + max_wait_s
    while time.perf_counter() < deadline:
        probe = ForeignLoad()
        probe.start()
        time.sleep(window_s)
        share = probe.fraction()
        if share is None or share <= FOREIGN_LOAD_LIMIT:
            return


def measure_config(spec: dict[str, Any], isolate: bool = True, retries: int = CONTENDED_RETRIES) -> dict[str, Any]:
    """Time and peak memory of one (length, solver, mode), each measured in its own fresh process.

    A timing taken while other processes used more than ``FOREIGN_LOAD_LIMIT`` of the machine is
    taken again (at most ``retries`` times, each after :func:`wait_for_quiet`); the least contended
    one is kept.
    """
    timing, attempts = run_worker(spec, "time", isolate), 1
    while _contended(timing) and attempts <= retries:
        wait_for_quiet()
        again, attempts = run_worker(spec, "time", isolate), attempts + 1
        if (again["foreign_cpu_fraction"] or 0.0) < (timing["foreign_cpu_fraction"] or 0.0):
            timing = again
    return dict(timing, timing_attempts=attempts, **run_worker(spec, "memory", isolate))


# ---------------------------------------------------------------------------------------------
# Machine peak, accuracy, derived checks


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
    """:func:`measure_matmul_peak`, measured again (after :func:`wait_for_quiet`) while other
    processes took more than ``FOREIGN_LOAD_LIMIT`` of the cores; the fastest measurement is kept."""
    best = measure_matmul_peak(size, device)
    for _ in range(retries):
        if not _contended(best):
            break
        wait_for_quiet()
        again = measure_matmul_peak(size, device)
        best = again if again["best_gflops"] > best["best_gflops"] else best
    return best


def _relative_errors(actual: Tensor, expected: Tensor) -> tuple[float, float]:
    """Norm-wise ``||a - e|| / ||e||`` over the whole output, and the worst (token, head) row."""
    diff = actual.double() - expected
    total = float(diff.norm() / expected.norm())
    rows = diff.norm(dim=-1) / expected.norm(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
    return total, float(rows.max())


def check_accuracy(
    shape: Shape, length: int, solvers: Sequence[SolverSetting], *, seed: int, device: str
) -> list[dict[str, Any]]:
    """Every solver setting, with float32 and float64 inputs, against the float64 sequential reference."""
    reference, _ = mesa_reference(**make_inputs(shape, length, seed=seed, dtype=torch.float64))
    results = []
    for solver in solvers:
        for dtype in (torch.float32, torch.float64):
            inputs = make_inputs(shape, length, seed=seed, dtype=dtype, device=device)
            with torch.no_grad():
                out = mesa(**inputs, max_iter=solver.max_iter, tol=solver.tol, chunk_size=shape.chunk, return_stats=True)
            total, worst_row = _relative_errors(out.output.cpu(), reference)
            results.append(dict(
                length=length, solver=solver.name, max_iter=solver.max_iter, tol=solver.tol,
                input_dtype=str(dtype).removeprefix("torch."), relative_error=total, max_row_relative_error=worst_row,
                cg_mean_iterations=out.stats.mean_iterations, cg_max_iterations=out.stats.max_iterations,
                cg_max_relative_residual=out.stats.max_relative_residual,
            ))
    return results


def scaling_pair(lengths: Sequence[int]) -> Optional[tuple[int, int]]:
    """(short, long) lengths for the scaling check: the longest and the longest <= a quarter of it
    (8192 and 2048 by default), else the shortest; None with a single length."""
    ordered = sorted(set(lengths))
    if len(ordered) < 2:
        return None
    longest = ordered[-1]
    quarter = [n for n in ordered if 4 * n <= longest]
    return (quarter[-1] if quarter else ordered[0]), longest


def _find(runs: Sequence[dict[str, Any]], length: int, solver: str, mode: str) -> dict[str, Any]:
    return next(r for r in runs if r["length"] == length and r["solver"] == solver and r["mode"] == mode)


def scaling_checks(runs: Sequence[dict[str, Any]], lengths: Sequence[int], solvers: Sequence[SolverSetting]) -> list[dict[str, Any]]:
    """Time and peak-memory ratio long/short for every (solver, mode); target ``1.125 x`` the length ratio."""
    pair = scaling_pair(lengths)
    if pair is None:
        return []
    short, long = pair
    target = SCALING_SLACK * long / short
    checks = []
    for solver in solvers:
        for mode in MODES:
            a, b = _find(runs, short, solver.name, mode), _find(runs, long, solver.name, mode)
            time_ratio = b["median_s"] / a["median_s"]
            memory_ratio = b["peak_memory_bytes"] / a["peak_memory_bytes"] if a["peak_memory_bytes"] > 0 else float("nan")
            checks.append(dict(
                solver=solver.name, mode=mode, short_length=short, long_length=long, target=target,
                time_ratio=time_ratio, memory_ratio=memory_ratio,
                time_pass=bool(time_ratio <= target), memory_pass=bool(memory_ratio <= target),
            ))
    return checks


def peak_fraction_check(runs: Sequence[dict[str, Any]], lengths: Sequence[int], solvers: Sequence[SolverSetting], peak_gflops: float) -> dict[str, Any]:
    """Forward GFLOP/s of the fixed-steps setting at T=2048 (else the longest T) over the matmul peak."""
    length = PEAK_FRACTION_LENGTH if PEAK_FRACTION_LENGTH in lengths else max(lengths)
    solver = next((s for s in solvers if s.tol == 0), solvers[0])
    run = _find(runs, length, solver.name, "fwd")
    fraction = run["gflops"] / peak_gflops
    return dict(length=length, solver=solver.name, gflops=run["gflops"], peak_gflops=peak_gflops,
                fraction=fraction, target=PEAK_FRACTION_TARGET, passed=bool(fraction >= PEAK_FRACTION_TARGET))


def quiet_machine_check(peak: dict[str, Any], runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Whether the timings can be trusted: the matmul throughput measured before and after the
    benchmark agrees within ``MATMUL_DRIFT_LIMIT``, and no timing (matmul or operator) ran while
    other processes used more than ``FOREIGN_LOAD_LIMIT`` of the machine's core time."""
    measured = [("matmul (start)", peak["start"]), ("matmul (end)", peak["end"])]
    measured += [(f"T={r['length']} {r['solver']} {r['mode']}", r) for r in runs]
    loads = [(name, r["foreign_cpu_fraction"]) for name, r in measured if r.get("foreign_cpu_fraction") is not None]
    worst = max(loads, key=lambda item: item[1], default=(None, None))
    drift_ok = abs(peak["drift"]) <= MATMUL_DRIFT_LIMIT
    load_ok = worst[1] is None or worst[1] <= FOREIGN_LOAD_LIMIT
    return dict(matmul_drift=peak["drift"], drift_limit=MATMUL_DRIFT_LIMIT, worst_foreign_cpu_fraction=worst[1],
                worst_foreign_cpu_measurement=worst[0], foreign_cpu_limit=FOREIGN_LOAD_LIMIT,
                passed=bool(drift_ok and load_ok))


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
    )
    if hasattr(os, "getloadavg"):  # other processes on the machine distort every timing
        info["load_average_1m_at_end"] = os.getloadavg()[0]
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ---------------------------------------------------------------------------------------------
# Report


def _flag(passed: Optional[bool]) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


def _quiet_warning(quiet: dict[str, Any]) -> list[str]:
    if quiet["passed"]:
        return []
    worst = quiet["worst_foreign_cpu_fraction"]
    where = "n/a" if worst is None else f"{100 * worst:.0f}% ({quiet['worst_foreign_cpu_measurement']})"
    return [f"**Warning: noisy machine** (matmul throughput drift {100 * quiet['matmul_drift']:+.0f}%, limit "
            f"{100 * quiet['drift_limit']:.0f}%; most core time taken by other processes during a timing: {where}, "
            f"limit {100 * quiet['foreign_cpu_limit']:.0f}%): the timings are not trustworthy; rerun on an idle machine."]


def _load(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The report: machine, per-configuration table, scaling, targets, accuracy."""
    m, peak, cfg = results["machine"], results["matmul_peak"], results["config"]
    shape = cfg["shape"]
    out = [
        "# Mesa operator benchmark",
        "",
        f"Device `{m['device']}`{' (' + m['gpu'] + ')' if 'gpu' in m else ''}, CPU `{m['cpu_model']}`, "
        f"{m['torch_threads']} torch threads, torch {m['torch_version']}. "
        f"B={shape['batch']}, H={shape['heads']}, Dk={shape['dk']}, Dv={shape['dv']}, C={shape['chunk']}.",
        f"1-minute load average at start / end: {_load(m.get('load_average_1m_at_start'))} / "
        f"{_load(m.get('load_average_1m_at_end'))}.",
        "",
        f"fp32 matmul {peak['size']}x{peak['size']}: best {peak['start']['best_gflops']:.1f} GFLOP/s at the start, "
        f"{peak['end']['best_gflops']:.1f} GFLOP/s at the end (medians {peak['start']['median_gflops']:.1f} / "
        f"{peak['end']['median_gflops']:.1f}); peak = {peak['peak_gflops']:.1f} GFLOP/s, the higher best.",
        "",
        *_quiet_warning(results["quiet_machine"]),
        *([""] if not results["quiet_machine"]["passed"] else []),
        f"FLOP model: {results['flop_formula']}.",
        "",
        "## Time, memory, throughput",
        "",
        "Times are medians (ms); memory is the peak increase over the baseline (MiB); CG steps are "
        "mean / max over systems / batched steps run (forward); other load is the share of core time "
        "other processes took during the fwd / fwd+bwd timings.",
        "",
    ]
    rows = []
    for length in cfg["lengths"]:
        for solver in cfg["solvers"]:
            f = _find(results["runs"], length, solver["name"], "fwd")
            fb = _find(results["runs"], length, solver["name"], "fwd+bwd")
            rows.append([
                length, solver["name"],
                f"{f['cg_mean_iterations']:.1f} / {f['cg_max_iterations']} / {f['cg_steps_run']}",
                f"{1e3 * f['median_s']:.1f}", f"{1e3 * fb['median_s']:.1f}",
                f"{f['peak_memory_mib']:.1f}", f"{fb['peak_memory_mib']:.1f}",
                f"{f['forward_gflop']:.2f}", f"{f['gflops']:.1f}", f"{100 * f['gflops'] / peak['peak_gflops']:.1f}%",
                f"{_percent(f['foreign_cpu_fraction'])} / {_percent(fb['foreign_cpu_fraction'])}",
            ])
    out += _table(
        ["T", "solver", "CG steps", "fwd ms", "fwd+bwd ms", "fwd MiB", "fwd+bwd MiB", "fwd GFLOP", "fwd GFLOP/s", "of peak",
         "other load"],
        rows,
    )
    out += ["", "## Targets", ""]
    target_rows = [
        [f"{s['solver']} {s['mode']}: time T={s['long_length']}/T={s['short_length']}", f"{s['time_ratio']:.2f}x",
         f"<= {s['target']:.2f}x", _flag(s["time_pass"])]
        for s in results["scaling"]
    ] + [
        [f"{s['solver']} {s['mode']}: memory T={s['long_length']}/T={s['short_length']}", f"{s['memory_ratio']:.2f}x",
         f"<= {s['target']:.2f}x", _flag(s["memory_pass"])]
        for s in results["scaling"]
    ]
    pf = results["targets"]["forward_peak_fraction"]
    target_rows.append([f"{pf['solver']} fwd at T={pf['length']}: fraction of matmul peak", f"{100 * pf['fraction']:.1f}%",
                        f">= {100 * pf['target']:.0f}%", _flag(pf["passed"])])
    if not results["quiet_machine"]["passed"]:
        out += ["Noisy machine (see the warning above): these flags say little about the operator.", ""]
    out += _table(["check", "measured", "target", "flag"], target_rows)
    out += ["", f"## Accuracy against the float64 sequential reference (T={cfg['accuracy_length']})", ""]
    out += _table(
        ["solver", "inputs", "rel. error", "worst row rel. error", "CG steps mean / max", "max rel. residual"],
        [[a["solver"], a["input_dtype"], f"{a['relative_error']:.2e}", f"{a['max_row_relative_error']:.2e}",
          f"{a['cg_mean_iterations']:.1f} / {a['cg_max_iterations']}", f"{a['cg_max_relative_residual']:.1e}"]
         for a in results["accuracy"]],
    )
    out += ["", f"Total runtime {results['total_runtime_s']:.1f} s.", ""]
    return "\n".join(out)


def write_results(
    results: dict[str, Any], out_dir: Path, name: str = "mesa_op", render: Callable[[dict], str] | None = None,
) -> tuple[Path, Path]:
    """``<name>.json`` and ``<name>.md`` (rendered by ``render``, default this script's table) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text((render or render_markdown)(results))
    return json_path, md_path


# ---------------------------------------------------------------------------------------------
# Driver


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _progress_line(index: int, total: int, r: dict[str, Any]) -> str:
    line = (f"[{index:2d}/{total}] T={r['length']:<6d} {r['solver']:<10s} {r['mode']:<8s} "
            f"median {1e3 * r['median_s']:9.1f} ms ({r['repeats']} reps)  peak +{r['peak_memory_mib']:8.1f} MiB  "
            f"CG {r['cg_mean_iterations']:.1f}/{r['cg_max_iterations']}  other load {_percent(r['foreign_cpu_fraction'])}")
    if "gflops" in r:
        line += f"  {r['gflops']:.1f} GFLOP/s"
    return line


def run_benchmark(
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    solvers: Sequence[SolverSetting] = DEFAULT_SOLVERS,
    *,
    shape: Shape = Shape(),
    policy: RepeatPolicy = DEFAULT_POLICY,
    accuracy_length: int = 256,
    matmul_size: int = 4096,
    device: str = "cpu",
    seed: int = 0,
    isolate: bool = True,
    retries: int = CONTENDED_RETRIES,
    out_dir: Optional[Path] = DEFAULT_OUT,
    log: Callable[[str], None] = lambda s: print(s, flush=True),
) -> dict[str, Any]:
    """Run everything, write ``mesa_op.json`` / ``mesa_op.md`` to ``out_dir`` (unless None), return the results.

    ``isolate=False`` measures in this process instead of two subprocesses per configuration: faster,
    but on CPU the memory figures are then only lower bounds (memory freed by earlier calls and kept
    by the allocator hides the peak; see ``MEMORY_WORKER_ENV``).
    ``retries``: how often a timing disturbed by other processes is taken again (see :func:`measure_config`).
    """
    started = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    lengths = sorted(set(lengths))
    log(f"mesa benchmark on {device}: T={lengths}, solvers={[s.name for s in solvers]}")
    peak_start = measure_matmul_peak_quietly(matmul_size, device, retries)
    log(f"fp32 matmul {matmul_size}^2: best {peak_start['best_gflops']:.1f} GFLOP/s, median {peak_start['median_gflops']:.1f} GFLOP/s")

    specs = [
        dict(length=n, solver=asdict(s), mode=mode, shape=asdict(shape), policy=asdict(policy), device=device, seed=seed)
        for n in lengths for s in solvers for mode in MODES
    ]
    runs = []
    for i, spec in enumerate(specs, start=1):
        runs.append(measure_config(spec, isolate, retries))
        log(_progress_line(i, len(specs), runs[-1]))

    accuracy = check_accuracy(shape, accuracy_length, solvers, seed=seed, device=device)
    for a in accuracy:
        log(f"accuracy T={a['length']} {a['solver']:<10s} {a['input_dtype']}: rel. error {a['relative_error']:.2e}")
    peak_end = measure_matmul_peak_quietly(matmul_size, device, retries)
    log(f"fp32 matmul {matmul_size}^2 again: best {peak_end['best_gflops']:.1f} GFLOP/s")
    peak = dict(start=peak_start, end=peak_end, size=matmul_size,
                peak_gflops=max(peak_start["best_gflops"], peak_end["best_gflops"]),
                drift=peak_end["best_gflops"] / peak_start["best_gflops"] - 1.0)

    machine = dict(machine_info(device), load_average_1m_at_start=load_before)
    results: dict[str, Any] = dict(
        machine=machine,
        config=dict(lengths=lengths, solvers=[asdict(s) for s in solvers], shape=asdict(shape), policy=asdict(policy),
                    accuracy_length=accuracy_length, matmul_size=matmul_size, seed=seed, isolate=isolate, retries=retries,
                    validate=True, inputs="q,k unit-norm N(0,1); v N(0,1); gamma U[0.8,0.99]; beta U[0,1]; lam=1"),
        flop_formula=FLOP_FORMULA,
        matmul_peak=peak,
        runs=runs,
        scaling=scaling_checks(runs, lengths, solvers),
        accuracy=accuracy,
    )
    results["targets"] = dict(
        forward_peak_fraction=peak_fraction_check(runs, lengths, solvers, peak["peak_gflops"]),
        linear_scaling_pass=bool(all(s["time_pass"] and s["memory_pass"] for s in results["scaling"])) if results["scaling"] else None,
    )
    results["quiet_machine"] = quiet_machine_check(peak, runs)
    results["total_runtime_s"] = time.perf_counter() - started
    if out_dir is not None:
        json_path, md_path = write_results(results, Path(out_dir))
        log(f"wrote {json_path} and {md_path}")
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T in {512, 2048}, fewer repeats, smaller matmul")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one configuration as JSON
    args = parser.parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker)
        print(RESULT_MARKER + json.dumps(WORKERS[spec["measure"]](spec)), flush=True)
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but torch.cuda.is_available() is False")
    if args.quick:
        results = run_benchmark(QUICK_LENGTHS, policy=QUICK_POLICY, matmul_size=2048, device=args.device,
                                seed=args.seed, out_dir=args.out)
    else:
        results = run_benchmark(device=args.device, seed=args.seed, out_dir=args.out)
    print()
    print(render_markdown(results))


if __name__ == "__main__":
    main()
