"""File helpers shared by the pipelines."""

from __future__ import annotations

import hashlib
from pathlib import Path

#: Read size of :func:`sha256_file`.
HASH_BLOCK_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content, read in blocks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK_BYTES), b""):
            h.update(block)
    return h.hexdigest()
