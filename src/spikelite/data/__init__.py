"""Image datasets for spikelite: decode once, cache the decoded tensor, batch and augment on tensors.

Every split is one :class:`ImageData` held entirely in memory as a ``uint8 [N, C, H, W]`` tensor with
``int64`` labels. :func:`load_split` reads a dataset from its usual on-disk layout:

* ``cifar10`` / ``cifar100`` — torchvision's pickles (``cifar-10-batches-py/``, ``cifar-100-python/``)
  or an ImageFolder root with ``train/<class>/*`` and ``test/<class>/*`` (class folders named as the
  dataset's classes, e.g. ``airplane`` ... ``truck``).
* ``tinyimagenet`` — the ImageFolder layout ``train/<wnid>/*.JPEG`` (test split: ``test/<wnid>/*.JPEG``
  beside it) or the official ``tiny-imagenet-200/`` (``train/<wnid>/images/*.JPEG``; ``val/images`` with
  ``val/val_annotations.txt`` serves as the test split). Labels follow the sorted wnids; class names come
  from a ``tinyimagenet-classes.tsv`` / ``words.txt`` beside the data when there is one.
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

The package, lowest first: :mod:`.images` (names, classes, statistics, :class:`ImageData`, splits),
:mod:`.decode`, :mod:`.cache`, :mod:`.datasets` (layouts, download, :func:`load_split`), :mod:`.loader`
(augmentation and batching). It imports nothing else of spikelite but the error type.
"""

from __future__ import annotations

from .cache import clear_memory_cache, default_cache_dir
from .datasets import canonical_name, load_split, read_idx
from .images import (CIFAR10_CLASSES, CIFAR100_CLASSES, DATASETS, FASHION_MNIST_CLASSES, FASHION_MNIST_SYSTEM_ROOT,
                     SPLITS, ImageData, stratified_split)
from .loader import Augment, BatchLoader, default_augment

__all__ = [
    "DATASETS",
    "SPLITS",
    "ImageData",
    "Augment",
    "BatchLoader",
    "load_split",
    "canonical_name",
    "stratified_split",
    "default_augment",
    "default_cache_dir",
    "clear_memory_cache",
    "read_idx",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_SYSTEM_ROOT",
]
