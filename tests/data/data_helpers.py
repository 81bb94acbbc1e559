"""Synthetic text corpora for the data tests (a uniquely named module: importable from any test file)."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = (
    "mesa layer solves ridge regression at every token with conjugate gradient steps forget gate key "
    "value query state chunk parallel scan memory decode train validate the a of to in is for def "
    "return import class self lambda über naïve café 東京 ✓"
).split()


def make_text(seed: int, words: int = 400) -> str:
    rng = random.Random(seed)
    lines, line = [], []
    for _ in range(words):
        line.append(rng.choice(WORDS))
        if len(line) >= rng.randint(4, 12):
            lines.append("    " * rng.randint(0, 2) + " ".join(line))
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines) + "\n"


def write_corpus(root: Path, n_files: int = 12, words: int = 400) -> Path:
    """``n_files`` text files in nested folders plus things a folder scan must skip."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        sub = root / ("docs" if i % 3 == 0 else "notes/deep" if i % 3 == 1 else ".")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file_{i:02d}.{('txt', 'md', 'py')[i % 3]}").write_text(make_text(i, words), encoding="utf-8")
    (root / "blob.txt").write_bytes(b"\x00\x01binary\x00" * 50)  # NUL sniff: skipped
    (root / "image.png").write_bytes(b"\x89PNG not text")  # suffix not text-like: skipped
    (root / ".hidden").mkdir(exist_ok=True)
    (root / ".hidden" / "secret.txt").write_text("hidden folders are skipped\n")
    (root / "empty.txt").write_text("")
    return root
