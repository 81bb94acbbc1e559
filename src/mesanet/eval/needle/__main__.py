"""``python -m mesanet.eval.needle RUN_DIR [options]`` (= ``mesanet needle``)."""

from mesanet.utils.cli_errors import run_cli

from .run import main

if __name__ == "__main__":
    raise SystemExit(run_cli("mesanet needle", main))
