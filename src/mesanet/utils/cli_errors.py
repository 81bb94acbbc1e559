"""One line per user error: the exit codes and messages of every ``mesanet`` command-line entry point.

``run_cli(prog, main, argv)`` runs an entry point's ``main(argv)``. A usage or config error (a bad flag, bad
YAML, an unknown key, a value out of range: every ``ValueError``; a missing input path) prints
``<prog>: error: <message>`` as ONE line on stderr and returns 2; a runtime failure (a non-finite loss, out
of memory, a failed write) returns 1 the same way; Ctrl-C returns 130. ``--debug`` anywhere on the command
line, or ``MESANET_DEBUG=1`` in the environment, prints the traceback instead of the line (same exit code).
Any other exception is a bug and keeps Python's own traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from typing import Callable, Iterator, Sequence

from .allocator import keep_freed_memory

DEBUG_FLAG = "--debug"
DEBUG_ENV = "MESANET_DEBUG"
DEBUG_HELP = f"show the traceback of an error instead of one line (also {DEBUG_ENV}=1)"

EXIT_OK = 0
EXIT_FAILURE = 1  # the run failed (non-finite loss, out of memory, a failed write)
EXIT_USAGE = 2  # the command line or the config is wrong
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C

#: Input-path errors that mean "the user named something that is not there": usage errors, not failures.
USAGE_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError)

#: Runtime failures reported in one line (exit 1), by class name anywhere in the exception's MRO: named rather
#: than imported, so that reporting an error never imports the training stack. An exception with an integer
#: ``exit_code`` attribute is reported in one line with that code.
RUNTIME_FAILURES = frozenset({"NonFiniteError", "NonFiniteLossError", "OutOfMemoryError"})

#: ``--device`` values :func:`device_arg` accepts, for its messages.
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


class UsageError(ValueError):
    """A command line that the entry point's argument parser rejected."""


def split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without any ``--debug`` (before a ``--`` separator), and whether there was one."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != DEBUG_FLAG] + argv[end:]
    return kept, len(kept) != len(argv)


def debug_from_env() -> bool:
    """``MESANET_DEBUG`` set to anything but empty, ``0``, ``false`` or ``no``."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Document ``--debug`` in ``parser``'s help (:func:`run_cli` takes it off the command line first)."""
    parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)


def exit_code(error: BaseException) -> int | None:
    """The exit code of a reportable error; ``None`` for anything else (a bug: keep the traceback)."""
    code = getattr(error, "exit_code", None)
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, (ValueError, *USAGE_OS_ERRORS)) or _is_yaml_error(error):
        return EXIT_USAGE
    if isinstance(error, OSError) or any(c.__name__ in RUNTIME_FAILURES for c in type(error).__mro__):
        return EXIT_FAILURE
    return None


def _is_yaml_error(error: BaseException) -> bool:
    yaml = sys.modules.get("yaml")
    return yaml is not None and isinstance(error, yaml.YAMLError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined; an empty one becomes the class name)."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in text:
        text = f"{text}: {error.filename}"
    return text or type(error).__name__


@contextlib.contextmanager
def argparse_errors_raise() -> Iterator[None]:
    """Within the block, every ``ArgumentParser.error`` (unknown flag, missing or bad argument) raises
    :class:`UsageError` instead of printing a usage block and exiting; ``--help`` still prints and exits."""
    original = argparse.ArgumentParser.error

    def error(parser: argparse.ArgumentParser, message: str):
        raise UsageError(f"{message} (see `{parser.prog} --help`)")

    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def run_cli(prog: str, main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, *, debug: bool = False) -> int:
    """``main(argv)`` (``sys.argv[1:]`` when ``argv`` is None, ``--debug`` taken off) with every user error
    reported as ``<prog>: error: <message>`` on one stderr line; returns the exit code."""
    argv, flag = split_debug(sys.argv[1:] if argv is None else argv)
    debug = debug or flag or debug_from_env()
    try:
        keep_freed_memory()  # this process's allocator keeps freed memory for reuse (utils/allocator.py)
        with argparse_errors_raise():
            return int(main(argv) or EXIT_OK)
    except BaseException as error:  # noqa: BLE001  (sorted by exit_code; everything else is re-raised)
        code = exit_code(error)
        if code is None or isinstance(error, SystemExit):
            raise
        sys.stdout.flush()
        if debug:
            traceback.print_exception(error)
        else:
            print(f"{prog}: error: {one_line(error)}", file=sys.stderr, flush=True)
        return code


def device_arg(value: str) -> str:
    """argparse ``type=`` for ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""
    import torch

    if value == "auto":
        return value
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected {DEVICE_CHOICES}, got {value!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"got {value!r}, but CUDA is not available on this machine (expected cpu or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(
                f"got {value!r}, but this machine has {count} CUDA device(s) (expected cuda:0 .. cuda:{count - 1})"
            )
    return value


__all__ = [
    "DEBUG_ENV",
    "DEBUG_FLAG",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "add_debug_flag",
    "argparse_errors_raise",
    "debug_from_env",
    "device_arg",
    "exit_code",
    "one_line",
    "run_cli",
    "split_debug",
]
