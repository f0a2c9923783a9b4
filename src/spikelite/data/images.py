"""The datasets' names, classes and statistics, :class:`ImageData` (a split held in memory as a uint8 tensor)
and the seeded, stratified train/val split (:func:`stratified_split`)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import numbers

import numpy as np
import torch

from ..errors import SpikeliteError

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
