"""Fixtures shared by several test files; the builders they share (random PNG folders, a patch store,
a TorchScript extractor) are plain functions in builders.py."""

from __future__ import annotations

import pytest
import torch


def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread():
    """Tiny ops on a shared 2-core box: extra threads only spin-wait (as bench_gpu --tiny does)."""
    yield from _one_thread()


@pytest.fixture(scope="module")
def one_torch_thread_per_module():
    """The same for a whole test file of tiny models (its module-scoped fixtures included)."""
    yield from _one_thread()
