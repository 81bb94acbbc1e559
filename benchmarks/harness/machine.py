"""The machine: fp32 matmul throughput at the start and the end of a run (:func:`measure_matmul_peak`,
:func:`matmul_peak_summary`), what it is (:func:`machine_info`), and whether a run's timings can be trusted
(:func:`quiet_machine_check`: a drift above :data:`MATMUL_DRIFT_LIMIT` or a timing above the load limit marks it
noisy); :func:`relative_errors` for accuracy columns."""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any, Iterable

import torch
from torch import Tensor

from mesanet.utils import allocator

from .load import CONTENDED_RETRIES, FOREIGN_LOAD_LIMIT, ForeignLoad, is_contended, load_average, wait_for_quiet
from .timing import timed

#: Largest relative change of the matmul throughput between start and end of a trustworthy run.
MATMUL_DRIFT_LIMIT = 0.15


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
        size=size,
        dtype="float32",
        repeats=repeats,
        times_s=times,
        threads=torch.get_num_threads(),
        best_gflops=flops / min(times) / 1e9,
        median_gflops=flops / statistics.median(times) / 1e9,
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
    return dict(
        start=start,
        end=end,
        size=start["size"],
        peak_gflops=max(start["best_gflops"], end["best_gflops"]),
        drift=end["best_gflops"] / start["best_gflops"] - 1.0,
    )


def machine_info(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = dict(
        device=device,
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        cpu_model=cpu,
        python=platform.python_version(),
        platform=platform.platform(),
        load_average_1m_at_end=load_average(),
        allocator=allocator.describe(),  # of this process; timing workers do the same, memory workers keep the defaults
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
    return dict(
        matmul_drift=peak["drift"],
        drift_limit=MATMUL_DRIFT_LIMIT,
        worst_foreign_cpu_fraction=worst[1],
        worst_foreign_cpu_measurement=worst[0],
        foreign_cpu_limit=FOREIGN_LOAD_LIMIT,
        passed=bool(drift_ok and load_ok),
    )


def relative_errors(actual: Tensor, expected: Tensor) -> tuple[float, float]:
    """Norm-wise ``||a - e|| / ||e||`` over the whole tensor, and the worst row (last dim) of it."""
    diff = actual.detach().double().cpu() - expected.double().cpu()
    expected = expected.double().cpu()
    total = float(diff.norm() / expected.norm())
    rows = diff.norm(dim=-1) / expected.norm(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
    return total, float(rows.max())
