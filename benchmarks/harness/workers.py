"""Workers: a measurement ``"module:function"`` run in a fresh interpreter, its progress lines relayed, its JSON
result returned (:func:`call_in_worker`, :func:`worker_main`); and a Python file outside the project (the peer
implementation) loaded by path at run time (:func:`load_module_from_path`)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional, Sequence

from mesanet.utils.allocator import keep_freed_memory

from .memory import MEMORY_WORKER_ENV
from .timing import Log, print_log

REPO = Path(__file__).resolve().parents[2]
RESULT_MARKER = "@@bench-result@@ "


def _resolve(target: str) -> Callable[..., dict[str, Any]]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def call_in_worker(
    target: str, spec: dict[str, Any], *, isolate: bool = True, memory_env: bool = False, log: Log = print_log
) -> dict[str, Any]:
    """``target(spec, log)`` (``target`` = ``"package.module:function"``, returning a JSON-able dict).

    With ``isolate`` it runs in a fresh interpreter (:func:`worker_main`), so memory and caches of
    one measurement cannot affect the next; its other stdout lines are relayed to ``log`` as they
    come. ``memory_env`` adds :data:`MEMORY_WORKER_ENV` to the worker's environment.
    """
    if not isolate:
        return _resolve(target)(spec, log)
    env = dict(os.environ)
    if memory_env:
        env.update(MEMORY_WORKER_ENV)
    paths = [str(REPO), str(REPO / "src")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    code = "from benchmarks.harness import worker_main; worker_main()"
    command = [sys.executable, "-c", code, target, json.dumps(spec)]
    result = None
    with tempfile.TemporaryFile("w+") as stderr:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=str(REPO)) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(RESULT_MARKER):
                    result = json.loads(line[len(RESULT_MARKER) :])
                else:
                    log(line.rstrip("\n"))
        stderr.seek(0)
        errors = stderr.read()
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"benchmark worker {target} failed (exit {proc.returncode}) for {spec}:\n{errors[-4000:]}")
    return result


def worker_main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry of a worker: ``argv = [target, spec JSON]``; prints the result behind :data:`RESULT_MARKER`."""
    target, spec = (sys.argv[1:] if argv is None else list(argv))[:2]
    keep_freed_memory()  # timing workers; a memory worker's environment switches it off (MEMORY_WORKER_ENV)
    result = _resolve(target)(json.loads(spec), print_log)
    print(RESULT_MARKER + json.dumps(result), flush=True)


def load_module_from_path(
    path: Optional[str | Path], name: str, required: Sequence[str] = ()
) -> tuple[Optional[ModuleType], str]:
    """A Python file outside the project, loaded by path at run time: ``(module, "")``, or ``(None, note)``
    saying why not (no path given, file missing, import error, missing attributes)."""
    if not path:
        return None, "not given"
    file = Path(path).expanduser()
    if not file.is_file():
        return None, f"file {file} not found"
    try:
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of a foreign file is a skip, with its reason
        return None, f"could not import {file}: {type(e).__name__}: {e}"
    missing = [attr for attr in required if not hasattr(module, attr)]
    if missing:
        return None, f"{file} lacks {', '.join(missing)}"
    return module, ""
