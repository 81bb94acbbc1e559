"""Fixtures of the evaluation tests: ``mesanet.data``'s window cutter (a stand-in while the real package is
missing), the test tokenizer and a saved model directory."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from eval_helpers import build_model, build_tokenizer, fake_eval_windows


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: intra-op parallelism only adds synchronisation (badly so on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def eval_windows(monkeypatch):
    """``mesanet.data.eval_windows``: the real one when the data package provides it, else a stand-in
    (consecutive non-overlapping windows) installed as ``mesanet.data`` for this test only."""
    try:
        from mesanet.data import eval_windows as real

        return real
    except ImportError:
        module = types.ModuleType("mesanet.data")
        module.eval_windows = fake_eval_windows
        monkeypatch.setitem(sys.modules, "mesanet.data", module)
        return fake_eval_windows


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer):
    """A save_pretrained Hawk + Mesa model with its tokenizer (treat as read-only)."""
    path = tmp_path_factory.mktemp("model")
    build_model(["hawk", "mesa"]).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
