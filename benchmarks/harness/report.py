"""Reports: ``<name>.json`` (strict JSON) and ``<name>.md`` (:func:`write_results`), markdown tables and cells."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .workers import REPO

DEFAULT_OUT = REPO / "benchmarks" / "results"


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
    return [
        f"**Warning: noisy machine** (matmul throughput drift {100 * quiet['matmul_drift']:+.0f}%, limit "
        f"{100 * quiet['drift_limit']:.0f}%; most core time taken by other processes during a timing: {where}, "
        f"limit {100 * quiet['foreign_cpu_limit']:.0f}%): the timings are not trustworthy; rerun on an idle machine.",
        "",
    ]


def machine_lines(machine: dict[str, Any], peak: dict[str, Any]) -> list[str]:
    """Report lines on the machine, its load and its matmul peak."""
    load = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    gpu = f" ({machine['gpu']})" if "gpu" in machine else ""
    return [
        f"Device `{machine['device']}`{gpu}, CPU `{machine['cpu_model']}`, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch_version']}. 1-minute load average at start / end: "
        f"{load(machine.get('load_average_1m_at_start'))} / {load(machine.get('load_average_1m_at_end'))}. "
        f"Allocator of the timed processes: {machine.get('allocator', 'not recorded')}.",
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


def write_results(
    results: dict[str, Any], out_dir: Path, name: str, render: Callable[[dict[str, Any]], str]
) -> tuple[Path, Path]:
    """``<name>.json`` (strict JSON: NaN as null) and ``<name>.md`` (``render(results)``) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n")
    text = render(results)
    md_path.write_text(text if text.endswith("\n") else text + "\n")
    return json_path, md_path
