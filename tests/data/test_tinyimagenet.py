"""Tiny ImageNet: the ImageFolder layout (train/<wnid>/*.JPEG, test/<wnid>/*.JPEG) and the official
tiny-imagenet-200/ layout, written with PIL as small trees; class order, names, splits, cache, errors."""

import warnings

import pytest
import torch
from PIL import Image

from spikelite import SpikeliteError
from spikelite import data as D
from spikelite.data import load_split

WNIDS = ("n02123045", "n01443537", "n04067472")  # created unsorted; sorted: goldfish, tabby, reel
NAMES = {"n01443537": "goldfish, Carassius auratus", "n02123045": "tabby, tabby cat", "n04067472": "reel"}


def named(wnid, names=NAMES):
    """A class as the loader names it: the wnid first (the class's key), its names after it."""
    return f"{wnid} ({names[wnid]})"
PER_CLASS = 10


def _color(label: int, i: int) -> tuple[int, int, int]:
    """A solid colour naming (label, i): 60 levels between classes, 20 between images, far above JPEG error."""
    return (30 + 60 * label, 20 + 20 * i, 150)


def _identify(img: torch.Tensor) -> tuple[int, int]:
    r, g = int(img[0, 32, 32]), int(img[1, 32, 32])
    return round((r - 30) / 60), round((g - 20) / 20)


def _save(path, rgb, size=(64, 64), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).convert(mode).save(path, "JPEG", quality=95)


def _write_imagefolder(root, per_class=PER_CLASS, test_per_class=2, special=True):
    """ROOT/train/<wnid>/<wnid>_<k>.JPEG (+ ROOT/test/<wnid>/*.JPEG); image 3 of the first sorted class is
    grayscale and image 4 CMYK when ``special``."""
    order = sorted(WNIDS)
    for w in WNIDS:
        label = order.index(w)
        for i in range(per_class):
            mode = "RGB"
            if special and label == 0 and i == 3:
                mode = "L"
            elif special and label == 0 and i == 4:
                mode = "CMYK"
            _save(root / "train" / w / f"{w}_{i}.JPEG", _color(label, i), mode=mode)
        for i in range(test_per_class):
            _save(root / "test" / w / f"val_{label}{i}.JPEG", _color(label, 8 + i))
    return root


def _write_official(root, per_class=PER_CLASS):
    """The same images as _write_imagefolder (special=False) in tiny-imagenet-200/'s own layout."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    order = sorted(WNIDS)
    lines = []
    for w in WNIDS:
        label = order.index(w)
        for i in range(per_class):
            _save(base / "train" / w / "images" / f"{w}_{i}.JPEG", _color(label, i))
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(2):
            _save(base / "val" / "images" / f"val_{label}{i}.JPEG", _color(label, 8 + i))
            lines.append(f"val_{label}{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "test" / "images").mkdir(parents=True)  # the official unlabelled test images: never read
    _save(base / "test" / "images" / "test_0.JPEG", (0, 0, 0))
    return base


def _write_tsv(folder, names=NAMES):
    (folder / "tinyimagenet-classes.tsv").write_text("".join(f"{w}\t{n}\n" for w, n in names.items()))


def test_imagefolder_layout_shapes_labels_names_and_modes(tmp_path):
    root = _write_imagefolder(tmp_path / "tinyimagenet")
    _write_tsv(tmp_path)  # beside the data: in the root's parent, as in the shared datasets folder
    train = load_split("tinyimagenet", str(root), "train", val_size=6, cache_dir="off")
    val = load_split("tiny-imagenet", str(root), "val", val_size=6, cache_dir="off")
    test = load_split("tinyimagenet", str(root), "test", cache_dir="off")
    names = [named(w) for w in sorted(WNIDS)]
    assert train.classes == val.classes == test.classes == names
    assert train.images.shape == (24, 3, 64, 64) and val.images.shape == (6, 3, 64, 64)
    assert test.images.shape == (6, 3, 64, 64) and test.class_counts() == [2, 2, 2]
    # Every image carries its (class, index) in its colour: labels follow the sorted wnids, and train
    # and val are disjoint and cover the training folder.
    seen = []
    for data in (train, val):
        for img, label in zip(data.images, data.labels.tolist()):
            cls, i = _identify(img)
            if (label, i) not in ((0, 3), (0, 4)):  # grayscale and CMYK: checked below
                assert cls == label
            seen.append((label, i))
    assert sorted(seen) == [(c, i) for c in range(3) for i in range(PER_CLASS)]
    assert [_identify(img) for img in test.images] == [(c, 8 + i) for c in range(3) for i in range(2)]
    # The grayscale JPEG becomes RGB with three equal channels, at PIL's luma of the colour.
    gray = next(img for img, y in zip(*_all(train, val)) if y == (0, 3))
    luma = Image.new("RGB", (1, 1), _color(0, 3)).convert("L").getpixel((0, 0))
    assert gray[0].equal(gray[1]) and gray[1].equal(gray[2]) and abs(int(gray[0, 32, 32]) - luma) <= 3
    cmyk = next(img for img, y in zip(*_all(train, val)) if y == (0, 4))
    assert all(abs(int(cmyk[c, 32, 32]) - _color(0, 4)[c]) <= 4 for c in range(3))


def _all(*splits):
    """(image, (label, index)) pairs of several splits, the index read from the green channel."""
    images = torch.cat([s.images for s in splits])
    labels = torch.cat([s.labels for s in splits]).tolist()
    return images, [(y, round((int(img[1, 32, 32]) - 20) / 20)) for img, y in zip(images, labels)]


def test_held_out_split_is_stratified_seeded_and_disjoint(tmp_path):
    root = _write_imagefolder(tmp_path, special=False)
    splits = {}
    for seed in (0, 1):
        tr = load_split("tinyimagenet", str(root), "train", val_size=0.2, seed=seed, cache_dir="off")
        va = load_split("tinyimagenet", str(root), "val", val_size=0.2, seed=seed, cache_dir="off")
        assert va.class_counts() == [2, 2, 2] and tr.class_counts() == [8, 8, 8]
        tr_ids, va_ids = {_identify(i) for i in tr.images}, {_identify(i) for i in va.images}
        assert not tr_ids & va_ids and len(tr_ids | va_ids) == 3 * PER_CLASS
        splits[seed] = va_ids
    assert splits[0] != splits[1]  # the seed picks which images are held out
    again = load_split("tinyimagenet", str(root), "val", val_size=0.2, seed=0, cache_dir="off")
    assert {_identify(i) for i in again.images} == splits[0]


def test_official_layout_gives_the_same_data(tmp_path):
    folder = _write_imagefolder(tmp_path / "folder", special=False)
    base = _write_official(tmp_path / "official")
    for split in ("train", "val", "test"):
        a = load_split("tinyimagenet", str(folder), split, val_size=3, cache_dir="off")
        b = load_split("tinyimagenet", str(tmp_path / "official"), split, val_size=3, cache_dir="off")
        c = load_split("tinyimagenet", str(base), split, val_size=3, cache_dir="off")  # the folder itself
        assert torch.equal(a.labels, b.labels) and torch.equal(a.labels, c.labels)
        assert torch.equal(a.images, b.images) and torch.equal(a.images, c.images)
        assert a.classes == b.classes == sorted(WNIDS)  # no names file anywhere: the wnids
    assert len(b) == 6  # the official val/ is the test split; test/images/ is never read


def test_class_names_files(tmp_path):
    root = _write_imagefolder(tmp_path / "data", per_class=2, test_per_class=1, special=False)

    def load():
        return load_split("tinyimagenet", str(root), "test", cache_dir="off").classes

    assert load() == sorted(WNIDS)
    # words.txt (the official archive's, all of WordNet) in the root; other wnids in it are ignored.
    (root / "words.txt").write_text("n00001740\tentity\n" + "".join(f"{w}\tw-{w}\n" for w in WNIDS))
    assert load() == [f"{w} (w-{w})" for w in sorted(WNIDS)]
    _write_tsv(root)  # the tsv is preferred over words.txt
    assert load() == [named(w) for w in sorted(WNIDS)]
    # A tsv that misses a class keeps that class's wnid, and says so.
    _write_tsv(root, {w: n for w, n in NAMES.items() if w != "n04067472"})
    with pytest.warns(UserWarning, match="names 2 of the 3 classes.*n04067472"):
        assert load() == [named("n01443537"), named("n02123045"), "n04067472"]
    # A file of the same name about other things is not a names file.
    _write_tsv(root, {"n09999999": "something else"})
    assert load() == [f"{w} (w-{w})" for w in sorted(WNIDS)]


def test_cache_is_reused_and_names_are_read_after_it(tmp_path, monkeypatch, decode_calls):
    root = _write_imagefolder(tmp_path / "data", special=False)
    cache = tmp_path / "cache"
    calls = decode_calls
    first = load_split("tinyimagenet", str(root), "train", val_size=3, cache_dir=str(cache))
    assert len(calls) == 3 * PER_CLASS
    (entry,) = (cache / "data").glob("tinyimagenet-train-*.pt")
    load_split("tinyimagenet", str(root), "val", val_size=3, cache_dir=str(cache))  # memory
    D.clear_memory_cache()
    _write_tsv(root)  # the names are not part of the cached tensor: a names file appears, nothing decodes
    second = load_split("tinyimagenet", str(root), "train", val_size=3, cache_dir=str(cache))  # disk
    assert len(calls) == 3 * PER_CLASS and torch.equal(first.images, second.images)
    assert second.classes == [named(w) for w in sorted(WNIDS)] and first.classes == sorted(WNIDS)
    assert list((cache / "data").glob("tinyimagenet-train-*.pt")) == [entry]
    # image_size=None and the native 64 are one cache entry.
    load_split("tinyimagenet", str(root), "train", val_size=3, cache_dir=str(cache), image_size=64)
    assert len(calls) == 3 * PER_CLASS
    load_split("tinyimagenet", str(root), "test", cache_dir=str(cache))
    assert len(calls) == 3 * PER_CLASS + 6 and len(list((cache / "data").glob("tinyimagenet-test-*.pt"))) == 1


def test_an_image_that_is_not_64x64_is_resized_with_a_warning(tmp_path):
    root = _write_imagefolder(tmp_path, per_class=2, test_per_class=1, special=False)
    odd = root / "train" / "n04067472" / "n04067472_1.JPEG"
    _save(odd, _color(2, 1), size=(80, 60))
    with pytest.warns(UserWarning, match=r"1 of 6 images are not 64x64 \(first: .*n04067472_1.JPEG, 60x80\)"):
        data = load_split("tinyimagenet", str(root), "train", val_size=0, cache_dir="off")
    assert data.images.shape == (6, 3, 64, 64) and _identify(data.images[5]) == (2, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all 64x64: nothing to say
        small = load_split("tinyimagenet", str(root), "test", cache_dir="off", image_size=32)
    assert small.images.shape == (3, 3, 32, 32)


def test_layout_errors_are_clear(tmp_path):
    root = _write_imagefolder(tmp_path / "mixed", per_class=2, test_per_class=1, special=False)
    moved = root / "train" / "n02123045"
    (moved / "images").mkdir()
    for f in moved.glob("*.JPEG"):
        f.rename(moved / "images" / f.name)
    with pytest.raises(SpikeliteError, match=r"mixes two layouts: .*n02123045/images holds the images of its class, "
                                             r".*n01443537 holds them directly"):
        load_split("tinyimagenet", str(root), "train")

    root = _write_imagefolder(tmp_path / "wrongtest", per_class=2, test_per_class=1, special=False)
    (root / "test" / "n04067472").rename(root / "test" / "n09999999")
    with pytest.raises(SpikeliteError, match=r"test part .* lacks 1 of the 3 training classes \(n04067472\) and has "
                                             r"1 class folders that are not training classes \(n09999999\)"):
        load_split("tinyimagenet", str(root), "test")
    assert len(load_split("tinyimagenet", str(root), "train", val_size=0, cache_dir="off")) == 6  # train is fine

    root = _write_imagefolder(tmp_path / "notest", per_class=2, test_per_class=0, special=False)
    with pytest.raises(SpikeliteError, match="no labelled test images: missing both test/<wnid>/"):
        load_split("tinyimagenet", str(root), "test")

    (tmp_path / "elsewhere" / "pictures").mkdir(parents=True)
    with pytest.raises(SpikeliteError, match=r"elsewhere does not hold train/<wnid>/\*.JPEG .* \(found: pictures\)"):
        load_split("tinyimagenet", str(tmp_path / "elsewhere"), "train")

    root = _write_imagefolder(tmp_path / "emptyclass", per_class=2, test_per_class=1, special=False)
    for f in (root / "train" / "n04067472").iterdir():
        f.unlink()
    with pytest.raises(SpikeliteError, match=r"n04067472 holds no images \(expected train/<wnid>/\*.JPEG"):
        load_split("tinyimagenet", str(root), "train")


def test_a_root_with_only_the_test_part(tmp_path):
    root = _write_imagefolder(tmp_path / "full", per_class=1, test_per_class=2, special=False)
    only = tmp_path / "only"
    only.mkdir()
    (root / "test").rename(only / "test")
    test = load_split("tinyimagenet", str(only), "test", cache_dir="off")
    assert test.classes == sorted(WNIDS) and test.class_counts() == [2, 2, 2]
    with pytest.raises(SpikeliteError, match="no train/ folder"):
        load_split("tinyimagenet", str(only), "train")


def test_the_training_recipe_data_path(tmp_path):
    """`spikelite train`/`eval` load through DataConfig: the dataset name, root, split and val_size of a recipe."""
    from spikelite.train.config import load_config
    from spikelite.train.prepare import _load_run_data

    root = _write_imagefolder(tmp_path / "data", special=False)
    _write_tsv(root)
    cfg = load_config(None, {"data.dataset": "tiny-imagenet", "data.root": str(root), "data.val_size": 6,
                             "data.cache_dir": "off"})
    train, val = _load_run_data(cfg)
    assert (len(train), len(val), train.num_classes, train.image_size) == (24, 6, 3, 64)
    assert val.class_counts() == [2, 2, 2] and train.classes[0] == named("n01443537")


def test_cnn_tinyimagenet_config_builds_a_200_class_64px_model(tmp_path):
    from pathlib import Path

    from spikelite.data import stratified_split
    from spikelite.models import create_model
    from spikelite.train.config import load_config
    from spikelite.train.prepare import _load_run_data

    path = Path(__file__).resolve().parents[2] / "configs" / "cnn_tinyimagenet.yaml"
    cfg = load_config(path)
    assert (cfg.data.dataset, cfg.data.val_size, cfg.data.image_size) == ("tinyimagenet", 10000, 64)
    full = torch.arange(200).repeat_interleave(500)  # the real training set's labels: 500 per class
    _, val_idx = stratified_split(full, cfg.data.val_size, cfg.data.split_seed)
    assert torch.bincount(full[val_idx], minlength=200).tolist() == [50] * 200
    # The recipe on a 200-class tree in the ImageFolder layout, two images a class (val_size scaled down).
    wnids = [f"n{10000000 + 7 * k:08d}" for k in range(200)]
    for k, w in enumerate(wnids):
        for i in range(2):
            _save(tmp_path / "train" / w / f"{w}_{i}.JPEG", (k, 255 - k, 60 * i), size=(64, 64))
    cfg = load_config(path, {"data.root": str(tmp_path), "data.val_size": 200, "data.cache_dir": "off"})
    train, val = _load_run_data(cfg)
    assert (len(train), len(val), train.classes) == (200, 200, wnids)
    model = create_model(cfg.model.name, num_classes=train.num_classes, image_size=train.image_size,
                         in_chans=train.in_chans, width=cfg.model.width, **cfg.model.options).eval()
    spec = model.spikelite_spec
    assert (spec["num_classes"], spec["image_size"], spec["stem_reduction"]) == (200, 64, 2)
    auto = create_model(cfg.model.name, num_classes=200, image_size=64)  # the zoo's own rule at 64 px
    assert auto.spikelite_spec["stem_reduction"] == 2
    with torch.no_grad():
        assert model(val.images[:2].float() / 255).shape == (2, 200)
