"""Shared machinery of the benchmarks, one module per job; every public name is importable from here
(``from benchmarks import harness as h``).

* :mod:`.timing`: calls timed with warm-up and repeats, or several in turns (:func:`time_interleaved`).
* :mod:`.memory`: peak memory of one call (CUDA allocator, Linux ``VmHWM``, or ``ru_maxrss``).
* :mod:`.load`: the share of the machine other processes took during a timing; retries while it is high.
* :mod:`.workers`: measurements in fresh interpreters; the peer's file loaded by path.
* :mod:`.machine`: the matmul peak at the start and the end, machine facts, the quiet-machine verdict.
* :mod:`.report`: ``<name>.json`` + ``<name>.md``, markdown tables and cells.
"""

from .load import CONTENDED_RETRIES, FOREIGN_LOAD_LIMIT, ForeignLoad, is_contended, least_contended, load_average, wait_for_quiet
from .machine import (
    MATMUL_DRIFT_LIMIT,
    machine_info,
    matmul_peak_summary,
    measure_matmul_peak,
    measure_matmul_peak_quietly,
    quiet_machine_check,
    relative_errors,
)
from .memory import MEMORY_WORKER_ENV, MIB, PeakMemory, peak_memory
from .report import DEFAULT_OUT, flag, fmt, machine_lines, percent, quiet_warning, table, write_results
from .timing import Log, RepeatPolicy, percentile, print_log, synchronize, time_call, time_interleaved, timed
from .workers import REPO, RESULT_MARKER, call_in_worker, load_module_from_path, worker_main

__all__ = [
    "CONTENDED_RETRIES",
    "DEFAULT_OUT",
    "FOREIGN_LOAD_LIMIT",
    "MATMUL_DRIFT_LIMIT",
    "MEMORY_WORKER_ENV",
    "MIB",
    "REPO",
    "RESULT_MARKER",
    "ForeignLoad",
    "Log",
    "PeakMemory",
    "RepeatPolicy",
    "call_in_worker",
    "flag",
    "fmt",
    "is_contended",
    "least_contended",
    "load_average",
    "load_module_from_path",
    "machine_info",
    "machine_lines",
    "matmul_peak_summary",
    "measure_matmul_peak",
    "measure_matmul_peak_quietly",
    "peak_memory",
    "percent",
    "percentile",
    "print_log",
    "quiet_machine_check",
    "quiet_warning",
    "relative_errors",
    "synchronize",
    "table",
    "time_call",
    "time_interleaved",
    "timed",
    "wait_for_quiet",
    "worker_main",
    "write_results",
]
