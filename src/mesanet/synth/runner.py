"""The resumable grid runner: every finished cell writes ``<out_dir>/cells/<cell_id>.json``; a re-run skips them.

``<out_dir>/config.yaml`` holds the resolved config. Re-running an existing output dir with a config that
differs in anything but the grid lists (:data:`~mesanet.synth.config.GRID_FIELDS`) is a ``ValueError``
(use another ``--out``): the finished cells would otherwise mix two budgets.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from .cells import Cell, run_cell
from .config import GRID_FIELDS, SynthConfig, config_dict, fingerprint
from .settings import build_settings


def grid_cells(cfg: SynthConfig) -> list[Cell]:
    """Every cell of the grid: settings x mixers x lrs x weight decays x seeds."""
    return [
        Cell(s, mixer, lr, wd, seed)
        for s in build_settings(cfg)
        for mixer in cfg.mixers
        for lr in cfg.lrs
        for wd in cfg.weight_decays
        for seed in cfg.seeds
    ]


def prepare_out_dir(cfg: SynthConfig) -> Path:
    """Create ``out_dir`` (or check that its saved config matches ``cfg`` outside the grid lists) and save ``cfg``."""
    out = Path(cfg.out_dir)
    saved = out / "config.yaml"
    if saved.is_file():
        old = yaml.safe_load(saved.read_text()) or {}
        new = fingerprint(cfg)
        old_fp = {k: v for k, v in old.items() if k not in GRID_FIELDS}
        changed = sorted(k for k in set(new) | set(old_fp) if old_fp.get(k) != new.get(k))
        if changed:
            raise ValueError(
                f"out_dir {str(out)!r} holds a run with a different config (changed: {changed}); only the grid lists "
                f"{sorted(k for k in ('tasks', 'mixers', 'lrs', 'weight_decays', 'seeds'))} may change on a re-run. "
                "Use another --out for a separate run."
            )
    (out / "cells").mkdir(parents=True, exist_ok=True)
    saved.write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
    return out


def cell_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / f"{cell.cell_id}.json"


def _write_json(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=True))
    os.replace(tmp, path)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _run_and_save(cfg: SynthConfig, cell: Cell, path: str, progress: bool) -> dict:
    if Path(path).is_file():  # finished meanwhile by another runner on the same out dir
        return json.loads(Path(path).read_text())
    record = run_cell(cfg, cell, progress=progress)
    _write_json(Path(path), record)
    return record


def finished_records(cfg: SynthConfig) -> list[dict]:
    """Records of the grid cells already finished in ``cfg.out_dir`` (for a report of a partial run)."""
    out = Path(cfg.out_dir)
    return [json.loads(cell_path(out, c).read_text()) for c in grid_cells(cfg) if cell_path(out, c).is_file()]


def run_grid(cfg: SynthConfig) -> tuple[list[dict], int]:
    """Run every unfinished cell (``cfg.workers`` processes); returns (records of all grid cells, cells trained now)."""
    out = prepare_out_dir(cfg)
    cells = grid_cells(cfg)
    todo = [c for c in cells if not cell_path(out, c).is_file()]  # grid order: a setting's cells finish together
    bar = tqdm(
        total=len(cells),
        initial=len(cells) - len(todo),
        desc="synth cells",
        unit="cell",
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    if cfg.workers == 1 or len(todo) <= 1:
        for cell in todo:
            bar.set_postfix_str(cell.cell_id[:60], refresh=True)
            _run_and_save(cfg, cell, str(cell_path(out, cell)), cfg.progress)
            bar.update()
    else:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(cfg.workers, len(todo)), mp_context=ctx, initializer=_worker_init) as pool:
            futures = {pool.submit(_run_and_save, cfg, c, str(cell_path(out, c)), False): c for c in todo}
            for fut in as_completed(futures):
                fut.result()
                bar.set_postfix_str(futures[fut].cell_id[:60], refresh=False)
                bar.update()
    bar.close()
    records = [json.loads(cell_path(out, c).read_text()) for c in cells]
    return records, len(todo)


__all__ = ["cell_path", "finished_records", "grid_cells", "prepare_out_dir", "run_grid"]
