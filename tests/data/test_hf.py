"""Hugging Face ``datasets`` sources: local files and saved datasets offline; clear errors otherwise."""

from __future__ import annotations

import builtins
import json
import sys

import pytest

from mesanet.data import DataError, prepare_data
from mesanet.data.hf_source import parse_spec

from data_helpers import make_text


def test_parse_spec():
    assert parse_spec("owner/name") == ("owner/name", None, "train", None)
    assert parse_spec("owner/name@cfg:validation:content") == ("owner/name", "cfg", "validation", "content")
    assert parse_spec("x::body") == ("x", None, "train", "body")
    with pytest.raises(DataError, match=r"expected hf:NAME_OR_LOCAL_PATH\[@CONFIG\]\[:SPLIT\[:TEXT_FIELD\]\]"):
        parse_spec("a:b:c:d")
    with pytest.raises(DataError, match="expected hf:"):
        parse_spec(":train")


def test_missing_datasets_package(monkeypatch, make_cfg):
    real_import = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real_import(name, *a, **k)

    monkeypatch.delitem(sys.modules, "datasets", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError, match=r"needs the Hugging Face `datasets` package.*pip install datasets"):
        prepare_data(make_cfg("hf:some/dataset"), progress=False)


def test_missing_local_path_and_bad_names(make_cfg, tmp_path):
    with pytest.raises(DataError, match=r"local path '.*missing.jsonl' does not exist"):
        prepare_data(make_cfg(f"hf:{tmp_path}/missing.jsonl"), progress=False)
    with pytest.raises(DataError, match=r"local path './relative/missing' does not exist"):
        prepare_data(make_cfg("hf:./relative/missing"), progress=False)
    with pytest.raises(DataError, match="neither an existing local path nor a hub dataset id"):
        prepare_data(make_cfg("hf:bad name!"), progress=False)
    assert not (tmp_path / "cache").exists()  # nothing written for a bad input


def test_unknown_hub_dataset_offline(make_cfg):
    pytest.importorskip("datasets")
    with pytest.raises(
        DataError,
        match=r"unknown or unavailable Hugging Face dataset 'mesanet-no-such/dataset-xyz'.*"
        r"Offline mode is on",
    ):
        prepare_data(make_cfg("hf:mesanet-no-such/dataset-xyz"), progress=False)


def test_local_jsonl(tmp_path, make_cfg):
    pytest.importorskip("datasets")
    path = tmp_path / "rows.jsonl"
    rows = [{"id": i, "text": make_text(i, words=120)} for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = prepare_data(make_cfg(f"hf:{path}"), progress=False)
    names = data.documents["train"] + data.documents["val"]
    assert sorted(names) == [f"train/{i}" for i in range(10)]
    assert data.stats["source_kind"] == "hf" and data.stats["source_info"]["text_field"] == "text"
    assert data.stats["train"]["files"] is None
    first = data.documents["train"][0]
    seg_end = list(data.train[1:]).index(data.eod_id) + 1
    assert data.tokenizer.decode(data.train[1:seg_end].tolist()) == rows[int(first.split("/")[1])]["text"]
    with pytest.raises(DataError, match=r"single file: its only split is 'train', got 'test'"):
        prepare_data(make_cfg(f"hf:{path}:test"), progress=False)
    with pytest.raises(DataError, match=r"has no column 'body'; columns: \['id', 'text'\]"):
        prepare_data(make_cfg(f"hf:{path}:train:body"), progress=False)
    with pytest.raises(DataError, match=r"column 'id' holds .*expected strings"):
        prepare_data(make_cfg(f"hf:{path}:train:id"), progress=False)


def test_saved_dataset_dict_with_split_and_field(tmp_path, make_cfg):
    datasets = pytest.importorskip("datasets")
    body = [make_text(i, words=100) for i in range(8)]
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"body": body, "title": [f"t{i}" for i in range(8)]}),
            "other": datasets.Dataset.from_dict({"body": body[:3], "title": ["x"] * 3}),
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    data = prepare_data(make_cfg(f"hf:{tmp_path / 'saved'}:other:body"), progress=False)
    assert data.stats["train"]["documents"] + data.stats["val"]["documents"] == 3
    with pytest.raises(DataError, match=r"no 'text' column and 2 string columns \['body', 'title'\]"):
        prepare_data(make_cfg(f"hf:{tmp_path / 'saved'}"), progress=False)
    with pytest.raises(DataError, match=r"has no split 'validation'; available: \['other', 'train'\]"):
        prepare_data(make_cfg(f"hf:{tmp_path / 'saved'}:validation:body"), progress=False)
