"""Shared by the prune tests: a private cache, eager LIF kernels and one thread for every module."""

from __future__ import annotations

import pytest
import torch

from spikelite import data as D
from spikelite.snn import neuron


@pytest.fixture(scope="module", autouse=True)
def _env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPIKELITE_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(neuron._KERNELS, "broken", True)  # eager LIF kernels: no compile time in tests
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        D.clear_memory_cache()
        yield
        D.clear_memory_cache()
        torch.set_num_threads(threads)
