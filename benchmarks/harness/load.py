"""Other load on the machine: the share of its core time that other processes took during a timing
(:class:`ForeignLoad`); a timing above :data:`FOREIGN_LOAD_LIMIT` is taken again (:func:`least_contended`). On a
shared machine the spin-waiting thread pool turns a little foreign load into many-fold slowdowns."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

#: Largest share of the machine's core time other processes may take during a timing.
FOREIGN_LOAD_LIMIT = 0.10
#: How often a timing above :data:`FOREIGN_LOAD_LIMIT` is taken again.
CONTENDED_RETRIES = 2


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


def least_contended(
    measure: Callable[[], dict[str, Any]],
    retries: int = CONTENDED_RETRIES,
    *,
    wait: Optional[Callable[[], None]] = wait_for_quiet,
) -> dict[str, Any]:
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


def load_average() -> Optional[float]:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None
