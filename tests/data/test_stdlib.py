"""The built-in corpus: the running interpreter's standard library source."""

from __future__ import annotations

import json
import platform
import sysconfig
from pathlib import Path

import numpy as np

from mesanet.data import DataConfig, prepare_data
from mesanet.data.sources import stdlib_candidates


def test_stdlib_listing_excludes_tests_and_packages():
    c = stdlib_candidates()
    assert c.kind == "stdlib" and len(c.names) > 300 and c.names == sorted(c.names)
    for name in c.names:
        parts = name.split("/")
        assert name.endswith(".py")
        assert not {"test", "tests", "idle_test", "site-packages", "__pycache__"} & set(parts[:-1]), name
        assert not parts[0].startswith("config-")
    assert "os.py" in c.names and "json/__init__.py" in c.names
    assert c.info["python_version"] == platform.python_version()
    assert Path(c.info["stdlib_path"]) == Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert stdlib_candidates().names == c.names  # deterministic


def test_stdlib_prepare_small(tmp_path):
    cfg = DataConfig(max_documents=30, vocab_size=512, seq_len=64, cache_dir=str(tmp_path / "c"))
    data = prepare_data(cfg, progress=False)
    s = data.stats
    json.dumps(s)
    assert s["source_kind"] == "stdlib" and s["source_info"]["python_version"] == platform.python_version()
    assert s["selected_documents"] == 30 and s["train"]["documents"] + s["val"]["documents"] <= 30
    assert s["val"]["documents"] >= 1 and s["train"]["files"] == s["train"]["documents"]
    assert data.train.dtype == np.uint16 and data.val.size >= cfg.seq_len
    again = prepare_data(cfg, progress=False)  # stdlib files are old: the memo applies, nothing is re-read
    assert again.cache_hits == {"corpus_memo": True, "tokenizer": True, "tokens": True}
    assert again.corpus_hash == data.corpus_hash and again.stats == data.stats
