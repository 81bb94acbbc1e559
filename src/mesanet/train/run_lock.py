"""One training process per run directory: an OS lock, and cleanup of what killed writers left behind.

The lock is ``fcntl.flock`` on ``<out_dir>/.<name>.lock`` (beside the run directory, so a config that is then
rejected leaves the run directory itself unwritten). The kernel releases it when the holder exits, however
it exits (``kill -9`` included), so a stale lock never blocks a run. The holder writes its pid, host and start
time into the file; a second process reads them for its error message. The file itself is never deleted
(deleting a lock file races with processes that have it open).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None

#: Name prefixes of the temporary / half-deleted entries that atomic writes create (``.tmp-final-<pid>`` ...).
LEFTOVER_PREFIXES = (".tmp-", ".trash-")


class RunInUseError(ValueError):
    """Another process is training the same run directory."""


def lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


class RunLock:
    """Exclusive, non-blocking lock of ``run_dir``; :meth:`acquire` raises :class:`RunInUseError` naming the holder."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.path = Path(run_dir), lock_path(Path(run_dir))
        self._file = None

    def acquire(self) -> "RunLock":
        if fcntl is None or self._file is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = _describe(f.read())
            f.close()
            raise RunInUseError(
                f"run directory {self.run_dir} is in use by another training process ({holder}): only one process may "
                f"train a run at a time; wait for it to finish or stop it (lock file {self.path})"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"
        )
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            finally:
                self._file.close()
                self._file = None


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown: it has not written its pid yet"


def remove_leftovers(run_dir: Path, *subdirs: str) -> list[Path]:
    """Delete ``.tmp-*`` / ``.trash-*`` entries in ``run_dir`` (and its ``subdirs``): what an interrupted atomic
    write (``final/``, a checkpoint, ``config.yaml``) or delete left behind. Only call it holding the run lock:
    then no other process is writing there. Returns what was removed."""
    removed = []
    for folder in (run_dir, *(run_dir / s for s in subdirs)):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(LEFTOVER_PREFIXES):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def holder_pid(run_dir: Path) -> Optional[int]:
    """The pid recorded in the lock file of ``run_dir`` (the current or last holder), or ``None``."""
    try:
        return int(json.loads(lock_path(run_dir).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["LEFTOVER_PREFIXES", "RunInUseError", "RunLock", "holder_pid", "lock_path", "remove_leftovers"]
