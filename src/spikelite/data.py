"""Image datasets for spikelite: decode once, cache the decoded tensor, batch and augment on tensors.

Every split is one :class:`ImageData` held entirely in memory as a ``uint8 [N, C, H, W]`` tensor with
``int64`` labels. :func:`load_split` reads a dataset from its usual on-disk layout:

* ``cifar10`` / ``cifar100`` — torchvision's pickles (``cifar-10-batches-py/``, ``cifar-100-python/``)
  or an ImageFolder root with ``train/<class>/*`` and ``test/<class>/*`` (class folders named as the
  dataset's classes, e.g. ``airplane`` ... ``truck``).
* ``tinyimagenet`` — ``tiny-imagenet-200/`` (``train/<wnid>/images/*.JPEG``; ``val/images`` with
  ``val/val_annotations.txt`` serves as the test split).
* ``fashion-mnist`` — IDX files, plain or ``.gz`` (default root: Debian's
  ``/usr/share/datasets/fashion-mnist``).
* ``digits`` — scikit-learn's 8x8 digits, resized to 32x32 with the grey level replicated to 3
  channels so they feed the same CIFAR-sized models; works offline anywhere. A fixed stratified 20 %
  of the 1,797 images is its test split.
* ``imagefolder`` — any folder of class sub-folders, optionally split into ``train/`` and ``test/``.

``train`` and ``val`` are the two disjoint parts of the original training set (a seeded, stratified
split, :func:`stratified_split`); ``test`` is read only when asked for.

Decoded sources are cached in memory (the two most recent) and on disk under
``$SPIKELITE_CACHE`` (default ``~/.cache/spikelite``), keyed by the source path, the requested size and
channels, and every source file's size and modification time; cache files are written atomically.

:class:`BatchLoader` serves ``(x, y)`` batches on the training device: the uint8 images are moved to
the device once, and each batch is gathered, augmented (random crop with zero padding, horizontal
flip, cutout — all batched tensor ops) and normalised there. The order and augmentation of an epoch
are a pure function of ``(seed, epoch, rank)``; with ``world_size > 1`` each rank gets a disjoint,
equal-size shard. See docs/data.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import math
import numbers
import os
import pickle
import socket
import tempfile
import time
import urllib.parse
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SpikeliteError

__all__ = [
    "DATASETS",
    "SPLITS",
    "ImageData",
    "Augment",
    "BatchLoader",
    "load_split",
    "stratified_split",
    "default_augment",
    "default_cache_dir",
    "clear_memory_cache",
    "read_idx",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "FASHION_MNIST_CLASSES",
]

log = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100", "tinyimagenet", "fashion-mnist", "digits", "imagefolder")
SPLITS = ("train", "val", "test")

_ALIASES = {
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "tiny-imagenet": "tinyimagenet",
    "tiny_imagenet": "tinyimagenet",
    "tiny-imagenet-200": "tinyimagenet",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "image-folder": "imagefolder",
    "image_folder": "imagefolder",
}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")

# Per-channel mean and std in [0, 1] scale: the datasets' published statistics of their train sets.
# (imagefolder and digits compute theirs from the train part they load.)
_STANDARD_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp", ".gif")

DEFAULT_VAL_FRACTION = 0.1  # 5,000 of CIFAR-10/100's 50,000 training images: the usual 45k/5k split
DIGITS_TEST_FRACTION = 0.2  # digits has no official test split: a fixed, stratified 20 % is held out
_DIGITS_TEST_SEED = 20240  # fixed, independent of the user's seed, so the test split never moves

FASHION_MNIST_SYSTEM_ROOT = "/usr/share/datasets/fashion-mnist"
_TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"

_CACHE_FORMAT = 1
_MEMORY_CACHE_ENTRIES = 2
_MEMORY_CACHE: "OrderedDict[str, _Source]" = OrderedDict()


# ----------------------------------------------------------------------------------------------
# The in-memory split
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class ImageData:
    """One split of an image dataset, fully in memory.

    ``images`` is ``uint8 [N, C, H, W]``, ``labels`` ``int64 [N]`` indexing ``classes``; ``mean`` and
    ``std`` are the per-channel normalisation statistics in [0, 1] scale that :class:`BatchLoader`
    applies (a checkpoint should store them, and evaluation should reuse them).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise SpikeliteError(f"ImageData {self.name!r}: images must be a uint8 tensor [N, C, H, W], got "
                                 f"{getattr(self.images, 'dtype', type(self.images))} "
                                 f"{tuple(getattr(self.images, 'shape', ()))}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise SpikeliteError(f"ImageData {self.name!r}: labels must be an int64 tensor [N]")
        if self.labels.shape[0] != self.images.shape[0]:
            raise SpikeliteError(f"ImageData {self.name!r}: {self.images.shape[0]} images but "
                                 f"{self.labels.shape[0]} labels")
        self.classes = list(self.classes)
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise SpikeliteError(f"ImageData {self.name!r}: labels outside 0..{len(self.classes) - 1}")
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise SpikeliteError(f"ImageData {self.name!r}: mean/std need {self.in_chans} values (one per channel)")
        if any(not s > 0 for s in self.std):
            raise SpikeliteError(f"ImageData {self.name!r}: std must be positive, got {self.std}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: torch.Tensor) -> "ImageData":
        """The images at ``indices`` (integer indices or a boolean mask; a copy), same classes and statistics."""
        indices = torch.as_tensor(indices)
        if indices.dtype == torch.bool:
            indices = torch.nonzero(indices).flatten()
        indices = indices.to(torch.int64)
        return dataclasses.replace(self, images=self.images.index_select(0, indices),
                                   labels=self.labels.index_select(0, indices))

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def __repr__(self) -> str:
        return (f"ImageData(name={self.name!r}, n={len(self)}, shape={tuple(self.images.shape[1:])}, "
                f"classes={self.num_classes})")


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def _seed_from(*parts) -> int:
    """A 63-bit generator seed that is a pure function of ``parts`` (stable across runs and machines)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _check_int(what: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SpikeliteError(f"{what} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise SpikeliteError(f"{what} must be >= {minimum}, got {value}")
    return value


def _val_count(val_size, n: int, name: str) -> int:
    if val_size is None:
        val_size = DEFAULT_VAL_FRACTION
    if isinstance(val_size, bool):
        raise SpikeliteError(f"val_size must be a fraction in [0, 1) or a count, got {val_size!r}")
    if isinstance(val_size, numbers.Integral):
        count = int(val_size)
    elif isinstance(val_size, numbers.Real):
        if not 0.0 <= float(val_size) < 1.0:
            raise SpikeliteError(f"val_size={val_size!r}: a float is a fraction in [0, 1); pass an int for a count")
        count = int(round(float(val_size) * n))
    else:
        raise SpikeliteError(f"val_size must be a fraction in [0, 1) or a count, got {val_size!r}")
    if count < 0 or count >= n:
        raise SpikeliteError(f"val_size={val_size!r}: {name}'s training set has {n} images; the validation "
                             f"split must leave at least one for training (0 <= count < {n})")
    return count


def stratified_split(labels: torch.Tensor, val_size: float | int | None, seed: int = 0,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into (train, val), both sorted, disjoint and covering every sample.

    ``val_size`` is a fraction in [0, 1) or a count (None: 10 %). Each class gets its proportional
    share of the validation count (largest remainders, ties to the lower class index, so the shares
    add up exactly); which of its images go to validation is drawn by ``torch.randperm`` from one CPU
    generator seeded from ``seed`` (classes in label order). Pure function of (labels, val_size, seed).
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    n = int(labels.numel())
    count = _val_count(val_size, n, "the dataset")
    seed = _check_int("seed", seed)
    lab = labels.numpy()
    if n and lab.min() < 0:
        raise SpikeliteError("stratified_split: labels must be >= 0")
    counts = np.bincount(lab) if n else np.zeros(0, dtype=np.int64)
    quota = counts.astype(np.int64) * count
    take = quota // max(n, 1)
    remainder = quota % max(n, 1)
    missing = count - int(take.sum())
    if missing:
        # Largest remainders first; ties keep the lower class index first.
        order = sorted(range(len(counts)), key=lambda c: (-int(remainder[c]), c))
        for c in order[:missing]:
            take[c] += 1
    # Index bookkeeping in numpy (no intra-op threads); the random draws from one seeded torch generator.
    by_class = np.argsort(lab, kind="stable")  # each class's indices, ascending, one after another
    bounds = np.concatenate([[0], np.cumsum(counts)])
    generator = torch.Generator().manual_seed(_seed_from("val-split", seed))
    val_parts = []
    for c in range(len(counts)):
        if take[c] > 0:
            members = by_class[bounds[c]:bounds[c + 1]]
            perm = torch.randperm(len(members), generator=generator).numpy()
            val_parts.append(members[perm[: int(take[c])]])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return torch.from_numpy(np.flatnonzero(mask).astype(np.int64)), torch.from_numpy(val.astype(np.int64))


# ----------------------------------------------------------------------------------------------
# Decoding helpers
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Source:
    """One decoded part of a dataset (its whole train or test set) after resizing/channel conversion."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class _Options:
    cache_dir: Path | None
    download: bool
    image_size: int | None
    channels: int


def _file_entry(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return (path, st.st_size, st.st_mtime_ns)


def _list_images(folder: str) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of the image files directly in ``folder``, sorted by name."""
    found = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            if entry.is_file():
                st = entry.stat()
                found.append((entry.name, entry.path, st.st_size, st.st_mtime_ns))
    found.sort()
    return [f[1:] for f in found]


def _subdirs(folder: str) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _fingerprint(entries) -> str:
    h = hashlib.sha256()
    for path, size, mtime in entries:
        h.update(f"{path}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def _tv_decoder():
    """torchvision.io's decoder (libjpeg-turbo/libpng; ~3x faster than PIL on CIFAR-sized JPEGs), or None."""
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:  # torchvision without its image extension (or after the announced removal)
        return None
    return decode_image, ImageReadMode


def _decode_file(path: str, gray: bool) -> torch.Tensor:
    """One image file -> uint8 [C, H, W] (C = 1 if gray else 3)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise SpikeliteError(f"cannot read image file {path}: {exc}") from None
    tv = _tv_decoder()
    img = None
    if tv is not None:
        decode_image, mode = tv
        try:
            img = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8),
                               mode=mode.GRAY if gray else mode.RGB)
            if img.dim() == 4:  # animated GIF: first frame
                img = img[0]
            if img.dtype != torch.uint8:  # 16-bit PNG
                img = (img.float() * (255.0 / torch.iinfo(img.dtype).max)).round_().clamp_(0, 255).to(torch.uint8)
        except (RuntimeError, ValueError):
            img = None  # a format torchvision does not read (BMP, TIFF, PPM...): PIL below
    if img is None:
        img = _decode_pil(path, gray)
    if img.dim() != 3 or img.shape[0] != (1 if gray else 3):
        raise SpikeliteError(f"cannot decode image file {path}: unexpected decoded shape {tuple(img.shape)}")
    return img


def _decode_pil(path: str, gray: bool) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if gray else "RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise SpikeliteError(f"cannot decode image file {path}: {exc}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _decode_files(paths: list[str], gray: bool, image_size: int | None) -> torch.Tensor:
    """Decode image files into one uint8 [N, C, H, W] tensor; images of mixed sizes need ``image_size``
    (they are each resized to it; uniform ones are resized later, in one batched pass)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they still work.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        imgs = [_decode_file(path, gray) for path in paths]
    sizes = {tuple(t.shape[1:]) for t in imgs}
    if len(sizes) > 1:
        first = tuple(imgs[0].shape[1:])
        odd = next(i for i, t in enumerate(imgs) if tuple(t.shape[1:]) != first)
        if image_size is None:
            raise SpikeliteError(f"images differ in size: {paths[0]} is {first[0]}x{first[1]}, {paths[odd]} is "
                                 f"{imgs[odd].shape[1]}x{imgs[odd].shape[2]}; pass image_size to resize them all")
        imgs = [_resize(t.unsqueeze(0), image_size)[0] for t in imgs]
    out = torch.stack(imgs) if imgs else torch.zeros((0, 1 if gray else 3, 1, 1), dtype=torch.uint8)
    log.info("decoded %d images in %.1f s", len(paths), time.perf_counter() - t0)
    return out


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of uint8 [N, C, h, w] to [N, C, size, size]."""
    if size is None or (images.shape[2] == size and images.shape[3] == size):
        return images
    n, c = images.shape[:2]
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    step = max(1, (1 << 22) // max(1, c * size * size))
    for i in range(0, n, step):
        chunk = images[i:i + step].float()
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i:i + step] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _pixel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std (population) of uint8 images, in [0, 1] scale (from histograms)."""
    c = images.shape[1]
    count = images.shape[0] * images.shape[2] * images.shape[3]
    if count == 0:
        return (0.5,) * c, (0.25,) * c
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for ch in range(c):
        hist = torch.bincount(images[:, ch].reshape(-1), minlength=256).double() / count
        mean = float((hist * levels).sum())
        var = max(0.0, float((hist * levels * levels).sum()) - mean * mean)
        means.append(round(mean, 6))
        stds.append(round(max(math.sqrt(var), 1e-3), 6))
    return tuple(means), tuple(stds)


def _to_channels(images: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    raise SpikeliteError(f"{what} has {c}-channel images; channels={channels} is not available for it")


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------


def _require_online(url: str, what: str, root: Path) -> None:
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=10):
            pass
    except OSError as exc:
        raise SpikeliteError(f"cannot download {what}: {parsed.hostname} is unreachable from this machine ({exc}); "
                             f"put the files under {root} yourself (see docs/data.md for the layout)") from None


def _download(key: str, root: Path) -> None:
    import torchvision

    if key in ("cifar10", "cifar100"):
        cls = torchvision.datasets.CIFAR10 if key == "cifar10" else torchvision.datasets.CIFAR100
        url = cls.url

        def fetch():
            cls(str(root), train=True, download=True)
            cls(str(root), train=False, download=True)
    elif key == "fashion-mnist":
        url = torchvision.datasets.FashionMNIST.mirrors[0]

        def fetch():
            torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
    elif key == "tinyimagenet":
        url = _TINY_URL

        def fetch():
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(_TINY_URL, str(root), md5=_TINY_MD5)
    else:  # pragma: no cover - guarded by the callers
        raise SpikeliteError(f"{key} cannot be downloaded")
    _require_online(url, key, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch()
    except SpikeliteError:
        raise
    except Exception as exc:
        raise SpikeliteError(f"downloading {key} into {root} failed: {exc}") from None


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------


def _root_dir(key: str, root, expected: str, allow_missing: bool = False) -> Path:
    if root is None:
        raise SpikeliteError(f"{key}: no dataset root given; pass the folder that holds {expected}")
    if not isinstance(root, (str, os.PathLike)):
        raise SpikeliteError(f"{key}: root must be a path, got {root!r}")
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise SpikeliteError(f"{key}: dataset root {path} is a file, not a folder holding {expected}")
    if not path.exists() and not allow_missing:
        raise SpikeliteError(f"{key}: dataset root {path} does not exist (expected a folder holding {expected})")
    return path.resolve() if path.exists() else path.absolute()


def _folder_part(key: str, root: Path, part: str, opts: _Options, fixed_classes=None,
                 class_names: list[str] | None = None, gray: bool = False) -> _Source:
    """``root/<part>/<class>/<image>`` (or ``root/<class>/<image>`` when part is None-like)."""
    part_dir = root / part if part else root
    if not part_dir.is_dir():
        present = ", ".join(_subdirs(str(root))) or "nothing"
        raise SpikeliteError(f"{key}: no {part}/ folder in {root} (expected {root}/{part}/<class>/<image>; "
                             f"found: {present})")
    names = _subdirs(str(part_dir))
    if not names:
        raise SpikeliteError(f"{key}: {part_dir} has no class sub-folders (expected {part_dir}/<class>/<image>)")
    if fixed_classes is not None:
        classes = list(fixed_classes)
    elif class_names is not None:
        classes = list(class_names)
    else:
        classes = names
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise SpikeliteError(f"{key}: {part_dir} has class folders {unknown[:5]} that are not among the dataset's "
                             f"classes ({', '.join(classes[:12])}{', ...' if len(classes) > 12 else ''})")
    index = {c: i for i, c in enumerate(classes)}
    entries, labels = [], []
    for n in names:
        files = _list_images(str(part_dir / n))
        if not files:
            raise SpikeliteError(f"{key}: class folder {part_dir / n} holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
        entries.extend(files)
        labels.extend([index[n]] * len(files))
    ident = {"dataset": key, "part": part or "train", "layout": "imagefolder", "path": str(part_dir),
             "classes": classes}

    def decode():
        images = _decode_files([e[0] for e in entries], gray, opts.image_size)
        return _finish(images, labels, classes, opts, f"{key} ({part_dir})")

    return _cached_source(ident, _fingerprint(entries), opts, decode)


def _find_cifar_pickles(key: str, root: Path) -> Path | None:
    base = "cifar-10-batches-py" if key == "cifar10" else "cifar-100-python"
    if (root / base).is_dir():
        return root / base
    if key == "cifar10" and ((root / "batches.meta").is_file() or (root / "data_batch_1").is_file()
                             or (root / "test_batch").is_file()):
        return root
    if key == "cifar100" and ((root / "meta").is_file() or (root / "train").is_file() or (root / "test").is_file()):
        return root
    return None


def _unpickle(path: Path, key: str) -> dict:
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise SpikeliteError(f"{key}: cannot read {path} as a CIFAR pickle: {exc}") from None
    if not isinstance(entry, dict):
        raise SpikeliteError(f"{key}: {path} is not a CIFAR pickle (expected a dict, got {type(entry).__name__})")
    return entry


def _cifar_pickles(key: str, folder: Path, part: str, opts: _Options) -> _Source:
    if key == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if part == "train" else ["test_batch"]
        meta_name, names_key, label_key, default_classes = "batches.meta", "label_names", "labels", CIFAR10_CLASSES
        layout = "torchvision's cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)"
    else:
        files = [part]
        meta_name, names_key, label_key, default_classes = "meta", "fine_label_names", "fine_labels", CIFAR100_CLASSES
        layout = "torchvision's cifar-100-python/ (train, test, meta)"
    paths = [folder / f for f in files]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise SpikeliteError(f"{key}: {folder} lacks {', '.join(missing)} (expected {layout})")
    meta = folder / meta_name
    entries = [_file_entry(str(p)) for p in paths] + ([_file_entry(str(meta))] if meta.is_file() else [])
    ident = {"dataset": key, "part": part, "layout": "pickle", "path": str(folder)}

    def decode():
        classes = list(default_classes)
        if meta.is_file():
            names = _unpickle(meta, key).get(names_key)
            if not isinstance(names, list) or len(names) != len(default_classes):
                raise SpikeliteError(f"{key}: {meta} has no list of {len(default_classes)} '{names_key}'")
            classes = [str(n) for n in names]
        datas, labels = [], []
        for p in paths:
            entry = _unpickle(p, key)
            data, lab = entry.get("data"), entry.get(label_key)
            if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or lab is None \
                    or len(lab) != data.shape[0]:
                raise SpikeliteError(f"{key}: {p} is not a CIFAR batch (expected 'data' uint8 [n, 3072] and "
                                     f"'{label_key}' [n])")
            datas.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(lab, dtype=np.int64))
        lab = np.concatenate(labels)
        if lab.size and (lab.min() < 0 or lab.max() >= len(classes)):
            raise SpikeliteError(f"{key}: labels in {folder} fall outside 0..{len(classes) - 1}")
        images = torch.from_numpy(np.concatenate(datas))
        return _finish(images, lab, classes, opts, key)

    return _cached_source(ident, _fingerprint(entries), opts, decode)


def _load_cifar(key: str, root, part: str, opts: _Options) -> _Source:
    base = "cifar-10-batches-py" if key == "cifar10" else "cifar-100-python"
    expected = f"{base}/ (torchvision's pickles) or train/ and test/ class folders"
    path = _root_dir(key, root, expected, allow_missing=opts.download)
    if opts.channels != 3:
        raise SpikeliteError(f"{key} has RGB images; channels={opts.channels} is not available for it")
    folder = _find_cifar_pickles(key, path) if path.is_dir() else None
    if folder is None and path.is_dir() and ((path / "train").is_dir() or (path / "test").is_dir()):
        fixed = CIFAR10_CLASSES if key == "cifar10" else CIFAR100_CLASSES
        return _folder_part(key, path, part, opts, fixed_classes=fixed)
    if folder is None and opts.download:
        _download(key, path)
        folder = path / base
    if folder is None:
        found = ", ".join(sorted(os.listdir(path))[:10]) or "an empty folder"
        raise SpikeliteError(f"{key}: {path} does not hold {expected} (found: {found}); pass download=True to "
                             f"fetch it where the internet is reachable")
    return _cifar_pickles(key, folder, part, opts)


def _tiny_base(root: Path) -> Path | None:
    for base in (root / "tiny-imagenet-200", root):
        if ((base / "wnids.txt").is_file() or (base / "train").is_dir()
                or (base / "val" / "val_annotations.txt").is_file()):
            return base
    return None


def _load_tinyimagenet(key: str, root, part: str, opts: _Options) -> _Source:
    expected = "tiny-imagenet-200/ (train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt)"
    path = _root_dir(key, root, expected, allow_missing=opts.download)
    if opts.channels != 3:
        raise SpikeliteError(f"{key} has RGB images; channels={opts.channels} is not available for it")
    base = _tiny_base(path) if path.is_dir() else None
    if base is None and opts.download:
        _download(key, path)
        base = _tiny_base(path)
    if base is None:
        raise SpikeliteError(f"{key}: {path} does not hold {expected}")
    wnids_file = base / "wnids.txt"
    if wnids_file.is_file():
        classes = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
        if not classes:
            raise SpikeliteError(f"{key}: {wnids_file} lists no classes")
    elif (base / "train").is_dir():
        classes = _subdirs(str(base / "train"))
    else:
        raise SpikeliteError(f"{key}: {base} has neither wnids.txt nor train/ to name the classes")
    index = {c: i for i, c in enumerate(classes)}
    entries, labels = [], []  # entries: (path, size, mtime) of the images, in label order
    extra_entries = []  # files that define the split without being images (the annotations)
    if part == "train":
        train = base / "train"
        if not train.is_dir():
            raise SpikeliteError(f"{key}: no train/ folder in {base} (expected train/<wnid>/images/*.JPEG)")
        extra = [d for d in _subdirs(str(train)) if d not in index]
        if extra:
            raise SpikeliteError(f"{key}: {train} has class folders not listed in wnids.txt: {extra[:5]}")
        for wnid in classes:
            folder = train / wnid / "images"
            if not folder.is_dir():
                raise SpikeliteError(f"{key}: missing {folder} (expected train/<wnid>/images/*.JPEG for every "
                                     f"class in wnids.txt)")
            files = _list_images(str(folder))
            if not files:
                raise SpikeliteError(f"{key}: {folder} holds no images")
            entries.extend(files)
            labels.extend([index[wnid]] * len(files))
    else:
        ann = base / "val" / "val_annotations.txt"
        images_dir = base / "val" / "images"
        if not ann.is_file():
            raise SpikeliteError(f"{key}: missing {ann} (the val split, which serves as the test split, needs "
                                 f"val/images/*.JPEG and val/val_annotations.txt)")
        rows = []
        for lineno, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) < 2:
                raise SpikeliteError(f"{key}: {ann}:{lineno}: expected '<file> <wnid> ...', got {line!r}")
            if fields[1] not in index:
                raise SpikeliteError(f"{key}: {ann}:{lineno}: class {fields[1]!r} is not among the "
                                     f"{len(classes)} classes")
            rows.append((fields[0], index[fields[1]]))
        if not rows:
            raise SpikeliteError(f"{key}: {ann} lists no images")
        rows.sort()
        for fname, label in rows:
            file = images_dir / fname
            try:
                entries.append(_file_entry(str(file)))
            except OSError:
                raise SpikeliteError(f"{key}: {ann} lists {fname}, but {file} does not exist") from None
            labels.append(label)
        extra_entries.append(_file_entry(str(ann)))
    ident = {"dataset": key, "part": part, "layout": "tiny-imagenet-200", "path": str(base), "classes": classes}

    def decode():
        images = _decode_files([e[0] for e in entries], False, opts.image_size)
        return _finish(images, labels, classes, opts, key)

    return _cached_source(ident, _fingerprint(entries + extra_entries), opts, decode)


_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST/Fashion-MNIST format), plain or gzip-compressed (by content)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise SpikeliteError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise SpikeliteError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SpikeliteError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise SpikeliteError(f"{path}: IDX header says {dims} ({expected} bytes of data), file has "
                             f"{len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_fashion_mnist(key: str, root, part: str, opts: _Options) -> _Source:
    expected = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte "
                "(plain or .gz)")
    if root is None:
        if not os.path.isdir(FASHION_MNIST_SYSTEM_ROOT):
            raise SpikeliteError(f"{key}: no root given and {FASHION_MNIST_SYSTEM_ROOT} does not exist; pass the "
                                 f"folder holding {expected}, or install Debian's package "
                                 f"(apt-get install dataset-fashion-mnist)")
        root = FASHION_MNIST_SYSTEM_ROOT
    path = _root_dir(key, root, expected, allow_missing=opts.download)
    prefix = "train" if part == "train" else "t10k"
    candidates = [path, path / "FashionMNIST" / "raw", path / "raw", path / "fashion-mnist"]

    def locate():
        for folder in candidates:
            img = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
            lab = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
            if img is not None and lab is not None:
                return img, lab
        return None

    found = locate() if path.is_dir() else None
    if found is None and opts.download:
        _download(key, path)
        found = locate()
    if found is None:
        raise SpikeliteError(f"{key}: {path} does not hold the {part} files of {expected}")
    img_path, lab_path = found
    if opts.channels not in (1, 3):
        raise SpikeliteError(f"{key}: channels must be 1 or 3, got {opts.channels}")
    ident = {"dataset": key, "part": part, "layout": "idx", "path": str(img_path.parent)}

    def decode():
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise SpikeliteError(f"{key}: {img_path} must hold uint8 images [n, h, w], got {images.dtype} "
                                 f"{images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise SpikeliteError(f"{key}: {lab_path} holds {labels.shape} labels for {images.shape[0]} images")
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise SpikeliteError(f"{key}: {lab_path} has labels outside 0..9")
        tensor = torch.from_numpy(images.copy()).unsqueeze(1)
        return _finish(tensor, labels.astype(np.int64), FASHION_MNIST_CLASSES, opts, key)

    return _cached_source(ident, _fingerprint([_file_entry(str(img_path)), _file_entry(str(lab_path))]), opts,
                          decode)


def _load_digits(key: str, root, part: str, opts: _Options) -> _Source:
    if root is not None:
        raise SpikeliteError("digits ships with scikit-learn and takes no dataset root (pass root=None)")
    try:
        import sklearn
        from sklearn.datasets import load_digits
    except ImportError:
        raise SpikeliteError("the digits dataset needs scikit-learn (pip install scikit-learn)") from None
    ident = {"dataset": key, "part": part, "layout": "sklearn", "path": "sklearn.datasets.load_digits"}

    def decode():
        bunch = load_digits()
        images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        labels = torch.as_tensor(bunch.target, dtype=torch.int64)
        train_idx, test_idx = stratified_split(labels, DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED)
        idx = train_idx if part == "train" else test_idx
        tensor = torch.from_numpy(images).unsqueeze(1).index_select(0, idx)
        return _finish(tensor, labels.index_select(0, idx), [str(i) for i in range(10)], opts, key)

    return _cached_source(ident, sklearn.__version__, opts, decode, disk=False)


def _load_imagefolder(key: str, root, part: str, opts: _Options) -> _Source:
    expected = "class sub-folders (<root>/<class>/<image>), or train/ and test/ folders of them"
    path = _root_dir(key, root, expected)
    if opts.download:
        raise SpikeliteError("imagefolder: there is nothing to download; point root at your folder of images")
    if opts.channels not in (1, 3):
        raise SpikeliteError(f"imagefolder: channels must be 1 or 3, got {opts.channels}")
    gray = opts.channels == 1
    split_layout = (path / "train").is_dir() or (path / "test").is_dir()
    if not split_layout:
        if part == "test":
            raise SpikeliteError(f"imagefolder: {path} has no test/ folder (its class folders are all training "
                                 f"data); use split 'val' or lay it out as train/ and test/")
        return _folder_part(key, path, "", opts, gray=gray)
    train_classes = _subdirs(str(path / "train")) if (path / "train").is_dir() else None
    return _folder_part(key, path, part, opts, class_names=train_classes, gray=gray)


_LOADERS = {
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "tinyimagenet": _load_tinyimagenet,
    "fashion-mnist": _load_fashion_mnist,
    "digits": _load_digits,
    "imagefolder": _load_imagefolder,
}
_DEFAULT_SIZE = {"digits": 32}
_DEFAULT_CHANNELS = {"fashion-mnist": 1}


def _canonical(name) -> str:
    if not isinstance(name, str):
        raise SpikeliteError(f"dataset name must be a string, one of {', '.join(DATASETS)}; got {name!r}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise SpikeliteError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return key


def load_split(name: str, root: str | None, split: str, *, val_size: float | int | None = None, seed: int = 0,
               cache_dir: str | None = None, download: bool = False, image_size: int | None = None,
               channels: int | None = None) -> ImageData:
    """Load one split of a dataset as an in-memory :class:`ImageData`.

    Args:
        name: one of :data:`DATASETS` (``cifar10``, ``cifar100``, ``tinyimagenet``, ``fashion-mnist``,
            ``digits``, ``imagefolder``).
        root: the dataset folder (see the module docstring for each layout); None for ``digits``, and
            for ``fashion-mnist`` None means Debian's ``/usr/share/datasets/fashion-mnist``.
        split: ``train`` or ``val`` (the two disjoint parts of the original training set) or ``test``
            (read only when asked for; Tiny ImageNet's val folder, digits' fixed held-out 20 %).
        val_size: the validation part, a fraction in [0, 1) or a count (default 10 %: 5,000 of
            CIFAR-10/100's 50,000, i.e. 45k/5k). Ignored for ``test``.
        seed: seeds the stratified train/val split (:func:`stratified_split`).
        cache_dir: where decoded tensors are cached (``<cache_dir>/data``); None for
            :func:`default_cache_dir`, ``"off"`` to disable the disk cache.
        download: fetch cifar10, cifar100, fashion-mnist or tinyimagenet into ``root`` when they are
            not there yet (needs the internet; a clear error otherwise).
        image_size: resize every image to ``image_size`` x ``image_size`` (bilinear, antialiased when
            shrinking). Default: the native size, except digits (32).
        channels: 1 or 3; grey datasets replicate their channel to 3 (digits defaults to 3,
            fashion-mnist to 1); imagefolder decodes to grey for 1. RGB datasets take only 3.
    """
    key = _canonical(name)
    if split not in SPLITS:
        raise SpikeliteError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    seed = _check_int("seed", seed)
    if image_size is None:
        image_size = _DEFAULT_SIZE.get(key)
    else:
        image_size = _check_int("image_size", image_size, minimum=1)
    if channels is None:
        channels = _DEFAULT_CHANNELS.get(key, 3)
    elif isinstance(channels, bool) or channels not in (1, 3):
        raise SpikeliteError(f"channels must be 1 or 3, got {channels!r}")
    opts = _Options(cache_dir=_resolve_cache_dir(cache_dir), download=bool(download), image_size=image_size,
                    channels=int(channels))
    part = "test" if split == "test" else "train"
    src = _LOADERS[key](key, root, part, opts)
    if len(src.labels) == 0:
        raise SpikeliteError(f"{key}: the {part} part at {root} holds no images")
    mean, std = _split_stats(key, root, part, src, opts)
    if split == "test":
        images, labels = src.images.clone(), src.labels.clone()  # never alias the cached tensors
    else:
        _val_count(val_size, len(src.labels), key)  # a bad val_size is reported with the dataset's name
        train_idx, val_idx = stratified_split(src.labels, val_size, seed)
        idx = train_idx if split == "train" else val_idx
        if idx.numel() == 0:
            raise SpikeliteError(f"{key}: val_size={val_size!r} leaves the validation split empty")
        images, labels = src.images.index_select(0, idx), src.labels.index_select(0, idx)
    return ImageData(images=images, labels=labels, classes=list(src.classes), name=key, mean=mean, std=std)


def _split_stats(key: str, root, part: str, src: _Source, opts: _Options):
    """Normalisation statistics, the same for every split of one dataset configuration."""
    if key in _STANDARD_STATS:
        mean, std = _STANDARD_STATS[key]
        if len(mean) == 1 and opts.channels == 3:
            mean, std = mean * 3, std * 3
        return mean, std
    if part == "train":
        return src.pixel_mean, src.pixel_std
    # imagefolder / digits test split: use the training part's statistics when it exists.
    if key == "digits" or (Path(root).expanduser() / "train").is_dir():
        train = _LOADERS[key](key, root, "train", opts)
        return train.pixel_mean, train.pixel_std
    warnings.warn(f"{key}: {root} has no train/ folder; normalising its test split with its own statistics "
                  f"(pass the training run's mean/std with dataclasses.replace to match training)", stacklevel=3)
    return src.pixel_mean, src.pixel_std


# ----------------------------------------------------------------------------------------------
# Augmentation and batching
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Augment:
    """Batched training augmentation, applied on the device by :class:`BatchLoader`.

    ``crop_padding``: random crop back to the image size after zero-padding every side by this many
    pixels (0: off). ``flip``: horizontal flip with probability 1/2. ``cutout``: zero (after
    normalisation, i.e. the mean colour) one ``cutout`` x ``cutout`` square at a random centre,
    clipped at the border (0: off).
    """

    flip: bool = True
    crop_padding: int = 4
    cutout: int = 0

    def __post_init__(self):
        if not isinstance(self.flip, (bool, np.bool_)):
            raise SpikeliteError(f"Augment.flip must be True or False, got {self.flip!r}")
        self.flip = bool(self.flip)
        self.crop_padding = _check_int("Augment.crop_padding", self.crop_padding, minimum=0)
        self.cutout = _check_int("Augment.cutout", self.cutout, minimum=0)

    @property
    def enabled(self) -> bool:
        return self.flip or self.crop_padding > 0 or self.cutout > 0

    @property
    def name(self) -> str:
        """Canonical spec string; ``Augment.from_name(a.name) == a``."""
        parts = (["flip"] if self.flip else []) + ([f"crop{self.crop_padding}"] if self.crop_padding else []) \
            + ([f"cutout{self.cutout}"] if self.cutout else [])
        return "+".join(parts) or "none"

    @classmethod
    def from_name(cls, spec: "str | Augment | None") -> "Augment":
        """Parse ``none``, ``standard`` (= flip+crop4), or ``+``/``,``-joined parts: ``flip``, ``crop``
        (4 px), ``crop<N>``, ``cutout`` (16 px), ``cutout<N>`` (``crop=N``/``cutout=N`` also work).
        E.g. ``standard+cutout16``, ``flip``, ``crop2``."""
        if spec is None:
            return cls(flip=False, crop_padding=0, cutout=0)
        if isinstance(spec, Augment):
            return dataclasses.replace(spec)
        if not isinstance(spec, str):
            raise SpikeliteError(f"augmentation must be a name like 'standard' or 'flip+crop4', got {spec!r}")
        flip, crop, cutout = False, 0, 0
        tokens = [t.strip().lower() for t in spec.replace(",", "+").split("+")]
        if not any(tokens):
            raise SpikeliteError("empty augmentation name; use 'none', 'standard' or e.g. 'flip+crop4'")
        for token in tokens:
            tok = token.replace("=", "").replace("_", "")
            if tok in ("none", "off", ""):
                continue
            if tok in ("standard", "default"):
                flip, crop = True, crop or 4
            elif tok in ("flip", "hflip"):
                flip = True
            elif tok.startswith("crop") and (tok[4:].isdigit() or tok == "crop"):
                crop = int(tok[4:]) if tok[4:] else 4
            elif tok.startswith("cutout") and (tok[6:].isdigit() or tok == "cutout"):
                cutout = int(tok[6:]) if tok[6:] else 16
            else:
                raise SpikeliteError(f"unknown augmentation {token!r} in {spec!r}; use 'none', 'standard', or "
                                     f"'+'-joined parts: flip, crop<N>, cutout<N> (e.g. 'flip+crop4+cutout16')")
        return cls(flip=flip, crop_padding=crop, cutout=cutout)


def default_augment(name: str, image_size: int | None = None) -> Augment:
    """The usual training augmentation for a dataset: flip + crop with padding size/8 (4 px at 32x32,
    8 px for Tiny ImageNet's 64x64); digits are not flipped (a mirrored digit is not a digit) and get a
    size/16 crop padding (2 px at 32x32, half a pixel of the original 8x8)."""
    key = _canonical(name)
    size = image_size or {"tinyimagenet": 64, "fashion-mnist": 28}.get(key, 32)
    pad = max(1, size // 8)
    if key == "digits":
        return Augment(flip=False, crop_padding=max(1, size // 16))
    return Augment(flip=True, crop_padding=pad)


@contextlib.contextmanager
def _single_cpu_thread(active: bool):
    """Run a batch's gather/augment/normalise ops on one CPU thread, restoring the thread count at once.

    These ops are small and memory-bound: splitting them over OpenMP threads makes them slower on an
    idle machine and 20-50x slower when another process holds the cores (the team's shared 2-core
    machine measured 0.26 s vs 18 s per CIFAR epoch); see docs/data.md.
    """
    prev = torch.get_num_threads() if active else 1
    if prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


class BatchLoader:
    """Mini-batches of an :class:`ImageData` on a device, augmented and normalised with tensor ops.

    The uint8 images are copied to ``device`` once; each batch is gathered there, augmented
    (:class:`Augment`), converted to float32 and normalised with the data's mean/std. Epoch ``e``'s
    order (``shuffle``) comes from a CPU generator seeded from ``(seed, e)``, its augmentation from one
    seeded from ``(seed, e, rank)`` — never from global RNG state — so a resumed run that calls
    :meth:`set_epoch` reproduces it exactly, on any device. Call ``set_epoch(e)`` before each epoch
    (otherwise every pass repeats epoch 0). With ``world_size > 1`` the epoch's order is cut to a
    multiple of ``world_size`` (the last ``N mod world_size`` samples of that order are skipped) and
    rank ``r`` takes every ``world_size``-th sample from position ``r``: disjoint, equal-size shards.
    """

    def __init__(self, data: ImageData, batch_size: int, *, shuffle: bool = False, augment: Augment | None = None,
                 device: str | torch.device = "cpu", seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        if not isinstance(data, ImageData):
            raise SpikeliteError(f"BatchLoader needs an ImageData (from load_split), got {type(data).__name__}")
        self.data = data
        self.batch_size = _check_int("batch_size", batch_size, minimum=1)
        self.seed = _check_int("seed", seed)
        self.world_size = _check_int("world_size", world_size, minimum=1)
        self.rank = _check_int("rank", rank, minimum=0)
        if self.rank >= self.world_size:
            raise SpikeliteError(f"rank {self.rank} is outside 0..{self.world_size - 1} (world_size {self.world_size})")
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if isinstance(augment, str):
            augment = Augment.from_name(augment)
        elif augment is not None and not isinstance(augment, Augment):
            raise SpikeliteError(f"augment must be an Augment, a name like 'standard', or None; got {augment!r}")
        # A private copy: changing the caller's Augment later cannot change this loader.
        self.augment = dataclasses.replace(augment) if augment is not None and augment.enabled else None
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise SpikeliteError(f"unknown device {device!r}: {exc}") from None
        n = len(data)
        if n == 0:
            raise SpikeliteError(f"{data.name}: the split holds no images")
        if n // self.world_size == 0:
            raise SpikeliteError(f"{data.name}: {n} images cannot be shared among {self.world_size} ranks")
        self.epoch = 0
        _, c, h, w = data.images.shape
        self._shape = (c, h, w)
        try:
            self._images = data.images.reshape(n, c * h * w).to(self.device).contiguous()
            self._labels = data.labels.to(self.device)
        except (RuntimeError, AssertionError) as exc:  # e.g. "cuda" on a machine without CUDA
            raise SpikeliteError(f"cannot put {data.name} on device {self.device}: {exc}") from None
        mean = torch.tensor(data.mean, dtype=torch.float32)
        std = torch.tensor(data.std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std)).view(1, c, 1, 1).to(self.device)
        self._shift = (mean / std).view(1, c, 1, 1).to(self.device)
        if self.augment is not None and self.augment.crop_padding:
            p = self.augment.crop_padding
            hp, wp = h + 2 * p, w + 2 * p
            # Offset of row y of channel c inside one padded image, for the window gather in _crop.
            rows = torch.arange(c).view(c, 1) * (hp * wp) + torch.arange(h).view(1, h) * wp
            self._row_offsets = rows.reshape(1, c * h).to(self.device)
        self._ar_h = torch.arange(h, device=self.device)
        self._ar_w = torch.arange(w, device=self.device)

    # -- epoch bookkeeping ------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces."""
        self.epoch = _check_int("epoch", epoch, minimum=0)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return len(self.data) // self.world_size if self.world_size > 1 else len(self.data)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's sample indices for ``epoch`` (default: the current one), in batch order (CPU)."""
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch, minimum=0)
        n = len(self.data)
        if self.shuffle:
            gen = torch.Generator().manual_seed(_seed_from("order", self.seed, epoch))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            order = order[: self.num_samples * self.world_size][self.rank::self.world_size]
        return order

    def augment_params(self, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """The random augmentation parameters of this rank's samples for ``epoch`` (CPU tensors, in batch
        order): ``dy``/``dx`` crop offsets in [0, 2·pad], ``flip`` bools, ``cy``/``cx`` cutout centres."""
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch, minimum=0)
        aug, m = self.augment, self.num_samples
        params: dict[str, torch.Tensor] = {}
        if aug is None:
            return params
        _, h, w = self._shape
        gen = torch.Generator().manual_seed(_seed_from("augment", self.seed, epoch, self.rank))
        if aug.crop_padding:
            params["dy"] = torch.randint(0, 2 * aug.crop_padding + 1, (m,), generator=gen)
            params["dx"] = torch.randint(0, 2 * aug.crop_padding + 1, (m,), generator=gen)
        if aug.flip:
            params["flip"] = torch.randint(0, 2, (m,), generator=gen).bool()
        if aug.cutout:
            params["cy"] = torch.randint(0, h, (m,), generator=gen)
            params["cx"] = torch.randint(0, w, (m,), generator=gen)
        return params

    # -- batches ------------------------------------------------------------------------------

    def _crop(self, xb: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """Per-sample crop of the zero-padded batch: one index_select of image rows from an overlapping
        strided view of the padded buffer (each row of the output is a contiguous run of W pixels)."""
        b = xb.shape[0]
        c, h, w = self._shape
        p = self.augment.crop_padding
        hp, wp = h + 2 * p, w + 2 * p
        padded = xb.new_zeros((b, c, hp, wp))
        padded[:, :, p:p + h, p:p + w] = xb
        flat = padded.view(-1)
        windows = flat.as_strided((flat.numel() - w + 1, w), (1, 1))
        start = torch.arange(b, device=xb.device) * (c * hp * wp) + dy * wp + dx
        rows = (start.view(b, 1) + self._row_offsets).view(-1)
        return windows.index_select(0, rows).view(b, c, h, w)

    def _cutout(self, x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
        _, h, w = self._shape
        s = self.augment.cutout
        y0 = (cy - s // 2).view(-1, 1)
        x0 = (cx - s // 2).view(-1, 1)
        rows = (self._ar_h.view(1, h) >= y0) & (self._ar_h.view(1, h) < y0 + s)
        cols = (self._ar_w.view(1, w) >= x0) & (self._ar_w.view(1, w) < x0 + s)
        mask = rows.view(-1, 1, h, 1) & cols.view(-1, 1, 1, w)
        return x.masked_fill_(mask, 0.0)

    def _batch(self, bidx: torch.Tensor, params: dict[str, torch.Tensor], start: int, stop: int):
        c, h, w = self._shape
        xb = self._images.index_select(0, bidx).view(-1, c, h, w)
        if "dy" in params:
            xb = self._crop(xb, params["dy"][start:stop], params["dx"][start:stop])
        if "flip" in params:
            xb = torch.where(params["flip"][start:stop].view(-1, 1, 1, 1), xb.flip(3), xb)
        x = xb.float().mul_(self._scale).sub_(self._shift)
        if "cy" in params:
            x = self._cutout(x, params["cy"][start:stop], params["cx"][start:stop])
        return x, self._labels.index_select(0, bidx)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices().to(self.device)
        params = {k: v.to(self.device) for k, v in self.augment_params().items()}
        m, bs = idx.numel(), self.batch_size
        for start in range(0, m, bs):
            stop = min(start + bs, m)
            if self.drop_last and stop - start < bs:
                break
            with _single_cpu_thread(self.device.type == "cpu"):
                batch = self._batch(idx[start:stop], params, start, stop)
            yield batch  # outside the single-thread scope: the model runs with all threads

    def __repr__(self) -> str:
        aug = self.augment.name if self.augment else "none"
        return (f"BatchLoader({self.data.name}, n={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, augment={aug}, device={self.device}, rank={self.rank}/{self.world_size})")
