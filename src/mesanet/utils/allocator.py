"""The C allocator setting of mesanet's own processes (README, "Allocator").

glibc hands freed blocks above an adaptive threshold (128 KiB to 32 MiB) back to the system, and trims free
memory at the top of its heap beyond twice that; the next allocation of the same size then faults its pages
in again, one by one. A Mesa solve allocates megabyte-sized temporaries in every CG step: on the development
machine those faults took about a quarter of the operator's forward (T=2048) and 5-11 % of a ``cpu-small``
training step. :func:`keep_freed_memory` fixes both thresholds high, so freed memory stays in the heap for
reuse; the price is a resident size that stays at the process's peak. mesanet's command-line entry points
(``run_cli``) and its benchmarks' timing processes call it; a script using the library may call it too.
Nothing changes off Linux/glibc, or with ``MESANET_KEEP_FREED_MEMORY=0`` in the environment.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

#: The switch: ``"1"`` (the default) keeps freed memory in mesanet's processes, ``"0"`` leaves glibc's defaults.
ENV = "MESANET_KEEP_FREED_MEMORY"

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks below this size come from the heap and stay there when freed; larger ones are mapped and unmapped
#: as before (a single tensor of this size is rare in this project's CPU jobs; its faults are amortised).
MMAP_THRESHOLD_BYTES = 256 * 2**20

#: Free memory at the heap's top is handed back to the system only beyond this much.
TRIM_THRESHOLD_BYTES = 2**30

_applied: Optional[bool] = None


def _enabled() -> bool:
    value = os.environ.get(ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{ENV}: expected 0 or 1, got {value!r}")
    return value == "1"


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (module docstring). Returns whether the setting is in effect;
    ``False`` off Linux/glibc or when ``MESANET_KEEP_FREED_MEMORY=0``. Idempotent; a bad value of the variable
    is a ``ValueError``."""
    global _applied
    if not _enabled():
        return False
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            import ctypes  # here: `import mesanet` stays light (README, "Import time")

            try:
                libc = ctypes.CDLL(None)
                if hasattr(libc, "gnu_get_libc_version"):  # glibc: other C libraries have other knobs
                    mallopt = libc.mallopt
                    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
                        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
                    )
            except (OSError, AttributeError):
                pass
    return _applied


def describe() -> str:
    """What this process's allocator does with freed memory (for benchmark reports)."""
    if _applied:
        return (
            f"glibc keeps freed memory (mallopt: mmap threshold {MMAP_THRESHOLD_BYTES // 2**20} MiB, "
            f"trim threshold {TRIM_THRESHOLD_BYTES // 2**20} MiB)"
        )
    return "the C library's defaults"


__all__ = ["ENV", "describe", "keep_freed_memory"]
