"""Fixtures of the data tests: an isolated dataset cache, and a count of the JPEG decodes."""

import pytest

from spikelite import data as D
from spikelite.data import decode as DD


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache; never reuse another test's in-memory sources."""
    monkeypatch.setenv("SPIKELITE_CACHE", str(tmp_path / "default-cache"))
    D.clear_memory_cache()
    yield
    D.clear_memory_cache()


@pytest.fixture
def decode_calls(monkeypatch):
    """The paths decoded from here on, one entry per file decode."""
    calls = []
    real = DD._decode_file

    def counting(path, gray):
        calls.append(path)
        return real(path, gray)

    monkeypatch.setattr(DD, "_decode_file", counting)
    return calls
