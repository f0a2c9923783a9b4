"""Every dataset's on-disk layout, the download where there is one, and :func:`load_split`."""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import pickle
import socket
import urllib.parse
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import SpikeliteError
from .cache import _cached_source, _finish, _resolve_cache_dir
from .decode import _decode_files, _file_entry, _fingerprint, _list_images, _Options, _Source, _subdirs
from .images import (
    _ALIASES,
    _DIGITS_TEST_SEED,
    _STANDARD_STATS,
    _TINY_MD5,
    _TINY_URL,
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    DATASETS,
    DIGITS_TEST_FRACTION,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SYSTEM_ROOT,
    IMAGE_EXTENSIONS,
    SPLITS,
    ImageData,
    _check_int,
    _val_count,
    stratified_split,
)

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


_TINY_NATIVE = 64  # every Tiny ImageNet image is 64x64; any other is resized to it, with a warning
_TINY_NAME_FILES = ("tinyimagenet-classes.tsv", "words.txt")  # "<wnid>\t<names>" lines
_TINY_EXPECTED = ("train/<wnid>/*.JPEG (ImageFolder; its test part test/<wnid>/*.JPEG beside train/) or the official "
                  "tiny-imagenet-200/ (wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
                  "val/val_annotations.txt)")


def _labelled_test_dirs(base: Path) -> list[str]:
    """The class folders of ``base/test`` (the official archive's unlabelled ``test/images/`` is none)."""
    test = base / "test"
    names = _subdirs(str(test)) if test.is_dir() else []
    return [] if names == ["images"] else names


def _tiny_base(root: Path) -> Path | None:
    for base in (root / "tiny-imagenet-200", root):
        if ((base / "wnids.txt").is_file() or (base / "train").is_dir()
                or (base / "val" / "val_annotations.txt").is_file() or _labelled_test_dirs(base)):
            return base
    return None


def _tiny_classes(key: str, base: Path) -> list[str]:
    """The wnids, sorted: the class order of both layouts (label i is the i-th wnid in sorted order)."""
    wnids_file = base / "wnids.txt"
    if wnids_file.is_file():
        classes = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
        if not classes:
            raise SpikeliteError(f"{key}: {wnids_file} lists no classes")
        return classes
    if (base / "train").is_dir():
        classes = _subdirs(str(base / "train"))
        if not classes:
            raise SpikeliteError(f"{key}: {base / 'train'} has no class folders (expected train/<wnid>/*.JPEG)")
        return classes
    test = _labelled_test_dirs(base)
    if test:  # a root that holds only the test part: its own folders name the classes
        return test
    raise SpikeliteError(f"{key}: {base} has neither wnids.txt nor train/ to name the classes")


def _tiny_train(key: str, base: Path, classes: list[str]) -> tuple[str, list, list[int]]:
    """The training images of either layout: ``train/<wnid>/images/*`` (official) or ``train/<wnid>/*``."""
    train = base / "train"
    if not train.is_dir():
        raise SpikeliteError(f"{key}: no train/ folder in {base} (expected {_TINY_EXPECTED})")
    known = set(classes)
    extra = [d for d in _subdirs(str(train)) if d not in known]
    if extra:
        raise SpikeliteError(f"{key}: {train} has class folders not listed in wnids.txt: {extra[:5]}")
    found: dict[str, tuple[str, list]] = {}  # wnid -> (layout, files)
    for wnid in classes:
        folder = train / wnid
        nested = _list_images(str(folder / "images")) if (folder / "images").is_dir() else []
        flat = _list_images(str(folder)) if folder.is_dir() else []
        if nested and flat:
            raise SpikeliteError(f"{key}: {folder} holds images both in images/ and directly; keep one layout "
                                 f"(train/<wnid>/images/*.JPEG or train/<wnid>/*.JPEG)")
        if nested or flat:
            found[wnid] = ("tiny-imagenet-200" if nested else "imagefolder", nested or flat)
    layouts = {layout for layout, _ in found.values()}
    if len(layouts) > 1:
        first = {layout: next(w for w, (lay, _) in found.items() if lay == layout) for layout in layouts}
        raise SpikeliteError(f"{key}: {train} mixes two layouts: {train / first['tiny-imagenet-200'] / 'images'} "
                             f"holds the images of its class, {train / first['imagefolder']} holds them directly; "
                             f"use train/<wnid>/images/*.JPEG or train/<wnid>/*.JPEG for every class")
    layout = layouts.pop() if layouts else "imagefolder"
    for wnid in classes:
        if wnid not in found:
            folder = train / wnid
            if layout == "tiny-imagenet-200":
                raise SpikeliteError(f"{key}: missing {folder / 'images'} (expected train/<wnid>/images/*.JPEG "
                                     f"for every class, as the other classes have)")
            raise SpikeliteError(f"{key}: {folder} holds no images (expected train/<wnid>/*.JPEG for every class"
                                 f"{' in wnids.txt' if (base / 'wnids.txt').is_file() else ''}; "
                                 f"{', '.join(IMAGE_EXTENSIONS)})")
    entries, labels = [], []
    for label, wnid in enumerate(classes):
        entries.extend(found[wnid][1])
        labels.extend([label] * len(found[wnid][1]))
    return layout, entries, labels


def _tiny_test_folders(key: str, base: Path, classes: list[str]) -> tuple[list, list[int]]:
    """``test/<wnid>/*``: exactly the training classes, each with at least one image."""
    test = base / "test"
    names = _labelled_test_dirs(base)
    present, known = set(names), set(classes)
    missing, extra = [c for c in classes if c not in present], [n for n in names if n not in known]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} of the {len(classes)} training classes ({', '.join(missing[:5])}"
                         f"{', ...' if len(missing) > 5 else ''})")
        if extra:
            parts.append(f"has {len(extra)} class folders that are not training classes ({', '.join(extra[:5])}"
                         f"{', ...' if len(extra) > 5 else ''})")
        raise SpikeliteError(f"{key}: the test part {test} {' and '.join(parts)}; its class folders must be "
                             f"exactly the training classes (train/ or wnids.txt)")
    entries, labels = [], []
    for label, wnid in enumerate(classes):
        files = _list_images(str(test / wnid))
        if not files:
            raise SpikeliteError(f"{key}: class folder {test / wnid} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        entries.extend(files)
        labels.extend([label] * len(files))
    return entries, labels


def _tiny_val_annotations(key: str, base: Path, classes: list[str]) -> tuple[list, list[int], list]:
    """The official ``val/``: ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``."""
    ann = base / "val" / "val_annotations.txt"
    images_dir = base / "val" / "images"
    index = {c: i for i, c in enumerate(classes)}
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
    entries, labels = [], []
    for fname, label in rows:
        file = images_dir / fname
        try:
            entries.append(_file_entry(str(file)))
        except OSError:
            raise SpikeliteError(f"{key}: {ann} lists {fname}, but {file} does not exist") from None
        labels.append(label)
    return entries, labels, [_file_entry(str(ann))]


def _tiny_class_names(key: str, dirs: list[Path], classes: list[str]) -> list[str]:
    """Each wnid with its WordNet names, ``"n01443537 (goldfish, Carassius auratus)"``, from the first
    ``tinyimagenet-classes.tsv`` / ``words.txt`` in ``dirs`` that names any of the classes; a wnid it does not
    name (or no such file) is the wnid alone. The wnid comes first, so a checkpoint trained with the names
    file matches data without it (:func:`spikelite.checkpoint.checkpoint_data` compares the leading word)."""
    wanted = set(classes)
    for folder in dirs:
        for fname in _TINY_NAME_FILES:
            path = folder / fname
            if not path.is_file():
                continue
            names = {}
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    for line in fh:
                        wnid, sep, name = line.rstrip("\r\n").partition("\t")
                        if sep and wnid.strip() in wanted and name.strip():
                            names[wnid.strip()] = name.strip()
            except OSError as exc:
                raise SpikeliteError(f"{key}: cannot read the class names in {path}: {exc}") from None
            if not names:
                continue  # a file of that name about something else
            out = [f"{c} ({names[c]})" if c in names else c for c in classes]  # the wnid stays the class's key
            unnamed = [c for c in classes if c not in names]
            if unnamed:
                warnings.warn(f"{key}: {path} names {len(names)} of the {len(classes)} classes; the others keep "
                              f"their wnids ({', '.join(unnamed[:5])}{', ...' if len(unnamed) > 5 else ''})",
                              stacklevel=4)
            if len(set(out)) != len(out):
                dup = next(n for n in out if out.count(n) > 1)
                warnings.warn(f"{key}: {path} gives two classes the name {dup!r}; using the wnids as class names",
                              stacklevel=4)
                return list(classes)
            return out
    return list(classes)


def _load_tinyimagenet(key: str, root, part: str, opts: _Options) -> _Source:
    path = _root_dir(key, root, _TINY_EXPECTED, allow_missing=opts.download)
    if opts.channels != 3:
        raise SpikeliteError(f"{key} has RGB images; channels={opts.channels} is not available for it")
    base = _tiny_base(path) if path.is_dir() else None
    if base is None and opts.download:
        _download(key, path)
        base = _tiny_base(path)
    if base is None:
        found = ", ".join(sorted(os.listdir(path))[:10]) if path.is_dir() else "nothing"
        raise SpikeliteError(f"{key}: {path} does not hold {_TINY_EXPECTED} (found: {found or 'an empty folder'})")
    classes = _tiny_classes(key, base)
    extra_entries = []  # files that define the split without being images (the annotations)
    if part == "train":
        layout, entries, labels = _tiny_train(key, base, classes)
    elif _labelled_test_dirs(base):  # test/<wnid>/*.JPEG beside train/ (preferred over the official val/)
        layout = "imagefolder"
        entries, labels = _tiny_test_folders(key, base, classes)
    elif (base / "val" / "val_annotations.txt").is_file():
        layout = "tiny-imagenet-200"
        entries, labels, extra_entries = _tiny_val_annotations(key, base, classes)
    else:
        raise SpikeliteError(f"{key}: {base} has no labelled test images: missing both test/<wnid>/*.JPEG (the "
                             f"ImageFolder layout) and {base / 'val' / 'val_annotations.txt'} with val/images/*.JPEG "
                             f"(the official layout, whose val/ serves as the test split)")
    ident = {"dataset": key, "part": part, "layout": layout, "path": str(base), "classes": classes}

    def decode():
        images = _decode_files([e[0] for e in entries], False, opts.image_size, native=_TINY_NATIVE,
                               what=f"{key} ({base}, {part})")
        return _finish(images, labels, classes, opts, key)

    src = _cached_source(ident, _fingerprint(entries + extra_entries), opts, decode)
    dirs = list(dict.fromkeys([base, base.parent, path, path.parent]))  # beside the data: root or its parent
    names = _tiny_class_names(key, dirs, classes)
    return src if names == src.classes else dataclasses.replace(src, classes=names)


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
_DEFAULT_SIZE = {"digits": 32, "tinyimagenet": _TINY_NATIVE}
_DEFAULT_CHANNELS = {"fashion-mnist": 1}


def canonical_name(name) -> str:
    """The dataset's name as spikelite spells it (aliases and case folded: ``CIFAR-10`` is ``cifar10``)."""
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
            (read only when asked for; for Tiny ImageNet ``test/<wnid>/`` or else the official val folder,
            digits' fixed held-out 20 %).
        val_size: the validation part, a fraction in [0, 1) or a count (default 10 %: 5,000 of
            CIFAR-10/100's 50,000, i.e. 45k/5k). Ignored for ``test``.
        seed: seeds the stratified train/val split (:func:`stratified_split`).
        cache_dir: where decoded tensors are cached (``<cache_dir>/data``); None for
            :func:`default_cache_dir`, ``"off"`` to disable the disk cache.
        download: fetch cifar10, cifar100, fashion-mnist or tinyimagenet into ``root`` when they are
            not there yet (needs the internet; a clear error otherwise).
        image_size: resize every image to ``image_size`` x ``image_size`` (bilinear, antialiased when
            shrinking). Default: the native size, except digits (32); Tiny ImageNet's native size is 64,
            and an image of another size among its files is resized to 64x64 on decoding, with a warning.
        channels: 1 or 3; grey datasets replicate their channel to 3 (digits defaults to 3,
            fashion-mnist to 1); imagefolder decodes to grey for 1. RGB datasets take only 3.
    """
    key = canonical_name(name)
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
