"""Hugging Face ``datasets`` sources: ``hf:NAME_OR_LOCAL_PATH[@CONFIG][:SPLIT[:TEXT_FIELD]]``.

Local data always works offline: a data file (.jsonl/.json/.csv/.parquet/.txt/.arrow), a folder of data
files, or a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``. Anything else
is taken as a hub dataset name (``owner/name``), loaded with ``datasets.load_dataset`` - which needs
network access unless the dataset is already in the Hugging Face cache (``HF_HUB_OFFLINE=1`` forbids
downloads). Each row is one document, named ``SPLIT/ROW_INDEX``; SPLIT defaults to ``train``,
TEXT_FIELD to ``text`` (or the dataset's only string column). Paths containing ':' are not supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from .config import DataError
from .sources import Candidates

SYNTAX = "hf:NAME_OR_LOCAL_PATH[@CONFIG][:SPLIT[:TEXT_FIELD]]"
#: ``datasets`` builders for single local data files, by suffix.
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text", ".arrow": "arrow"}
#: What a hub dataset id looks like (``name`` or ``owner/name``).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
READ_BATCH = 1000


@dataclass
class HFCandidates(Candidates):
    dataset: Any = None  # datasets.Dataset
    text_field: str = "text"

    def read(self, indices: Sequence[int], progress: bool = True) -> list[str | None]:
        sub = self.dataset.select(list(indices))
        texts: list[str | None] = []
        bar = tqdm(
            total=len(sub),
            desc="reading dataset rows",
            unit="row",
            leave=False,
            disable=not progress or len(sub) < 10 * READ_BATCH,
        )
        for batch in sub.iter(batch_size=READ_BATCH):
            values = batch[self.text_field]
            texts.extend("" if v is None else str(v) for v in values)
            bar.update(len(values))
        bar.close()
        return texts


def _import_datasets():
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            "a 'hf:' data source needs the Hugging Face `datasets` package, which is not installed: "
            "pip install datasets -c constraints.txt"
        ) from e
    return datasets


def parse_spec(spec: str) -> tuple[str, str | None, str, str | None]:
    """``NAME[@CONFIG][:SPLIT[:FIELD]]`` -> (name, config, split, field); config only for hub names."""
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0].strip():
        raise DataError(
            f"data source 'hf:{spec}': expected {SYNTAX} (e.g. 'hf:data/train.jsonl' or "
            f"'hf:owner/name:train:text'; paths containing ':' are not supported)"
        )
    name = parts[0].strip()
    split = parts[1].strip() if len(parts) > 1 and parts[1].strip() else "train"
    text_field = parts[2].strip() if len(parts) > 2 and parts[2].strip() else None
    config = None
    if not Path(name).expanduser().exists() and "@" in name:
        name, config = name.rsplit("@", 1)
        if not name or not config:
            raise DataError(f"data source 'hf:{spec}': expected NAME@CONFIG with both parts non-empty")
    return name, config, split, text_field


def hf_candidates(spec: str, cache_dir: Path) -> HFCandidates:
    name, config, split, text_field = parse_spec(spec)
    path = Path(name).expanduser()
    local = path.exists()
    if not local:
        looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1 or path.suffix.lower() in FILE_BUILDERS
        if looks_local:
            raise DataError(f"Hugging Face data source: local path {name!r} does not exist (expected {SYNTAX})")
        if not HUB_ID.match(name):
            raise DataError(
                f"Hugging Face data source {name!r} is neither an existing local path nor a hub dataset "
                f"id ('name' or 'owner/name'); expected {SYNTAX}"
            )
    datasets = _import_datasets()
    if local:
        ds = _load_local(datasets, path.resolve(), split, cache_dir)
        description = f"Hugging Face dataset at {path.resolve()} (split {split!r})"
    else:
        ds = _load_hub(datasets, name, config, split)
        description = f"Hugging Face hub dataset {name}" + (f" ({config})" if config else "") + f", split {split!r}"
    text_field = _text_field(ds, text_field, name)
    n = len(ds)
    if n == 0:
        raise DataError(f"Hugging Face dataset {name!r} split {split!r} has no rows")
    width = len(str(n - 1))
    return HFCandidates(
        kind="hf",
        description=f"{description}, text field {text_field!r}",
        names=[f"{split}/{i:0{width}d}" for i in range(n)],
        info={
            "dataset": str(path.resolve()) if local else name,
            "config": config,
            "split": split,
            "text_field": text_field,
            "rows": n,
            "local": local,
        },
        dataset=ds,
        text_field=text_field,
    )


def _load_local(datasets, path: Path, split: str, cache_dir: Path):
    hf_cache = str(cache_dir / "hf-datasets")
    try:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"Hugging Face dataset at {str(path)!r} has no split {split!r}; available: {sorted(ds)}")
                ds = ds[split]
            return ds
        if path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(
                    f"Hugging Face data file {str(path)!r}: unsupported suffix {path.suffix!r}; "
                    f"expected one of {sorted(FILE_BUILDERS)} (or give the path without 'hf:' "
                    f"to read it as plain text)"
                )
            if split != "train":
                raise DataError(
                    f"Hugging Face data file {str(path)!r} is a single file: its only split is 'train', got {split!r}"
                )
            return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=hf_cache)
        return datasets.load_dataset(str(path), split=split, cache_dir=hf_cache)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (ValueError for splits, FileNotFoundError, ...)
        raise DataError(
            f"could not load the Hugging Face dataset at {str(path)!r} (split {split!r}): {type(e).__name__}: {e}"
        ) from e


def _load_hub(datasets, name: str, config: str | None, split: str):
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:
        offline = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))
        hint = (
            " Offline mode is on (HF_HUB_OFFLINE), so only datasets already in the Hugging Face cache can be loaded."
            if offline
            else " Check the name, the split and your network connection."
        )
        raise DataError(
            f"unknown or unavailable Hugging Face dataset {name!r}"
            + (f" (config {config!r})" if config else "")
            + f", split {split!r}: {type(e).__name__}: {e}.{hint}"
        ) from e


def _text_field(ds, text_field: str | None, name: str) -> str:
    features = dict(ds.features)
    strings = [k for k, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    if text_field is None:
        if "text" in features:
            text_field = "text"
        elif len(strings) == 1:
            text_field = strings[0]
        else:
            raise DataError(
                f"Hugging Face dataset {name!r}: no 'text' column and {len(strings)} string columns "
                f"{strings}; name the text field as hf:NAME:SPLIT:FIELD (columns: {sorted(features)})"
            )
    if text_field not in features:
        raise DataError(f"Hugging Face dataset {name!r} has no column {text_field!r}; columns: {sorted(features)}")
    if text_field not in strings:
        raise DataError(f"Hugging Face dataset {name!r}: column {text_field!r} holds {features[text_field]}, expected strings")
    return text_field
