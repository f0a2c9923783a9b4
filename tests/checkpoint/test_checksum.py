"""Checkpoints carry a SHA-256 checksum of their payload, verified on load (issue #28, item 3): a file whose
bytes changed after it was written is refused as damaged; files written before checksums still load, with a
warning; a directory named as a checkpoint is called a directory (item 5b)."""

import warnings
import zipfile

import pytest
import torch

from spikelite import SpikeliteError
from spikelite import checkpoint as C
from spikelite.cli import main as cli_main
from spikelite.models import create_model
from spikelite.snn import spikify


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKELITE_CACHE", str(tmp_path / "cache"))


def _model():
    torch.manual_seed(0)
    return create_model("shufflenetv2_x0_3", num_classes=10, image_size=8, width=0.25).eval()


def _save(path, model=None):
    return C.save_checkpoint(path, model if model is not None else _model(),
                             meta={"data": {"dataset": "digits", "image_size": 8}})


def _flip_tensor_bytes(path, n=4096) -> str:
    """Invert up to ``n`` bytes in the middle of the largest tensor's data in the zip archive. The members
    are stored uncompressed, so the archive and the pickle stay readable: only the numbers change."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    k = min(n, info.file_size)
    at = start + (info.file_size - k) // 2
    raw[at:at + k] = bytes(b ^ 0xFF for b in raw[at:at + k])
    path.write_bytes(bytes(raw))
    return info.filename


def test_flipped_bytes_in_the_weights_are_refused(tmp_path, capsys):
    good = _save(tmp_path / "good.pt")
    bad = _save(tmp_path / "bad.pt")
    _flip_tensor_bytes(bad)
    # torch itself notices nothing: the archive opens and the weights differ
    assert zipfile.is_zipfile(bad)
    raw_good, raw_bad = (torch.load(p, weights_only=True) for p in (good, bad))
    assert any(not torch.equal(raw_good["state_dict"][k], raw_bad["state_dict"][k]) for k in raw_good["state_dict"])
    for load in (C.read_checkpoint, C.load_model, lambda p: C.load_checkpoint(_model(), p)):
        with pytest.raises(SpikeliteError, match=r"checkpoint .*bad.pt is damaged: its contents do not match the "
                                                 r"SHA-256 checksum"):
            load(bad)
    # the commands: one line, exit 2, nothing written
    for argv in (["eval", str(bad)], ["export", str(bad), "-o", str(tmp_path / "out" / "m.onnx")]):
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "is damaged" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    C.read_checkpoint(good)  # the undamaged copy still reads


def test_the_checksum_covers_the_metadata_and_training_state(tmp_path):
    path = _save(tmp_path / "c.pt")
    for edit in (lambda d: d["data"].update(dataset="cifar10"), lambda d: d["model_spec"].update(width=0.5),
                 lambda d: d.update(train_state={"step": 1})):
        raw = torch.load(path, weights_only=True)
        edit(raw)
        torch.save(raw, tmp_path / "edited.pt")  # an edit saved by hand keeps the old checksum
        with pytest.raises(SpikeliteError, match="is damaged.*write_checkpoint"):
            C.read_checkpoint(tmp_path / "edited.pt")
        C.write_checkpoint(tmp_path / "edited.pt", raw)  # written back with a fresh checksum: accepted
        C.read_checkpoint(tmp_path / "edited.pt")
    raw = torch.load(path, weights_only=True)
    raw["checksum"] = {"algorithm": "md5", "digest": "0"}
    torch.save(raw, tmp_path / "alg.pt")
    with pytest.raises(SpikeliteError, match="checksum entry is unreadable"):
        C.read_checkpoint(tmp_path / "alg.pt")


def test_the_digest_is_deterministic(tmp_path):
    a, b = _save(tmp_path / "a.pt"), _save(tmp_path / "b.pt")
    da, db = (torch.load(p, weights_only=True)["checksum"] for p in (a, b))
    assert da == db and da["algorithm"] == "sha256" and len(da["digest"]) == 64
    raw = C.read_checkpoint(a)
    assert C.payload_digest(raw) == da["digest"]
    assert C.payload_digest(dict(reversed(list(raw.items())))) == da["digest"]  # entry order does not matter
    raw["state_dict"] = {k: v.clone() for k, v in raw["state_dict"].items()}
    first = next(k for k, v in raw["state_dict"].items() if v.is_floating_point())
    raw["state_dict"][first].view(-1)[0] += 1e-6
    assert C.payload_digest(raw) != da["digest"]
    snn = C.save_checkpoint(tmp_path / "snn.pt", spikify(_model(), T=2))
    assert C.load_model(snn)[0].T == 2


def test_a_checkpoint_without_a_checksum_loads_with_a_note(tmp_path):
    path = _save(tmp_path / "old.pt")
    raw = torch.load(path, weights_only=True)
    del raw["checksum"]  # as written before checksums
    torch.save(raw, path)
    with pytest.warns(UserWarning, match=r"old.pt carries no checksum .* damage to it cannot be detected"):
        model, meta = C.load_model(path)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), _model()(x))
    # re-written, it carries one and loads without a warning
    C.write_checkpoint(path, raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        C.load_model(path)


def test_a_directory_is_called_a_directory(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _save(run / "best.pt")
    _save(run / "last.pt")
    for argv in (["eval", str(run)], ["energy", str(run)], ["export", str(run), "-o", str(tmp_path / "m.onnx")]):
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"checkpoint {run} is a directory, not a checkpoint file; it holds best.pt, last.pt" in err, err
        assert "does not exist" not in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpikeliteError, match="is a directory.*name the checkpoint file"):
        C.load_model(tmp_path / "empty")
    with pytest.raises(SpikeliteError, match="does not exist"):
        C.load_model(tmp_path / "missing.pt")


def test_class_lists_match_by_key_when_one_side_lacks_the_names():
    from spikelite.checkpoint import _same_classes

    named = ["n01443537 (goldfish, Carassius auratus)", "n02123045 (tabby, tabby cat)"]
    assert _same_classes(named, ["n01443537", "n02123045"]) and _same_classes(["n01443537", "n02123045"], named)
    assert not _same_classes(named, ["n02123045", "n01443537"])  # order matters: labels index it
    assert not _same_classes(named, ["n01443537"]) and not _same_classes(["cat", "dog"], ["cat", "dogs"])
    assert not _same_classes(["n01 (a)", "n02 (b)"], ["n01 (x)", "n02 (b)"])  # two different names for one key
