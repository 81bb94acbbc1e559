"""``python -m mesanet.mesaopt <name> [args]``: dispatch to the analysis registered under ``name``.

Each entry of :data:`ANALYSES` is ``"module:function"``; the function takes the remaining ``argv`` (a list of
strings) and returns an exit code (``None`` counts as 0). Add one line per analysis. A missing or unknown name
is one line on stderr and exit code 2; the analyses' own errors go to :func:`~mesanet.utils.cli_errors.run_cli`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from mesanet.utils.cli_errors import EXIT_USAGE, UsageError, run_cli

PROG = "mesanet mesaopt"

ANALYSES: dict[str, str] = {
    "train": "mesanet.mesaopt.analysis.train:main",
    "gd-construction": "mesanet.mesaopt.analysis.gd_construction:main",
    "per-step-loss": "mesanet.mesaopt.analysis.per_step_loss:main",
    "fewshot": "mesanet.mesaopt.analysis.fewshot:main",
    "probes": "mesanet.mesaopt.analysis.probes:main",
    "linearize": "mesanet.mesaopt.analysis.linearize:main",
    "compressed-alg": "mesanet.mesaopt.analysis.compressed_alg:main",
}


def _usage() -> str:
    names = "\n".join(f"  {name:<24} {target}" for name, target in sorted(ANALYSES.items()))
    return f"usage: {PROG} <name> [args]  (= python -m mesanet.mesaopt <name> [args])\n\nanalyses:\n{names}\n"


def resolve(name: str):
    """The callable registered under ``name`` (``ValueError`` for an unknown name)."""
    if name not in ANALYSES:
        raise UsageError(f"unknown analysis {name!r}; expected one of {sorted(ANALYSES)}")
    module, _, func = ANALYSES[name].partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "list"):
        print(_usage(), end="")
        return 0
    try:
        if not argv:
            raise UsageError(f"expected an analysis name, one of {sorted(ANALYSES)}; got none (see `{PROG} --help`)")
        fn = resolve(argv[0])
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    code = fn(argv[1:])
    return 0 if code is None else int(code)


if __name__ == "__main__":
    sys.exit(run_cli(PROG, main))
