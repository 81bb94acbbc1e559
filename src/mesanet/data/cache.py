"""Crash-safe cache entries: build in a temporary folder beside the target, then ``os.replace``.

An entry is a folder ``<kind>/<key>/`` that either exists complete or not at all: an interrupted
build leaves only a ``.tmp-<key>-<pid>-<random>`` folder, which the next build of the same key
removes once its process is gone. Builds of one key are serialised by a file lock, so concurrent
processes (e.g. DDP ranks) build once and the others reuse the result. Nothing here ever deletes a
complete entry.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

from filelock import FileLock


def lock(root: Path, key: str) -> FileLock:
    """Inter-process lock for building entry ``key`` under ``root``."""
    locks = root / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"{key}.lock"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(parent: Path, key: str) -> None:
    """Remove ``.tmp-<key>-<pid>-*`` leftovers of interrupted builds whose process no longer runs."""
    if not parent.is_dir():
        return
    for tmp in parent.glob(f".tmp-{key}-*"):
        try:
            pid = int(tmp.name[len(f".tmp-{key}-") :].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes ``final`` atomically, on error it is removed.

    If ``final`` appeared meanwhile (another process won the race), the new build is discarded.
    """
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir_files(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir_files(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def set_aside(folder: Path) -> Path:
    """Rename a damaged entry to ``.damaged-<name>-<time>`` (kept for inspection, never deleted)."""
    aside = folder.parent / f".damaged-{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    os.replace(folder, aside)
    return aside


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_json(path: Path) -> dict | None:
    """JSON object at ``path``, or None when missing or unreadable (a cache miss, never an error)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
