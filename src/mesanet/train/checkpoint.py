"""Checkpoints: written atomically, verified on load, pruned to the newest ``keep_last``.

A checkpoint is a directory ``<run>/checkpoints/step_NNNNNN/`` with

* the model (``save_pretrained``: ``config.json`` + ``model.safetensors``) and the tokenizer (``save_pretrained``);
* ``trainer_state.pt``: optimizer, scheduler, step, RNG states (python / numpy / torch / CUDA, per process),
  data-iterator positions, the train config and the last metrics (``torch.load(weights_only=True)``-safe);
* ``trainer_state.json``: a human-readable summary plus the size and SHA-256 of every other file, written last.

``final/`` (the model and tokenizer of the last step) records the same sizes and SHA-256 in ``checksums.json``;
evaluation and generation verify them (:mod:`mesanet.eval.checkpoint`).

Atomicity: everything is written into ``.tmp-step_NNNNNN-<pid>/``, every file and the directory are
fsync'ed, and only then is the directory renamed into place (``os.replace``), so a directory named
``step_NNNNNN`` is complete by construction; a crash mid-write leaves only a ``.tmp-*`` directory, which
is never read and is removed by the next save. Older checkpoints are deleted only after the new one is
in place. On load every file is checked against the recorded size and SHA-256, so a checkpoint damaged
after the fact is reported as corrupt instead of being half-loaded.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from mesanet.models import MesaNetConfig
from mesanet.utils.files import sha256_file

STATE_FILE = "trainer_state.pt"
SUMMARY_FILE = "trainer_state.json"
#: Sizes and SHA-256 of the files of ``final/`` (a checkpoint records them in ``SUMMARY_FILE``).
CHECKSUMS_FILE = "checksums.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (incomplete, corrupt, another model, another run)."""


def checkpoint_path(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root`` (directories named ``step_N``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


# ----------------------------------------------------------------------------------------------- writing


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories on platforms that cannot open them
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a directory by first renaming it out of the namespace (a crash mid-delete leaves a ``.trash-*``)."""
    trash = path.parent / f".trash-{path.name}-{os.getpid()}"
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def atomic_directory(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Create directory ``target`` with ``write(tmp_dir)`` so that ``target`` appears only complete:
    write into a sibling temporary directory, fsync it, ``os.replace`` it into place (replacing an existing
    ``target`` only after the new one is complete). On error the temporary directory is removed and any
    existing ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        for path in sorted(tmp.rglob("*")):
            _fsync(path)
        _fsync(tmp)
        if target.exists():
            _remove(target)
        os.replace(tmp, target)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace file ``path`` by ``text`` atomically (temporary sibling, fsync, ``os.replace``)."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_pretrained(directory: Path, model: nn.Module, tokenizer: Any | None, *, checksums: bool = False) -> None:
    """``model.save_pretrained`` (safetensors) and ``tokenizer.save_pretrained`` into ``directory``, quietly;
    ``checksums``: then record every file's size and SHA-256 in ``checksums.json``."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(directory, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if checksums:
        payload = {"format": FORMAT_VERSION, "files": file_records(directory)}
        (directory / CHECKSUMS_FILE).write_text(json.dumps(payload, indent=2) + "\n")


def file_records(directory: Path) -> dict:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``directory``."""
    return {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def write_training_state(directory: Path, state: dict) -> None:
    torch.save(state, directory / STATE_FILE)


def write_summary(directory: Path, summary: dict) -> None:
    """``trainer_state.json``: ``summary`` plus size and SHA-256 of every file already in ``directory``."""
    payload = {"format": FORMAT_VERSION, **summary, "files": file_records(directory)}
    (directory / SUMMARY_FILE).write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def save_checkpoint(
    root: str | Path,
    step: int,
    model: nn.Module,
    tokenizer: Any | None,
    state: dict,
    summary: dict,
    keep_last: int,
) -> Path:
    """Write checkpoint ``root/step_NNNNNN`` atomically, then delete all but the newest ``keep_last``
    complete checkpoints and any leftovers of interrupted writes."""
    root = Path(root)
    if keep_last < 1:
        raise ValueError(f"keep_last: expected >= 1, got {keep_last}")
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.iterdir():  # leftovers of a crashed write or delete (never complete checkpoints)
        if stale.name.startswith((".tmp-", ".trash-")) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)

    def write(tmp: Path) -> None:
        save_pretrained(tmp, model, tokenizer)
        write_training_state(tmp, state)
        write_summary(tmp, {"step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **summary})

    path = atomic_directory(checkpoint_path(root, step), write)
    for old in list_checkpoints(root)[:-keep_last]:
        _remove(old)
    return path


# ----------------------------------------------------------------------------------------------- reading


def verify_checkpoint(path: str | Path) -> dict:
    """The summary of checkpoint ``path`` after checking that every recorded file is present and intact;
    :class:`CheckpointError` otherwise."""
    path = Path(path)
    summary_file = path / SUMMARY_FILE
    if not summary_file.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete or corrupt: {SUMMARY_FILE} is missing")
    try:
        summary = json.loads(summary_file.read_text())
        files = summary["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: {SUMMARY_FILE} is unreadable ({e})") from None
    if summary.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format {summary.get('format')!r}, this version reads format {FORMAT_VERSION}")
    for name in (STATE_FILE, "config.json"):
        if name not in files:
            raise CheckpointError(f"checkpoint {path} is corrupt: {SUMMARY_FILE} lists no {name}")
    for name, meta in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} is missing")
        if file.stat().st_size != meta["bytes"] or sha256_file(file) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} does not match its recorded size / SHA-256")
    return summary


def load_checkpoint(path: str | Path, expected: MesaNetConfig) -> tuple[dict, dict]:
    """``(summary, training_state)`` of checkpoint ``path`` after every check: it holds a model of
    ``expected``'s type (checked first, so a foreign directory is named as such), all its files are intact,
    the model config equals ``expected``. Any failure is a :class:`CheckpointError`; nothing is modified."""
    check_model_config(path, expected, type_only=True)
    summary = verify_checkpoint(path)
    check_model_config(path, expected)
    return summary, load_training_state(path)


def check_model_config(path: str | Path, expected: MesaNetConfig, *, type_only: bool = False) -> None:
    """:class:`CheckpointError` unless checkpoint ``path`` holds a model of ``expected``'s type (and, unless
    ``type_only``, the same config field by field)."""
    path = Path(path)
    try:
        saved = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no config.json: not a model checkpoint") from None
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: config.json is unreadable ({e})") from None
    kind = saved.get("model_type") if isinstance(saved, dict) else None
    if kind != expected.model_type:
        raise CheckpointError(
            f"checkpoint {path} holds a model of type {kind!r}; this run trains a {expected.model_type!r} model. "
            "Point out_dir / name at a run of this model, or set resume: false with a new run name"
        )
    if type_only:
        return
    try:
        saved_config = MesaNetConfig.from_dict(saved)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: its model config is invalid ({e})") from None
    diffs = [
        f"{key}: checkpoint {getattr(saved_config, key)!r}, config {getattr(expected, key)!r}"
        for key in MesaNetConfig.__annotations__
        if getattr(saved_config, key) != getattr(expected, key)
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} was trained with a different model ({'; '.join(diffs)}); "
            "resume with the model it was trained with, or start a new run (another name)"
        )


def load_training_state(path: str | Path) -> dict:
    try:
        return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - anything unpickling raises means the same thing here
        raise CheckpointError(f"checkpoint {path} is corrupt: {STATE_FILE} cannot be read ({type(e).__name__}: {e})") from None


def load_model_weights(path: str | Path, model: nn.Module) -> None:
    """Copy the safetensors weights of checkpoint ``path`` into ``model`` (tied weights may be absent from the file)."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"checkpoint {path} has no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    if unexpected or set(missing) - tied:
        raise CheckpointError(
            f"checkpoint {path}: weights do not fit the model (missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)})"
        )


# ------------------------------------------------------------------------------------------ RNG states


def capture_rng_state() -> dict:
    """Python / numpy / torch (CPU and every CUDA device) RNG states as tensors and plain types."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = [
    "CHECKSUMS_FILE",
    "CheckpointError",
    "STATE_FILE",
    "SUMMARY_FILE",
    "file_records",
    "atomic_directory",
    "atomic_write_text",
    "capture_rng_state",
    "check_model_config",
    "checkpoint_path",
    "list_checkpoints",
    "load_checkpoint",
    "load_model_weights",
    "load_training_state",
    "restore_rng_state",
    "save_checkpoint",
    "save_pretrained",
    "verify_checkpoint",
]
