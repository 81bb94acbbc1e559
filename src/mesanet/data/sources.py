"""Where documents come from: the built-in stdlib corpus and local text files / folders.

``resolve_source(cfg)`` turns ``DataConfig.source`` into ``Candidates``: every candidate document's
name (sorted, deterministic), a way to read any subset of them, and a fingerprint of the files
(name, size, mtime) that lets the corpus memo skip re-reading unchanged files. Hugging Face
``datasets`` sources live in ``hf_source``. A document is one file, decoded as UTF-8 with
``errors="replace"``; files whose first 8 KiB hold a NUL byte are binary and skipped.
"""

from __future__ import annotations

import os
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from .config import DataConfig, DataError

#: Folders never entered in the stdlib corpus (test suites, installed packages, build config).
STDLIB_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
STDLIB_EXCLUDED_PREFIXES = ("config-",)  # config-3.X-<platform>/ (build configuration, python-config.py)

#: File suffixes read from a local folder (files without a suffix, e.g. README or LICENSE, are read too).
TEXT_SUFFIXES = frozenset(
    ".txt .text .md .markdown .rst .adoc .org .tex .py .pyi .pyx .c .h .cc .cpp .cxx .hpp .hh .cu .cuh .java "
    ".kt .scala .go .rs .js .jsx .ts .tsx .mjs .rb .php .pl .lua .r .jl .swift .m .hs .ml .sh .bash .zsh .fish "
    ".bat .ps1 .sql .html .htm .xml .css .scss .json .jsonl .yaml .yml .toml .ini .cfg .conf .csv .tsv .srt "
    ".log .cmake .mk .dockerfile .proto".split()
)
#: Folders never entered in a local folder: caches, environments, version control (hidden ones too).
LOCAL_EXCLUDED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "venv"})
#: Bytes inspected for a NUL byte to tell binary files apart.
SNIFF_BYTES = 8192
#: Read files in a loop with a progress bar once there are at least this many.
PROGRESS_MIN_FILES = 200


@dataclass
class Candidates:
    """All candidate documents of a source, before subset selection, split and reading."""

    kind: str  # "stdlib" | "local" | "hf"
    description: str
    names: list[str]  # unique, sorted
    info: dict = field(default_factory=dict)  # JSON-serialisable facts recorded in the stats

    def fingerprint(self, indices: Sequence[int]) -> list | None:
        """Cheap identity of the chosen documents' content (None: cannot be had without reading)."""
        return None

    def read(self, indices: Sequence[int], progress: bool = True) -> list[str | None]:
        """Texts of the chosen documents (None for a skipped binary file)."""
        raise NotImplementedError


@dataclass
class FileCandidates(Candidates):
    root: Path = Path(".")
    paths: list[Path] = field(default_factory=list)  # parallel to names

    def fingerprint(self, indices: Sequence[int]) -> list:
        out = []
        for i in indices:
            st = self.paths[i].stat()
            out.append([self.names[i], st.st_size, st.st_mtime_ns])
        return out

    def read(self, indices: Sequence[int], progress: bool = True) -> list[str | None]:
        bar = tqdm(
            indices,
            desc=f"reading {self.kind} files",
            unit="file",
            disable=not progress or len(indices) < PROGRESS_MIN_FILES,
            leave=False,
        )
        return [read_text_file(self.paths[i]) for i in bar]


def read_text_file(path: Path) -> str | None:
    """UTF-8 text of ``path`` (undecodable bytes replaced), or None when it looks binary."""
    data = path.read_bytes()
    if b"\0" in data[:SNIFF_BYTES]:
        return None
    return data.decode("utf-8", errors="replace")


def resolve_source(cfg: DataConfig) -> Candidates:
    """``cfg.source`` -> its candidate documents; clear ``DataError`` for missing or empty sources."""
    source = cfg.source.strip()
    if source == "stdlib":
        return stdlib_candidates()
    if source.startswith("hf:"):
        from .hf_source import hf_candidates  # imports `datasets` only when asked for

        return hf_candidates(source[3:], cache_dir=cfg.cache_root)
    return local_candidates(source)


def stdlib_candidates() -> FileCandidates:
    """All ``*.py`` files of the running interpreter's standard library, minus tests and packages."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    if not root.is_dir():
        raise DataError(f"the Python standard library folder {str(root)!r} (sysconfig 'stdlib') does not exist")
    names, paths = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS and not d.startswith(STDLIB_EXCLUDED_PREFIXES))
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                path = Path(dirpath) / fn
                if path.is_file():
                    names.append(path.relative_to(root).as_posix())
                    paths.append(path)
    order = sorted(range(len(names)), key=names.__getitem__)
    if not names:
        raise DataError(f"no *.py files found in the Python standard library folder {str(root)!r}")
    version = platform.python_version()
    return FileCandidates(
        kind="stdlib",
        description=f"Python {version} standard library ({platform.python_implementation()}) at {root}: "
        f"*.py files, excluding test folders, site-packages and build configuration",
        names=[names[i] for i in order],
        paths=[paths[i] for i in order],
        root=root,
        info={
            "python_version": version,
            "python_implementation": platform.python_implementation(),
            "stdlib_path": str(root),
            "candidate_files": len(names),
        },
    )


def local_candidates(source: str) -> FileCandidates:
    """A local text file (one document) or every text file below a folder (one document each)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"data source {source!r} does not exist: expected 'stdlib', an existing text file or folder, "
            f"or 'hf:NAME[:SPLIT[:TEXT_FIELD]]'"
        )
    path = path.resolve()
    if path.is_file():
        if path.stat().st_size == 0:
            raise DataError(f"data file {str(path)!r} is empty")
        return FileCandidates(
            kind="local",
            description=f"local text file {path}",
            names=[path.name],
            paths=[path],
            root=path.parent,
            info={"path": str(path), "candidate_files": 1},
        )
    if not path.is_dir():
        raise DataError(f"data source {str(path)!r} is neither a regular file nor a folder")
    names, paths = [], []
    for dirpath, dirnames, filenames in os.walk(path):  # symlinked folders are not followed
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in LOCAL_EXCLUDED_DIRS)
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            suffix = Path(fn).suffix.lower()
            if suffix and suffix not in TEXT_SUFFIXES:
                continue
            p = Path(dirpath) / fn
            if p.is_file() and p.stat().st_size > 0:
                names.append(p.relative_to(path).as_posix())
                paths.append(p)
    if not names:
        raise DataError(
            f"data folder {str(path)!r} contains no non-empty text files (searched recursively for files "
            f"without a suffix or with one of: {' '.join(sorted(TEXT_SUFFIXES))}; hidden files and folders "
            f"are skipped)"
        )
    order = sorted(range(len(names)), key=names.__getitem__)
    return FileCandidates(
        kind="local",
        description=f"local text folder {path}",
        names=[names[i] for i in order],
        paths=[paths[i] for i in order],
        root=path,
        info={"path": str(path), "candidate_files": len(names)},
    )
