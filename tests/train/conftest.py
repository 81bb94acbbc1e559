"""Fixtures of the training tests: one data cache per session and a tiny-config factory per test."""

from __future__ import annotations

import pytest

from train_helpers import tiny_config


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
    """One tokenizer / token cache for the whole session (the data is the same in every test)."""
    return str(tmp_path_factory.mktemp("train-data-cache"))


@pytest.fixture
def make_cfg(tmp_path, data_cache):
    """``make_cfg(**overrides) -> TrainConfig`` (nested dicts merge) writing under ``tmp_path/runs``."""
    return lambda **over: tiny_config(tmp_path / "runs", data_cache, **over)
