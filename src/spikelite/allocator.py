"""The process's memory allocator: keep freed memory instead of unmapping it (glibc).

A T×batch-folded SNN allocates activations of tens of MB per layer and step. glibc's malloc serves
every block above its mmap threshold (grown dynamically up to 32 MiB) with a fresh ``mmap`` and
gives it back with ``munmap`` when the tensor is freed, so every training step faults in and zeroes
the same memory again: on this project's 2-core VM a CIFAR SqueezeNet SNN step at batch 64 spent
3.4 s of system time against 4.5 s of user time, and took 2.1× as long as with the heap kept
(``benchmarks/allocator.py``; docs/performance.md).

:func:`retain_freed_memory` sets glibc's ``M_MMAP_MAX`` to 0 (large blocks come from the heap) and
``M_TRIM_THRESHOLD`` to -1 (freed heap memory is never returned to the system) with ``mallopt``,
the in-process equivalent of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``. The process then
keeps its peak memory until it exits (measured: peak RSS 1.3× glibc's default at batch 64); the
arithmetic is untouched. ``spikelite train`` (recipe key ``malloc: retain``, the default) and the CLI
commands that run networks apply it; ``malloc: system`` (``--malloc system``) leaves the allocator
alone. Where glibc is not the allocator (macOS, Windows, musl, or jemalloc/tcmalloc preloaded with
``LD_PRELOAD``) nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MALLOC_MODES", "retain_freed_memory", "apply_malloc_mode", "env_malloc_mode"]

MALLOC_MODES = ("retain", "system")

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_applied: bool | None = None  # the outcome of the first call (the setting is per process)


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return None  # another malloc serves the process; glibc's settings would not matter
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version  # only glibc has it
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def retain_freed_memory() -> bool:
    """Make glibc malloc keep large blocks on its heap and never trim it; True if applied (idempotent)."""
    global _applied
    if _applied is not None:
        return _applied
    libc = _glibc()
    if libc is None:
        _applied = False
        return False
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
    ok = (libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1) and ok
    _applied = ok
    return ok


def apply_malloc_mode(mode: str) -> bool:
    """Apply a recipe's ``malloc`` setting: ``retain`` calls :func:`retain_freed_memory`, ``system`` nothing."""
    from .errors import SpikeliteError

    if mode not in MALLOC_MODES:
        raise SpikeliteError(f"malloc must be one of {', '.join(MALLOC_MODES)}, got {mode!r}")
    return retain_freed_memory() if mode == "retain" else False


def env_malloc_mode() -> str:
    """The ``SPIKELITE_MALLOC`` environment variable (default ``retain``), checked: every command obeys it."""
    from .errors import SpikeliteError

    mode = os.environ.get("SPIKELITE_MALLOC", "retain")
    if mode not in MALLOC_MODES:
        raise SpikeliteError(f"SPIKELITE_MALLOC must be one of {', '.join(MALLOC_MODES)}, got {mode!r}")
    return mode
