"""Fixtures for the data tests: small synthetic text corpora, tmp caches, and no hub access ever."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mesanet.data import DataConfig

from data_helpers import write_corpus


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    """Tests never reach the Hugging Face hub: offline mode for datasets / huggingface_hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    if "datasets" in sys.modules:
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_HUB_OFFLINE", True, raising=False)
    if "huggingface_hub" in sys.modules:
        monkeypatch.setattr(sys.modules["huggingface_hub"].constants, "HF_HUB_OFFLINE", True, raising=False)


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def make_cfg(tmp_path):
    def make(source, **kw) -> DataConfig:
        kw.setdefault("vocab_size", 300)
        kw.setdefault("seq_len", 16)
        kw.setdefault("val_fraction", 0.25)
        kw.setdefault("cache_dir", str(tmp_path / "cache"))
        return DataConfig(source=str(source), **kw)

    return make
