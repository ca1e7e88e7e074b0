"""Fixtures shared by several test files; the builders they share (random PNG folders, a patch store,
a TorchScript extractor) are plain functions in builders.py."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Tiny ops on a shared 2-core box: extra threads only spin-wait (as bench_gpu --tiny does)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
