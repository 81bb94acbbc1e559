"""``python -m mesanet.analysis <name> [args]``: dispatch to the analysis registered under ``name``.

Each entry of :data:`ANALYSES` is ``"module:function"``; the function takes the remaining ``argv`` (a list of
strings) and returns an exit code (``None`` counts as 0). Add one line per analysis.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

ANALYSES: dict[str, str] = {
    "train": "mesanet.analysis.zoo:main",
    "gd-construction": "mesanet.analysis.gd_comparison:main",
    "per-step-loss": "mesanet.analysis.per_step_comparison:main",
    "fewshot": "mesanet.analysis.fewshot_repurpose:main",
    "probes": "mesanet.analysis.probes:main",
    "linearize": "mesanet.analysis.linearization:main",
    "compressed-alg": "mesanet.analysis.compressed_alg:main",
}


def _usage() -> str:
    names = "\n".join(f"  {name:<24} {target}" for name, target in sorted(ANALYSES.items()))
    return f"usage: python -m mesanet.analysis <name> [args]\n\nanalyses:\n{names}\n"


def resolve(name: str):
    """The callable registered under ``name`` (``ValueError`` for an unknown name)."""
    if name not in ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; expected one of {sorted(ANALYSES)}")
    module, _, func = ANALYSES[name].partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), end="")
        return 0 if argv else 2
    try:
        fn = resolve(argv[0])
    except ValueError as e:
        print(f"error: {e}\n\n{_usage()}", end="", file=sys.stderr)
        return 2
    code = fn(argv[1:])
    return 0 if code is None else int(code)


if __name__ == "__main__":
    sys.exit(main())
