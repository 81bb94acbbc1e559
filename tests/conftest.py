"""Fixtures shared across test folders."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def private_data_cache(tmp_path_factory):
    """The suite never writes into the user's real data cache: ``MESANET_CACHE`` (the default
    ``DataConfig.cache_dir``) points at a temporary folder for every test and every subprocess they start."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MESANET_CACHE", str(tmp_path_factory.mktemp("mesanet-cache")))
        yield


@pytest.fixture
def one_thread():
    """Tiny problems on one thread: on a loaded machine a spin-waiting thread pool makes each tiny matmul
    take milliseconds (for tests where the measured numbers do not matter)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
