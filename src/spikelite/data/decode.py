"""Decoding image files into tensors: listing, decoding (torchvision, PIL as a fallback), resizing, channels,
pixel statistics."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SpikeliteError
from .images import IMAGE_EXTENSIONS, log

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


def _decode_files(paths: list[str], gray: bool, image_size: int | None, native: int | None = None,
                  what: str = "images") -> torch.Tensor:
    """Decode image files into one uint8 [N, C, H, W] tensor, written in place (no second copy of the set).

    Without ``native``, all images must share one size unless ``image_size`` is given (then each image of
    another size is resized to it; a uniform set is resized later, in one batched pass). With ``native``
    (a dataset whose images are all ``native`` x ``native``, e.g. Tiny ImageNet's 64), an image of any other
    size is resized to it, and a warning says how many were and names the first."""
    t0 = time.perf_counter()
    c = 1 if gray else 3
    if not paths:
        return torch.zeros((0, c, 1, 1), dtype=torch.uint8)
    odd: list[tuple[int, int, int]] = []  # (index, h, w) of the images resized on the way in
    with warnings.catch_warnings():
        # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they still work.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        first = _decode_file(paths[0], gray)
        target = (native, native) if native is not None else tuple(first.shape[1:])
        out = torch.empty((len(paths), c, *target), dtype=torch.uint8)
        for i, path in enumerate(paths):
            img = first if i == 0 else _decode_file(path, gray)
            size = tuple(img.shape[1:])
            if size != target:
                if native is None:
                    if image_size is None:
                        raise SpikeliteError(
                            f"images differ in size: {paths[0]} is {first.shape[1]}x{first.shape[2]}, {path} is "
                            f"{size[0]}x{size[1]}; pass image_size to resize them all")
                    if target != (image_size, image_size):  # from here on every image goes to image_size
                        resized = torch.empty((len(paths), c, image_size, image_size), dtype=torch.uint8)
                        resized[:i] = _resize(out[:i], image_size)
                        out, target = resized, (image_size, image_size)
                else:
                    odd.append((i, size[0], size[1]))
                if size != target:
                    img = _resize(img.unsqueeze(0), target[0])[0]
            out[i] = img
    if odd:
        i, h, w = odd[0]
        msg = (f"{what}: {len(odd)} of {len(paths)} images are not {native}x{native} (first: {paths[i]}, {h}x{w}); "
               f"resized to {native}x{native} (bilinear, antialiased when shrinking)")
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
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
