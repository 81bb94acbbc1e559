"""Loading a saved MesaNet model (and its tokenizer) with clear errors for anything that is not one.

Checked before and while loading: the directory exists and has ``config.json``; the config is valid JSON of
``model_type == "mesanet"`` (another model type is named in the error); a weights file is there and readable
(a truncated or garbled safetensors file is reported as corrupt); every weight of the model is in it (no
silently re-initialised tensors); the tokenizer loads. A directory written by training (``final/``, a checkpoint)
is first checked against the sizes and SHA-256 that training recorded: a modified or damaged file is refused
unless the caller passes ``verify=False`` (the command line's ``--allow-modified-weights``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..models import MesaNetConfig, MesaNetForCausalLM  # importing registers the Auto classes
from ..utils.files import sha256_file
from .run_files import MODEL_CONFIG, TRAINER_STATE, recorded_checksums

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
#: How to load a directory whose files no longer match their recorded SHA-256 anyway.
OVERRIDE_HINT = "pass --allow-modified-weights (verify=False in Python) to load it anyway"


class CheckpointError(ValueError):
    """A directory that does not hold a loadable MesaNet checkpoint."""


@dataclass
class LoadedCheckpoint:
    model: MesaNetForCausalLM
    tokenizer: Any  # a transformers tokenizer, or None when not requested
    path: Path


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` / ``None``: CUDA when available, else CPU; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_model_dir(path: str | Path) -> dict:
    """Validate ``path`` as a MesaNet ``save_pretrained`` directory; returns its ``config.json`` mapping."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a directory")
    config_file = path / MODEL_CONFIG
    if not config_file.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} has no {MODEL_CONFIG}: not a save_pretrained model directory")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: {MODEL_CONFIG} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: {MODEL_CONFIG} is not a JSON object")
    model_type = config.get("model_type")
    if model_type != MesaNetConfig.model_type:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a {model_type!r} model, not a MesaNet model "
            f"(expected model_type {MesaNetConfig.model_type!r} in {MODEL_CONFIG})"
        )
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"checkpoint {str(path)!r} has no weights: expected one of {list(WEIGHT_FILES)}")
    weights = path / "model.safetensors"
    if weights.is_file():
        _check_safetensors(weights)
    return config


def verify_checksums(path: str | Path) -> int:
    """Check every file training recorded for ``path`` (``checksums.json`` / ``trainer_state.json``; the optimizer
    state excepted) against its recorded size and SHA-256; returns how many were checked (0: nothing recorded,
    e.g. a free-standing ``save_pretrained`` directory). ``CheckpointError`` naming the file otherwise."""
    path = Path(path)
    try:
        record, files = recorded_checksums(path)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: {e}; {OVERRIDE_HINT}") from None
    if record is None:
        return 0
    checked = 0
    for name, meta in files.items():
        if name == TRAINER_STATE:
            continue
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r}: {name} is missing (recorded in {record.name}); {OVERRIDE_HINT}")
        if file.stat().st_size != meta["bytes"] or sha256_file(file) != meta["sha256"]:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: {name} does not match the size / SHA-256 that training recorded in {record.name} "
                f"(modified or damaged since it was written); {OVERRIDE_HINT}"
            )
        checked += 1
    return checked


def _check_safetensors(file: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            keys = list(f.keys())  # opening checks the header and that it covers the file exactly (truncation)
    except Exception as e:  # safetensors raises its own (non-ValueError) error types
        raise CheckpointError(f"checkpoint weights {str(file)!r} are corrupt or truncated: {e}") from None
    if not keys:
        raise CheckpointError(f"checkpoint weights {str(file)!r} hold no tensors")


def load_model(
    path: str | Path,
    *,
    device: str | torch.device | None = "cpu",
    dtype: Optional[torch.dtype] = None,
    verify: bool = True,
) -> MesaNetForCausalLM:
    """``MesaNetForCausalLM.from_pretrained(path)`` in eval mode, after :func:`check_model_dir` and (``verify``)
    :func:`verify_checksums`; every weight must be present in the checkpoint (``CheckpointError`` listing the
    missing ones otherwise)."""
    check_model_dir(path)
    if verify:
        verify_checksums(path)
    from transformers.utils import logging as hf_logging

    kwargs = {} if dtype is None else {"dtype": dtype}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor bar for a sub-second load is noise
    try:
        model, info = MesaNetForCausalLM.from_pretrained(str(path), output_loading_info=True, **kwargs)
    except (OSError, RuntimeError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} could not be loaded: {type(e).__name__}: {e}") from None
    except Exception as e:  # e.g. SafetensorError, which derives from Exception only
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: {type(e).__name__}: {e}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if problems:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match its config: {problems}")
    return model.to(resolve_device(device)).eval()


def load_tokenizer(path: str | Path):
    """``AutoTokenizer.from_pretrained(path)`` with a clear error when the directory holds no tokenizer."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises OSError / ValueError / its own types for a missing tokenizer
        raise CheckpointError(
            f"checkpoint {str(path)!r} has no loadable tokenizer (expected tokenizer.json / tokenizer_config.json "
            f"saved next to the model): {type(e).__name__}: {e}"
        ) from None


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device | None = "cpu",
    dtype: Optional[torch.dtype] = None,
    tokenizer: bool = True,
    verify: bool = True,
) -> LoadedCheckpoint:
    """Model (eval mode, on ``device``) and, when ``tokenizer``, its tokenizer from a model directory; ``verify``:
    refuse files that differ from the SHA-256 training recorded (:func:`verify_checksums`)."""
    model = load_model(path, device=device, dtype=dtype, verify=verify)
    tok = load_tokenizer(path) if tokenizer else None
    if tok is not None and len(tok) > model.config.vocab_size:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: the tokenizer has {len(tok)} tokens but the model only {model.config.vocab_size}"
        )
    return LoadedCheckpoint(model=model, tokenizer=tok, path=Path(path))


__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "check_model_dir",
    "load_checkpoint",
    "load_model",
    "load_tokenizer",
    "resolve_device",
    "verify_checksums",
]
