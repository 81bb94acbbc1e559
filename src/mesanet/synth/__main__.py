"""``python -m mesanet.synth [CONFIG.yaml] [key=value ...] [--quick] [--out DIR]``: run the grid, then write
``results.csv``, ``summary.csv``, ``summary.md`` and the plots into the output dir. Errors are one line on stderr
(exit 2: usage or config, 1: a runtime failure; ``--debug`` shows the traceback)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mesanet.presets import resolve_config
from mesanet.utils.cli_errors import add_debug_flag, run_cli

from .config import CONFIG_DIR, SynthConfig, load_config
from .plots import write_plots
from .report import write_summary
from .runner import finished_records, grid_cells, prepare_out_dir, run_grid
from .selection import select_best

QUICK_PRESET = CONFIG_DIR / "synth-quick.yaml"


def run_synth(cfg: SynthConfig) -> dict:
    """Run (or resume) ``cfg``'s grid and write the report; returns a summary dict."""
    start = time.time()
    records, trained = run_grid(cfg)
    out = Path(cfg.out_dir)
    targets = write_summary(records, cfg, out, wall_seconds=time.time() - start)
    plots = write_plots(select_best(records), out)
    return dict(out_dir=str(out), cells=len(records), trained=trained, targets=targets, plots=plots, seconds=time.time() - start)


def report_only(cfg: SynthConfig) -> dict:
    """Write the report from the cells finished so far (nothing is trained; a partial grid is marked as such)."""
    out = prepare_out_dir(cfg)
    records = finished_records(cfg)
    if not records:
        raise ValueError(f"--report-only: no finished cells in {str(out)!r}")
    targets = write_summary(records, cfg, out, grid_size=len(grid_cells(cfg)))
    plots = write_plots(select_best(records), out)
    return dict(out_dir=str(out), cells=len(records), trained=0, targets=targets, plots=plots, seconds=0.0)


def parse_args(argv: list[str] | None) -> tuple[SynthConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="mesanet synth", description=__doc__)
    parser.add_argument("items", nargs="*", help="an optional CONFIG.yaml first, then key=value overrides")
    parser.add_argument(
        "--quick", action="store_true", help=f"use the quick preset ({QUICK_PRESET.name}); out dir runs/synth-quick"
    )
    parser.add_argument("--out", default=None, help="output directory (overrides out_dir)")
    parser.add_argument("--report-only", action="store_true", help="only write the report from the cells finished so far")
    add_debug_flag(parser)
    args = parser.parse_intermixed_args(argv)
    items = list(args.items)
    path = None
    if items and "=" not in items[0]:
        path = resolve_config(items.pop(0))  # a YAML file or a packaged preset name
    if args.quick:
        if path is not None:
            raise ValueError(f"--quick: expected no CONFIG.yaml (the quick preset is {QUICK_PRESET}), got {path}")
        path = QUICK_PRESET
    bad = [i for i in items if "=" not in i]
    if bad:
        raise ValueError(f"expected key=value overrides after the config file, got {bad}")
    if args.out:
        items.append(f"out_dir={args.out}")
    return load_config(path, items), args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    result = report_only(cfg) if args.report_only else run_synth(cfg)
    print(f"{result['cells']} cells ({result['trained']} trained now) in {result['seconds'] / 60:.1f} min -> {result['out_dir']}")
    for t in result["targets"]:
        print(f"  [{t.status}] {t.name}: {t.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("python -m mesanet.synth", main))
