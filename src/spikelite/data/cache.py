"""The decoded-source cache: in memory (the two most recent) and on disk under ``$SPIKELITE_CACHE``, keyed by
source, size, channels and every file's size and modification time; written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import SpikeliteError
from .decode import _Options, _pixel_stats, _resize, _Source, _to_channels
from .images import log

# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------


_CACHE_FORMAT = 1
_MEMORY_CACHE_ENTRIES = 2
_MEMORY_CACHE: "OrderedDict[str, _Source]" = OrderedDict()


def default_cache_dir() -> Path:
    """``$SPIKELITE_CACHE``, else ``$XDG_CACHE_HOME/spikelite``, else ``~/.cache/spikelite``."""
    env = os.environ.get("SPIKELITE_CACHE")
    if env:
        return Path(env).expanduser()  # may be "off": _resolve_cache_dir then disables the disk cache
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "spikelite"


def _resolve_cache_dir(cache_dir) -> Path | None:
    if cache_dir is None:
        cache_dir = default_cache_dir()
    if isinstance(cache_dir, (str, os.PathLike)):
        if str(cache_dir).strip().lower() in ("", "off", "none", "false", "0"):
            return None
        base = Path(cache_dir).expanduser()
    else:
        raise SpikeliteError(f"cache_dir must be a path or 'off', got {cache_dir!r}")
    return base / "data"


def clear_memory_cache() -> None:
    """Forget the decoded sources held in memory (the disk cache is untouched)."""
    _MEMORY_CACHE.clear()


def _cache_names(ident: dict, fingerprint: str) -> tuple[str, str]:
    ident_hash = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    full_hash = hashlib.sha256(f"{ident_hash}:{fingerprint}:{_CACHE_FORMAT}".encode()).hexdigest()[:16]
    stem = f"{ident['dataset']}-{ident['part']}-{ident_hash}"
    return stem, f"{stem}-{full_hash}.pt"


def _read_cache(path: Path) -> _Source | None:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: decode again and overwrite it
        warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=4)
        return None
    try:
        if payload.get("format") != _CACHE_FORMAT:
            return None
        images, labels = payload["images"], payload["labels"]
        if images.dtype != torch.uint8 or images.dim() != 4 or labels.dtype != torch.int64 \
                or labels.shape[0] != images.shape[0]:
            raise ValueError("unexpected tensors")
        return _Source(images, labels, list(payload["classes"]), tuple(payload["pixel_mean"]),
                       tuple(payload["pixel_std"]))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        warnings.warn(f"ignoring malformed cache file {path}: {exc}", stacklevel=4)
        return None


def _write_cache(folder: Path, stem: str, filename: str, src: _Source) -> None:
    payload = {"format": _CACHE_FORMAT, "images": src.images, "labels": src.labels, "classes": list(src.classes),
               "pixel_mean": list(src.pixel_mean), "pixel_std": list(src.pixel_std)}
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache may be shared read-only
        os.replace(tmp, folder / filename)
        tmp = None
        # Older versions of the same source (its files changed since) are stale: remove them.
        for old in folder.glob(f"{stem}-*.pt"):
            if old.name != filename:
                try:
                    old.unlink()
                except OSError:
                    pass
    except OSError as exc:
        warnings.warn(f"could not write the data cache in {folder}: {exc}", stacklevel=4)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _cached_source(ident: dict, fingerprint: str, opts: _Options, decode: Callable[[], _Source],
                   disk: bool = True) -> _Source:
    """The decoded source for ``ident`` at ``fingerprint``: from memory, the disk cache, or ``decode()``."""
    ident = dict(ident, image_size=opts.image_size, channels=opts.channels)
    stem, filename = _cache_names(ident, fingerprint)
    src = _MEMORY_CACHE.get(filename)
    if src is not None:
        _MEMORY_CACHE.move_to_end(filename)
        return src
    path = opts.cache_dir / filename if (disk and opts.cache_dir is not None) else None
    if path is not None and path.is_file():
        src = _read_cache(path)
        if src is not None:
            log.info("loaded %s from the data cache %s", stem, path)
    if src is None:
        src = decode()
        if path is not None:
            _write_cache(opts.cache_dir, stem, filename, src)
    _MEMORY_CACHE[filename] = src
    while len(_MEMORY_CACHE) > _MEMORY_CACHE_ENTRIES:
        _MEMORY_CACHE.popitem(last=False)
    return src


def _finish(images: torch.Tensor, labels, classes, opts: _Options, what: str) -> _Source:
    """Resize, convert channels and measure a decoded part."""
    images = _resize(images, opts.image_size)
    images = _to_channels(images, opts.channels, what)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    mean, std = _pixel_stats(images)
    return _Source(images.contiguous(), labels, list(classes), mean, std)
