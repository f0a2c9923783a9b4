"""CIFAR-100 in its real on-disk form: torchvision's cifar-100-python/ (train, test, meta), pickled as the
original files are (Python 2 pickles, protocol 2, byte strings), read by spikelite and by torchvision alike;
and configs/cnn_cifar100.yaml. The data set itself is not available offline here."""

import io
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from spikelite import data as D
from spikelite.data import load_split, stratified_split

REPO = Path(__file__).resolve().parents[2]


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 ``str`` (BINSTRING), as cPickle wrote the original CIFAR files."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + len(raw).to_bytes(4, "little") + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def _py2_dump(obj, path):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x, which wrote the originals, named its array rebuilder numpy.core.multiarray.
    path.write_bytes(buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


COARSE = ["aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
          "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
          "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
          "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
          "vehicles_1", "vehicles_2"]


def write_cifar100(root, per_class_train=4, per_class_test=1, seed=0):
    """``root/cifar-100-python/{train,test,meta}`` with the original files' keys, types and shapes."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    parts = {}
    for part, per_class in (("train", per_class_train), ("test", per_class_test)):
        n = 100 * per_class
        fine = rng.permutation(np.repeat(np.arange(100), per_class)).tolist()
        entry = {
            "filenames": [f"img_{part}_{i}.png" for i in range(n)],
            "batch_label": "training batch 1 of 1" if part == "train" else "testing batch 1 of 1",
            "fine_labels": fine,
            "coarse_labels": [f % 20 for f in fine],
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        }
        _py2_dump(entry, folder / part)
        parts[part] = entry
    _py2_dump({"fine_label_names": list(D.CIFAR100_CLASSES), "coarse_label_names": COARSE}, folder / "meta")
    return folder, parts


def test_original_format_pickles_load_as_torchvision_reads_them(tmp_path, monkeypatch):
    folder, parts = write_cifar100(tmp_path)
    assert (folder / "train").read_bytes()[:2] == b"\x80\x02"  # protocol 2, as the originals
    train = load_split("cifar100", str(tmp_path), "train", val_size=100, cache_dir="off")
    val = load_split("cifar-100", str(tmp_path), "val", val_size=100, cache_dir="off")
    test = load_split("cifar100", str(folder), "test", cache_dir="off")  # the folder itself works too
    assert (len(train), len(val), len(test)) == (300, 100, 100)
    assert train.images.shape[1:] == (3, 32, 32) and train.num_classes == 100
    assert val.class_counts() == [1] * 100 and train.class_counts() == [3] * 100  # stratified
    assert train.classes == list(D.CIFAR100_CLASSES)
    assert train.mean == pytest.approx((0.5071, 0.4865, 0.4409))  # the published statistics
    # torchvision's own reader on the same files (its md5 checks only know the real files).
    import torchvision
    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(torchvision.datasets.CIFAR100, "_check_integrity", lambda self: True)
    ref = torchvision.datasets.CIFAR100(str(tmp_path), train=False, download=False)
    assert ref.classes == test.classes
    assert test.labels.tolist() == ref.targets == parts["test"]["fine_labels"]
    assert torch.equal(test.images, torch.from_numpy(ref.data).permute(0, 3, 1, 2))
    ref_train = torchvision.datasets.CIFAR100(str(tmp_path), train=True, download=False)
    full = torch.cat([train.images, val.images])
    assert sorted(map(bytes, full.numpy())) == sorted(map(bytes, ref_train.data.transpose(0, 3, 1, 2)))


def test_cnn_cifar100_config_builds_a_100_class_model(tmp_path):
    from spikelite.models import create_model
    from spikelite.train.config import load_config
    from spikelite.train.prepare import _load_run_data

    path = REPO / "configs" / "cnn_cifar100.yaml"
    cfg = load_config(path)
    assert (cfg.data.dataset, cfg.data.val_size) == ("cifar100", 5000)
    full = torch.arange(100).repeat_interleave(500)  # the real training set's labels: 500 per class
    _, val_idx = stratified_split(full, cfg.data.val_size, cfg.data.split_seed)
    assert torch.bincount(full[val_idx], minlength=100).tolist() == [50] * 100
    # The recipe on a small tree in the real layout (val_size scaled down to fit it).
    write_cifar100(tmp_path, per_class_train=2)
    cfg = load_config(path, {"data.root": str(tmp_path), "data.val_size": 100, "data.cache_dir": "off"})
    train, val = _load_run_data(cfg)
    model = create_model(cfg.model.name, num_classes=train.num_classes, image_size=train.image_size,
                         in_chans=train.in_chans, width=cfg.model.width, **cfg.model.options).eval()
    assert model.spikelite_spec["num_classes"] == 100 and model.spikelite_spec["image_size"] == 32
    assert model.spikelite_spec["stem_reduction"] == 1
    with torch.no_grad():
        assert model(val.images[:2].float() / 255).shape == (2, 100)
