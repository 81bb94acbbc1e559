"""``mesanet.utils.allocator``: freed memory stays in the process where the setting is on, goes back where it is off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mesanet.utils.allocator import ENV, keep_freed_memory

#: Allocates and touches 96 MiB (above glibc's largest adaptive mmap threshold, 32 MiB, below the setting's
#: 256 MiB), frees it, and prints the resident-size growth (MiB) while held and after the free.
PROBE = """
from mesanet.utils.allocator import keep_freed_memory
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
applied = keep_freed_memory()
base, n = rss(), 96 * 2**20
block = bytearray(n)
block[:: 4096] = b"\\x01" * len(range(0, n, 4096))  # touch every page
held = rss() - base
del block
print(applied, round(held), round(rss() - base))
"""


def probe(value: str) -> tuple[bool, float, float]:
    env = dict(os.environ, **{ENV: value})
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True).stdout.split()
    return out[0] == "True", float(out[1]), float(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting is glibc's (Linux)")
def test_freed_memory_stays_for_reuse_only_where_the_setting_is_on():
    applied, held, after = probe("1")
    if not applied:
        pytest.skip("not glibc: the setting does not apply")
    assert held >= 90 and after >= 90  # kept in the heap for the next allocation
    applied, held, after = probe("0")
    assert not applied and held >= 90 and after <= 10  # glibc's default: mapped, and unmapped when freed


def test_a_bad_switch_value_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(ENV, "yes")
    with pytest.raises(ValueError, match=f"{ENV}: expected 0 or 1, got 'yes'"):
        keep_freed_memory()
    result = subprocess.run(
        [sys.executable, "-m", "mesanet", "eval", "no-such-run"], capture_output=True, text=True, env=dict(os.environ)
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"mesanet eval: error: {ENV}: expected 0 or 1, got 'yes'"
