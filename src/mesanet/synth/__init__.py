"""Synthetic in-context-learning suite: MAD tasks, MQAR and in-context regression over a task x mixer x lr x wd
x seed grid (``python -m mesanet.synth``): resumable cells, CSV / markdown tables, plots and target checks."""

from .cells import Cell, run_cell
from .config import SynthConfig, TaskSize, check_config, load_config
from .report import write_summary
from .runner import grid_cells, run_grid
from .selection import select_best
from .settings import Setting, build_settings
from .targets import check_targets

__all__ = [
    "Cell",
    "Setting",
    "SynthConfig",
    "TaskSize",
    "build_settings",
    "check_config",
    "check_targets",
    "grid_cells",
    "load_config",
    "main",
    "run_cell",
    "run_grid",
    "run_synth",
    "select_best",
    "write_summary",
]


def __getattr__(name):  # lazy: the CLI entry point imports plotting
    if name in ("main", "run_synth"):
        from . import __main__ as entry

        return getattr(entry, name)
    raise AttributeError(name)
