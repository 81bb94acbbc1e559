"""Peak memory of one call: on CUDA ``max_memory_allocated`` minus the bytes allocated at the baseline; on Linux the
resident-set high-water mark ``VmHWM`` (reset through ``/proc/self/clear_refs``) minus ``VmRSS`` at the baseline;
elsewhere the ``ru_maxrss`` delta. CPU memory is measured in a fresh worker with :data:`MEMORY_WORKER_ENV`."""

from __future__ import annotations

import gc
import os
import resource
import sys
from typing import Any, Callable, Optional

import torch

from mesanet.utils.allocator import ENV as ALLOCATOR_ENV

MIB = 2.0**20

#: Environment of the CPU memory workers. A fixed glibc mmap threshold (which also switches off its
#: dynamic growth) gives every tensor above 128 KiB its own mapping, returned to the OS when freed,
#: so the resident-set peak follows the peak of live tensors rather than what the allocator happens
#: to cache (with glibc's defaults the figure depends on the process's history, by up to ~3x). It
#: slows the timed calls down (a page fault per fresh page), hence separate processes for time and
#: memory (the timing processes keep freed memory instead, ``mesanet.utils.allocator``). Ignored by other
#: allocators.
MEMORY_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), ALLOCATOR_ENV: "0"}


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


def peak_memory(
    fn: Callable[[], Any], device: str, *, warmup_calls: int = 1, before: Callable[[], None] = lambda: None
) -> dict[str, Any]:
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
