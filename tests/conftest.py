"""Fixtures shared by the stages' tests."""

import pytest
import torch

from spikelite import data as D
from spikelite.snn import neuron


@pytest.fixture
def isolated_run(tmp_path, monkeypatch):
    """A training-style test in isolation: its own data cache, eager LIF kernels (no compile time), one torch
    thread, an empty in-memory dataset cache before and after."""
    monkeypatch.setenv("SPIKELITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(neuron._KERNELS, "broken", True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    D.clear_memory_cache()
    yield
    D.clear_memory_cache()
    torch.set_num_threads(threads)
