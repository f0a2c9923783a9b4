"""spikelite.data: every loader on tiny files in its real on-disk layout, splits, cache, batching."""

import gzip
import os
import pickle
import socket
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from spikelite import SpikeliteError
from spikelite import data as D
from spikelite.data import decode as DD
from spikelite.data import Augment, BatchLoader, ImageData, load_split, stratified_split


def _color(label: int, i: int = 0) -> tuple[int, int, int]:
    """A solid colour that identifies (label, i) even after JPEG compression."""
    return (20 + 40 * (label % 6), 30 + 25 * (i % 8), 200 - 30 * (label // 6))


def _write_image(path, rgb, size=(8, 8), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, rgb)
    if mode == "L":
        img = img.convert("L")
    img.save(path)


# --------------------------------------------------------------------------------------------
# Names, arguments, bad input
# --------------------------------------------------------------------------------------------


def test_unknown_dataset_and_split_are_clear_errors(tmp_path):
    with pytest.raises(SpikeliteError, match="unknown dataset 'mnist'.*cifar10"):
        load_split("mnist", str(tmp_path), "train")
    with pytest.raises(SpikeliteError, match="unknown split 'valid'"):
        load_split("digits", None, "valid")
    with pytest.raises(SpikeliteError, match="val_size"):
        load_split("digits", None, "train", val_size=1.5)
    with pytest.raises(SpikeliteError, match="val_size"):
        load_split("digits", None, "train", val_size=100_000)
    with pytest.raises(SpikeliteError, match="validation split empty"):
        load_split("digits", None, "val", val_size=0)
    with pytest.raises(SpikeliteError, match="image_size"):
        load_split("digits", None, "train", image_size=0)
    with pytest.raises(SpikeliteError, match="channels"):
        load_split("digits", None, "train", channels=2)
    with pytest.raises(SpikeliteError, match="takes no dataset root"):
        load_split("digits", str(tmp_path), "train")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "tinyimagenet", "imagefolder"])
def test_missing_root_names_the_path(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(SpikeliteError, match=f"{name}: dataset root {missing} does not exist"):
        load_split(name, str(missing), "train")
    with pytest.raises(SpikeliteError, match="no dataset root given"):
        load_split(name, None, "train")
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(SpikeliteError, match="is a file"):
        load_split(name, str(afile), "train")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "tinyimagenet", "imagefolder"])
def test_empty_folder_is_a_layout_error(tmp_path, name):
    with pytest.raises(SpikeliteError) as err:
        load_split(name, str(tmp_path), "train")
    assert str(tmp_path) in str(err.value)


def test_download_without_internet_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", offline)
    for name in ("cifar10", "cifar100", "fashion-mnist", "tinyimagenet"):
        with pytest.raises(SpikeliteError, match=f"cannot download {name}: .* is unreachable"):
            load_split(name, str(tmp_path / name), "train", download=True)
    with pytest.raises(SpikeliteError, match="nothing to download"):
        load_split("imagefolder", str(tmp_path), "train", download=True)


# --------------------------------------------------------------------------------------------
# CIFAR pickles (torchvision's layout)
# --------------------------------------------------------------------------------------------


def _cifar_batch(rng, n, label_key, num_classes, start):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [(start + i) % num_classes for i in range(n)]
    return {"batch_label": "x", label_key: labels, "data": data, "filenames": [f"{i}.png" for i in range(n)]}


def _write_cifar10(root, per_batch=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = _cifar_batch(rng, per_batch, "labels", 10, i)
    batches["test_batch"] = _cifar_batch(rng, 30, "labels", 10, 0)
    for name, entry in batches.items():
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": list(D.CIFAR10_CLASSES), "num_vis": 3072}, fh)
    return folder, batches


def test_cifar10_pickles(tmp_path):
    folder, batches = _write_cifar10(tmp_path)
    train = load_split("cifar10", str(tmp_path), "train", val_size=10, cache_dir=str(tmp_path / "c"))
    val = load_split("cifar10", str(tmp_path), "val", val_size=10, cache_dir=str(tmp_path / "c"))
    test = load_split("cifar10", str(folder), "test", cache_dir=str(tmp_path / "c"))  # the batches folder itself
    assert train.images.shape == (90, 3, 32, 32) and train.images.dtype == torch.uint8
    assert len(val) == 10 and val.class_counts() == [1] * 10
    assert (train.name, train.num_classes, train.in_chans, train.image_size) == ("cifar10", 10, 3, 32)
    assert train.classes == list(D.CIFAR10_CLASSES)
    assert train.mean == pytest.approx((0.4914, 0.4822, 0.4465)) and test.std == train.std
    # Pixel layout: a row is 1024 red, 1024 green, 1024 blue values, row-major.
    entry = batches["test_batch"]
    assert torch.equal(test.images, torch.from_numpy(entry["data"].reshape(-1, 3, 32, 32)))
    assert test.labels.tolist() == entry["labels"]
    # train + val together are exactly the 100 training images (as multisets of (image, label)).
    all_train = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    got = torch.cat([train.images, val.images]).reshape(100, -1).numpy()
    assert sorted(map(bytes, got)) == sorted(map(bytes, all_train))


def test_cifar10_pickles_missing_batch(tmp_path):
    folder, _ = _write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(SpikeliteError, match="lacks data_batch_3"):
        load_split("cifar10", str(tmp_path), "train")
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(SpikeliteError, match="cannot read .*test_batch"):
        load_split("cifar10", str(tmp_path), "test")


def test_cifar100_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    train = _cifar_batch(rng, 200, "fine_labels", 100, 0)
    test = _cifar_batch(rng, 100, "fine_labels", 100, 7)
    for name, entry in (("train", train), ("test", test)):
        entry["coarse_labels"] = [0] * len(entry["fine_labels"])
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": list(D.CIFAR100_CLASSES), "coarse_label_names": ["x"] * 20}, fh)
    tr = load_split("cifar100", str(tmp_path), "train", val_size=0.5, cache_dir="off")
    va = load_split("cifar100", str(tmp_path), "val", val_size=0.5, cache_dir="off")
    te = load_split("cifar100", str(tmp_path), "test", cache_dir="off")
    assert (len(tr), len(va), len(te), tr.num_classes) == (100, 100, 100, 100)
    assert va.class_counts() == [1] * 100
    assert tr.classes[0] == "apple" and tr.classes[-1] == "worm"
    assert te.labels.tolist() == test["fine_labels"]
    assert torch.equal(te.images[5], torch.from_numpy(test["data"][5].reshape(3, 32, 32)))


# --------------------------------------------------------------------------------------------
# CIFAR-10 as an ImageFolder (the team's real data) and generic imagefolder
# --------------------------------------------------------------------------------------------


def _write_folder(root, classes, per_class, size=(8, 8), ext="png", offset=0):
    for label, name in enumerate(classes):
        for i in range(per_class):
            _write_image(root / name / f"{i:04d}.{ext}", _color(label + offset, i), size)


def test_cifar10_imagefolder_maps_class_names_to_standard_indices(tmp_path):
    _write_folder(tmp_path / "train", ["cat", "truck", "airplane"], 6, size=(32, 32))
    _write_folder(tmp_path / "test", ["truck"], 2, size=(32, 32))
    train = load_split("cifar10", str(tmp_path), "train", val_size=3, cache_dir="off")
    test = load_split("cifar10", str(tmp_path), "test", cache_dir="off")
    assert train.num_classes == 10 and sorted(set(train.labels.tolist())) == [0, 3, 9]
    assert test.labels.tolist() == [9, 9]
    assert train.images.shape[1:] == (3, 32, 32)
    # The first training image of "airplane" (label 0; third folder written) is its 0000.png.
    first = train.images[train.labels == 0][0]
    assert first[:, 0, 0].tolist() == list(_color(2, 0))
    (tmp_path / "train" / "dragon").mkdir()
    _write_image(tmp_path / "train" / "dragon" / "0.png", (1, 2, 3), (32, 32))
    with pytest.raises(SpikeliteError, match="'dragon'.*not among the dataset's classes"):
        load_split("cifar10", str(tmp_path), "train", cache_dir="off")


def test_imagefolder_flat_and_split_layouts(tmp_path):
    flat = tmp_path / "flat"
    _write_folder(flat, ["b_dog", "a_cat"], 5)
    (flat / "notes.txt").write_text("ignored")
    (flat / "a_cat" / "readme.md").write_text("ignored")
    tr = load_split("imagefolder", str(flat), "train", val_size=2, cache_dir="off")
    va = load_split("imagefolder", str(flat), "val", val_size=2, cache_dir="off")
    assert tr.classes == ["a_cat", "b_dog"] and len(tr) == 8 and va.class_counts() == [1, 1]
    # Stats come from the whole training folder, so train and val share them.
    assert tr.mean == va.mean and len(tr.mean) == 3
    with pytest.raises(SpikeliteError, match="no test/ folder"):
        load_split("imagefolder", str(flat), "test")

    split = tmp_path / "split"
    _write_folder(split / "train", ["x", "y", "z"], 4)
    _write_folder(split / "test", ["z"], 3, offset=2)
    te = load_split("imagefolder", str(split), "test", cache_dir="off")
    tr = load_split("imagefolder", str(split), "train", val_size=0, cache_dir="off")
    assert te.classes == ["x", "y", "z"] and te.labels.tolist() == [2, 2, 2]  # indices follow train/
    assert te.mean == tr.mean  # the test split is normalised with the training statistics
    assert te.images[1, :, 0, 0].tolist() == list(_color(2, 1))


def test_imagefolder_bad_layouts(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpikeliteError, match=f"{empty} has no class sub-folders"):
        load_split("imagefolder", str(empty), "train")
    (empty / "cls").mkdir()
    with pytest.raises(SpikeliteError, match="class folder .*cls holds no images"):
        load_split("imagefolder", str(empty), "train")
    mixed = tmp_path / "mixed"
    _write_image(mixed / "a" / "0.png", (1, 2, 3), (8, 8))
    _write_image(mixed / "a" / "1.png", (1, 2, 3), (6, 10))
    _write_image(mixed / "b" / "0.png", (1, 2, 3), (8, 8))
    with pytest.raises(SpikeliteError, match="images differ in size.*pass image_size"):
        load_split("imagefolder", str(mixed), "train", val_size=0, cache_dir="off")
    resized = load_split("imagefolder", str(mixed), "train", val_size=0, cache_dir="off", image_size=16)
    assert resized.images.shape == (3, 3, 16, 16)
    (mixed / "b" / "2.png").write_bytes(b"broken")
    with pytest.raises(SpikeliteError, match="cannot decode image file .*2.png"):
        load_split("imagefolder", str(mixed), "train", val_size=0, cache_dir="off", image_size=16)


def test_imagefolder_gray_and_channels(tmp_path):
    _write_folder(tmp_path, ["a", "b"], 3)
    gray = load_split("imagefolder", str(tmp_path), "train", val_size=0, channels=1, cache_dir="off")
    assert gray.in_chans == 1 and len(gray.mean) == 1
    rgb = load_split("imagefolder", str(tmp_path), "train", val_size=0, cache_dir="off")
    luma = (rgb.images.double() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert (gray.images.double() - luma).abs().max() <= 2


# --------------------------------------------------------------------------------------------
# Tiny ImageNet
# --------------------------------------------------------------------------------------------


def _write_tiny(root, wnids=("n02", "n01", "n03"), per_class=4, val_per_class=2):
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")  # not sorted, like the real file
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    order = sorted(wnids)
    for w in wnids:
        for i in range(per_class):
            _write_image(base / "train" / w / "images" / f"{w}_{i}.JPEG", _color(order.index(w), i), (64, 64))
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
    lines, k = [], 0
    for w in wnids:
        for i in range(val_per_class):
            name = f"val_{k}.JPEG"
            _write_image(base / "val" / "images" / name, _color(order.index(w), 7), (64, 64))
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
            k += 1
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "test" / "images").mkdir(parents=True)  # the unlabelled real test folder: ignored
    return base


def test_tinyimagenet_layout(tmp_path):
    base = _write_tiny(tmp_path)
    train = load_split("tinyimagenet", str(tmp_path), "train", val_size=3, cache_dir="off")
    val = load_split("tinyimagenet", str(base), "val", val_size=3, cache_dir="off")
    test = load_split("tinyimagenet", str(tmp_path), "test", cache_dir="off")
    # Labels follow the sorted wnids; the class names come from the words.txt beside wnids.txt.
    assert train.classes == ["n01 (thing n01)", "n02 (thing n02)", "n03 (thing n03)"] and train.image_size == 64
    assert (len(train), len(val), len(test)) == (9, 3, 6) and val.class_counts() == [1, 1, 1]
    # Labels follow the sorted wnids; colours encode the class, JPEG keeps them within a few levels.
    for data in (train, test):
        for img, label in zip(data.images, data.labels.tolist()):
            assert abs(int(img[0, 32, 32]) - _color(label)[0]) <= 6
            assert abs(int(img[2, 32, 32]) - _color(label)[2]) <= 6
    assert sorted(test.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    small = load_split("tinyimagenet", str(tmp_path), "test", cache_dir="off", image_size=32)
    assert small.images.shape == (6, 3, 32, 32)


def test_tinyimagenet_broken_layouts(tmp_path):
    base = _write_tiny(tmp_path)
    ann = base / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_99.JPEG\tn09\t0\t0\t1\t1\n")
    with pytest.raises(SpikeliteError, match="class 'n09' is not among"):
        load_split("tinyimagenet", str(tmp_path), "test")
    ann.write_text("val_99.JPEG\tn01\t0\t0\t1\t1\n")
    with pytest.raises(SpikeliteError, match="lists val_99.JPEG, but .* does not exist"):
        load_split("tinyimagenet", str(tmp_path), "test")
    ann.unlink()
    with pytest.raises(SpikeliteError, match="missing .*val_annotations.txt"):
        load_split("tinyimagenet", str(tmp_path), "test")
    import shutil

    shutil.rmtree(base / "train" / "n03" / "images")
    with pytest.raises(SpikeliteError, match="missing .*n03/images"):
        load_split("tinyimagenet", str(tmp_path), "train")


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX)
# --------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fmnist(folder, n_train=40, n_test=20, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3) % 10,
    }
    for name, arr in arrays.items():
        raw = _idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path, gz):
    arrays = _write_fmnist(tmp_path / "fm", gz=gz)
    test = load_split("fashion-mnist", str(tmp_path / "fm"), "test", cache_dir="off")
    train = load_split("fashion-mnist", str(tmp_path / "fm"), "train", cache_dir="off")
    assert test.images.shape == (20, 1, 28, 28) and len(train) == 36  # 10 % of 40 held out for val
    assert torch.equal(test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"].astype(np.uint8)))
    assert test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert test.classes[0] == "T-shirt/top" and test.mean == (0.286,)
    rgb32 = load_split("fashion-mnist", str(tmp_path / "fm"), "test", cache_dir="off", image_size=32, channels=3)
    assert rgb32.images.shape == (20, 3, 32, 32) and len(rgb32.mean) == 3
    assert torch.equal(rgb32.images[:, 0], rgb32.images[:, 2])


def test_fashion_mnist_torchvision_layout_and_bad_files(tmp_path):
    _write_fmnist(tmp_path / "FashionMNIST" / "raw")
    assert len(load_split("fashion-mnist", str(tmp_path), "test", cache_dir="off")) == 20
    bad = tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">III", 40, 28, 28) + b"\x00" * 10))
    with pytest.raises(SpikeliteError, match="IDX header says"):
        load_split("fashion-mnist", str(tmp_path), "train", cache_dir="off")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "train-images-idx3-ubyte").write_bytes(b"")  # the labels file is missing
    with pytest.raises(SpikeliteError, match="elsewhere does not hold the train files"):
        load_split("fashion-mnist", str(tmp_path / "elsewhere"), "train", cache_dir="off")


def test_read_idx_rejects_non_idx(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\x12\x34\x08\x01abcd")
    with pytest.raises(SpikeliteError, match="not an IDX file"):
        D.read_idx(path)


@pytest.mark.skipif(not os.path.isdir(D.FASHION_MNIST_SYSTEM_ROOT), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package():
    test = load_split("fashion-mnist", None, "test", cache_dir="off")
    assert test.images.shape == (10000, 1, 28, 28) and test.class_counts() == [1000] * 10


# --------------------------------------------------------------------------------------------
# digits and the split logic
# --------------------------------------------------------------------------------------------


def test_digits_default_shape_and_fixed_test_split():
    from sklearn.datasets import load_digits

    tr0 = load_split("digits", None, "train", seed=0)
    va0 = load_split("digits", None, "val", seed=0)
    te0 = load_split("digits", None, "test", seed=0)
    te1 = load_split("digits", None, "test", seed=1)
    assert tr0.images.shape[1:] == (3, 32, 32) and tr0.num_classes == 10
    assert torch.equal(tr0.images[:, 0], tr0.images[:, 1])  # grey replicated
    assert len(te0) == round(0.2 * 1797) and torch.equal(te0.images, te1.images)  # seed does not move test
    assert len(tr0) + len(va0) + len(te0) == 1797
    assert len(va0) == round(0.1 * (1797 - len(te0)))
    # Every image appears in exactly one split: compare against scikit-learn's images at 8x8.
    native = load_split("digits", None, "test", image_size=8, channels=1)
    raw = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    raw_set = {bytes(r) for r in raw.reshape(len(raw), -1)}
    assert {bytes(r) for r in native.images.reshape(len(native), -1).numpy()} <= raw_set
    assert tr0.mean == te0.mean  # statistics of the fixed training part


def test_stratified_split_properties():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train, val = stratified_split(labels, 0.1, seed=3)
    assert torch.bincount(labels[val]).tolist() == [5, 3, 2]
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    assert torch.equal(val, torch.sort(val).values)
    again = stratified_split(labels, 10, seed=3)
    assert torch.equal(again[1], val) and torch.equal(again[0], train)
    other = stratified_split(labels, 10, seed=4)[1]
    assert not torch.equal(other, val)
    # Largest-remainder shares add up exactly: 7 of 100 -> 3.5, 2.1, 1.4 -> 4, 2, 1.
    _, v7 = stratified_split(labels, 7, seed=0)
    assert torch.bincount(labels[v7], minlength=3).tolist() == [4, 2, 1]


def test_train_val_split_is_seeded_and_disjoint():
    tr = load_split("digits", None, "train", seed=5, image_size=8, channels=1)
    va = load_split("digits", None, "val", seed=5, image_size=8, channels=1)
    va2 = load_split("digits", None, "val", seed=5, image_size=8, channels=1)
    va_other = load_split("digits", None, "val", seed=6, image_size=8, channels=1)
    assert torch.equal(va.images, va2.images)
    assert not torch.equal(va.images, va_other.images)
    tr_rows = {(bytes(i), int(l)) for i, l in zip(tr.images.reshape(len(tr), -1).numpy(), tr.labels)}
    va_rows = [(bytes(i), int(l)) for i, l in zip(va.images.reshape(len(va), -1).numpy(), va.labels)]
    # scikit-learn's digits contain no exact duplicates across these parts, so disjoint rows = disjoint sets.
    assert not any(r in tr_rows for r in va_rows)
    counts = va.class_counts()
    assert max(counts) - min(counts) <= 1


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def test_disk_cache_hit_and_invalidation(tmp_path, monkeypatch, decode_calls):
    root = tmp_path / "data"
    _write_folder(root / "train", ["a", "b"], 4)
    cache = tmp_path / "cache"
    calls = decode_calls
    first = load_split("imagefolder", str(root), "train", val_size=0, cache_dir=str(cache))
    assert len(calls) == 8
    files = list((cache / "data").glob("*.pt"))
    assert len(files) == 1 and not list((cache / "data").glob(".*"))  # written atomically, no temp left

    load_split("imagefolder", str(root), "val", val_size=2, cache_dir=str(cache))  # memory hit
    D.clear_memory_cache()
    second = load_split("imagefolder", str(root), "train", val_size=0, cache_dir=str(cache))  # disk hit
    assert len(calls) == 8 and torch.equal(first.images, second.images)

    # A different size is a different cache entry.
    load_split("imagefolder", str(root), "train", val_size=0, cache_dir=str(cache), image_size=4)
    assert len(calls) == 16 and len(list((cache / "data").glob("*.pt"))) == 2

    # Rewrite one file: new content and mtime -> decoded again, the stale entry replaced.
    target = root / "train" / "b" / "0002.png"
    _write_image(target, (255, 0, 255))
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    D.clear_memory_cache()
    third = load_split("imagefolder", str(root), "train", val_size=0, cache_dir=str(cache))
    assert len(calls) == 24
    assert third.images[6, :, 0, 0].tolist() == [255, 0, 255]
    assert len(list((cache / "data").glob("*.pt"))) == 2  # one per size, the stale one removed

    # A removed file changes the listing -> decoded again.
    (root / "train" / "a" / "0000.png").unlink()
    fourth = load_split("imagefolder", str(root), "train", val_size=0, cache_dir=str(cache))
    assert len(fourth) == 7 and len(calls) == 31


def test_cache_off_default_dir_and_corrupt_file(tmp_path, monkeypatch, decode_calls):
    root = tmp_path / "data"
    _write_folder(root, ["a", "b"], 2)
    calls = decode_calls
    load_split("imagefolder", str(root), "train", val_size=0, cache_dir="off")
    assert not (tmp_path / "default-cache").exists()
    D.clear_memory_cache()
    load_split("imagefolder", str(root), "train", val_size=0)  # default: $SPIKELITE_CACHE
    (entry,) = (tmp_path / "default-cache" / "data").glob("*.pt")
    entry.write_bytes(b"garbage")
    D.clear_memory_cache()
    with pytest.warns(UserWarning, match="unreadable cache file"):
        again = load_split("imagefolder", str(root), "train", val_size=0)
    assert len(again) == 4 and len(calls) == 12
    assert entry.stat().st_size > 100  # rewritten
    monkeypatch.setenv("SPIKELITE_CACHE", "off")
    D.clear_memory_cache()
    load_split("imagefolder", str(root), "train", val_size=0)
    assert len(calls) == 16 and len(list((tmp_path / "default-cache" / "data").iterdir())) == 1


def test_cache_dir_that_cannot_be_written_only_warns(tmp_path):
    root = tmp_path / "data"
    _write_folder(root, ["a", "b"], 2)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write the data cache"):
        data = load_split("imagefolder", str(root), "train", val_size=0, cache_dir=str(blocker))
    assert len(data) == 4


# --------------------------------------------------------------------------------------------
# Augment and BatchLoader
# --------------------------------------------------------------------------------------------


def _toy(n=40, c=3, size=8, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return ImageData(images, labels, [str(i) for i in range(classes)], "toy", (0.5,) * c, (0.25,) * c)


def test_augment_names():
    assert Augment.from_name("standard") == Augment()
    assert Augment.from_name("none").enabled is False and Augment.from_name(None).name == "none"
    a = Augment.from_name("flip+crop2+cutout=6")
    assert (a.flip, a.crop_padding, a.cutout) == (True, 2, 6)
    for aug in (Augment(), Augment(flip=False, crop_padding=3), Augment(cutout=8), Augment(False, 0, 0)):
        assert Augment.from_name(aug.name) == aug
    assert Augment.from_name("standard,cutout").cutout == 16
    with pytest.raises(SpikeliteError, match="unknown augmentation 'rotate'"):
        Augment.from_name("flip+rotate")
    with pytest.raises(SpikeliteError, match="crop_padding"):
        Augment(crop_padding=-1)
    assert D.default_augment("cifar10") == Augment(flip=True, crop_padding=4)
    assert D.default_augment("tinyimagenet").crop_padding == 8
    assert D.default_augment("digits").flip is False


def test_loader_without_augmentation_normalises_exactly():
    data = _toy(n=10)
    loader = BatchLoader(data, 4)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32
    torch.testing.assert_close(x * 0.25 + 0.5, data.images.float() / 255)
    assert torch.equal(torch.cat([b[1] for b in batches]), data.labels)
    assert len(BatchLoader(data, 4, drop_last=True)) == 2
    mask = data.labels == 1
    assert torch.equal(data.subset(mask).images, data.images[mask])
    assert [len(y) for _, y in BatchLoader(data, 4, drop_last=True)] == [4, 4]


def _reference_crop_flip(img, dy, dx, flip, pad):
    c, h, w = img.shape
    padded = torch.zeros((c, h + 2 * pad, w + 2 * pad), dtype=img.dtype)
    padded[:, pad:pad + h, pad:pad + w] = img
    out = padded[:, dy:dy + h, dx:dx + w]
    return out.flip(-1) if flip else out


def test_batched_augmentation_matches_per_image_reference():
    data = _toy(n=30)
    aug = Augment(flip=True, crop_padding=3, cutout=4)
    loader = BatchLoader(data, 7, shuffle=True, augment=aug, seed=11)
    loader.set_epoch(2)
    params, order = loader.augment_params(), loader.indices()
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    assert torch.equal(y, data.labels[order])
    assert params["dy"].max() <= 6 and params["flip"].any() and not params["flip"].all()
    for k, i in enumerate(order.tolist()):
        ref = _reference_crop_flip(data.images[i], int(params["dy"][k]), int(params["dx"][k]),
                                   bool(params["flip"][k]), 3).float()
        ref = (ref / 255 - 0.5) / 0.25
        cy, cx = int(params["cy"][k]), int(params["cx"][k])
        ref[:, max(0, cy - 2):max(0, cy + 2), max(0, cx - 2):max(0, cx + 2)] = 0.0
        torch.testing.assert_close(x[k], ref)


def test_epoch_is_a_pure_function_of_seed_epoch_rank():
    data = _toy(n=50)
    state = torch.get_rng_state()

    def epoch_batches(seed, epoch):
        loader = BatchLoader(data, 8, shuffle=True, augment=Augment(cutout=3), seed=seed)
        loader.set_epoch(epoch)
        return [b for b in loader]

    a = epoch_batches(0, 3)
    torch.manual_seed(1234)  # global RNG state must not matter
    b = epoch_batches(0, 3)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    c = epoch_batches(0, 4)
    d = epoch_batches(1, 3)
    assert not torch.equal(a[0][1], c[0][1]) and not torch.equal(a[0][0], d[0][0])
    # Resuming: a loader that ran other epochs first reproduces epoch 3 exactly.
    loader = BatchLoader(data, 8, shuffle=True, augment=Augment(cutout=3), seed=0)
    for e in range(3):
        loader.set_epoch(e)
        list(loader)
    loader.set_epoch(3)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, loader))
    # Each shuffled epoch still visits every sample exactly once.
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(data.labels.tolist())
    torch.manual_seed(0)
    torch.set_rng_state(state)


def test_ddp_shards_are_disjoint_and_equal():
    data = _toy(n=41)
    loaders = [BatchLoader(data, 5, shuffle=True, augment=Augment(), seed=2, rank=r, world_size=3) for r in range(3)]
    for epoch in (0, 1):
        shards = []
        for ld in loaders:
            ld.set_epoch(epoch)
            shards.append(ld.indices())
        assert [len(s) for s in shards] == [13, 13, 13] and all(len(ld) == 3 for ld in loaders)
        union = torch.cat(shards)
        assert len(set(union.tolist())) == 39
        # The shards interleave one shared order (the same for every rank), cut to a multiple of 3.
        full = BatchLoader(data, 5, shuffle=True, seed=2)
        full.set_epoch(epoch)
        order = full.indices()[:39]
        assert all(torch.equal(shards[r], order[r::3]) for r in range(3))
    assert not torch.equal(loaders[0].augment_params()["dx"], loaders[1].augment_params()["dx"])
    seen = torch.cat([y for _, y in loaders[1]])
    assert torch.equal(seen, data.labels[loaders[1].indices()])


def test_loader_bad_arguments():
    data = _toy(n=4)
    with pytest.raises(SpikeliteError, match="rank 2 is outside"):
        BatchLoader(data, 2, rank=2, world_size=2)
    with pytest.raises(SpikeliteError, match="batch_size"):
        BatchLoader(data, 0)
    with pytest.raises(SpikeliteError, match="cannot be shared among 5 ranks"):
        BatchLoader(data, 1, world_size=5)
    with pytest.raises(SpikeliteError, match="ImageData"):
        BatchLoader(data.images, 2)
    with pytest.raises(SpikeliteError, match="unknown augmentation"):
        BatchLoader(data, 2, augment="spin")
    with pytest.raises(SpikeliteError, match="epoch"):
        BatchLoader(data, 2).set_epoch(-1)
    with pytest.raises(SpikeliteError, match="unknown device 'tpu9'"):
        BatchLoader(data, 2, device="tpu9")
    with pytest.raises(SpikeliteError, match="holds no images"):
        BatchLoader(data.subset(torch.zeros(0, dtype=torch.int64)), 2)
    with pytest.raises(SpikeliteError, match="uint8"):
        ImageData(data.images.float(), data.labels, data.classes, "x", data.mean, data.std)
    with pytest.raises(SpikeliteError, match="labels outside"):
        ImageData(data.images, data.labels + 10, data.classes, "x", data.mean, data.std)


def test_loader_restores_thread_count():
    before = torch.get_num_threads()
    loader = BatchLoader(_toy(n=20), 8, augment=Augment())
    it = iter(loader)
    next(it)
    assert torch.get_num_threads() == before
    list(it)
    assert torch.get_num_threads() == before


def test_real_digits_feed_a_cifar_sized_batch():
    train = load_split("digits", None, "train")
    loader = BatchLoader(train, 64, shuffle=True, augment=D.default_augment("digits"))
    x, y = next(iter(loader))
    assert x.shape == (64, 3, 32, 32) and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.5  # normalised with the training statistics


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu():
    data = _toy(n=64, size=32)
    cpu = BatchLoader(data, 16, shuffle=True, augment=Augment(cutout=8), seed=4)
    gpu = BatchLoader(data, 16, shuffle=True, augment=Augment(cutout=8), seed=4, device="cuda")
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and yg.is_cuda
        torch.testing.assert_close(xg.cpu(), xc)
        assert torch.equal(yg.cpu(), yc)


def test_pixel_stats_are_exact():
    x = torch.randint(0, 256, (37, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    mean, std = DD._pixel_stats(x)
    f = x.double() / 255
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), f.mean((0, 2, 3)), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), f.std((0, 2, 3), unbiased=False),
                               atol=1e-6, rtol=0)
