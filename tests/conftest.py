"""Fixtures shared across test folders."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny problems on one thread: on a loaded machine a spin-waiting thread pool makes each tiny matmul
    take milliseconds (for tests where the measured numbers do not matter)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
