"""Small file-writing helpers shared by the analyses."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["write_csv"]


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows (dicts with the same keys, in column order) -> a CSV with a header; ``ValueError`` if empty."""
    if not rows:
        raise ValueError(f"write_csv: expected at least one row for {path}, got none")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
