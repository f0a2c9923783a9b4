"""What an export leaves on disk (issue #28, item 5): a failed export removes the folders it created for its
output, and a written file has the permissions the umask allows, like a file made with open()."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest
import torch

from spikelite import cli
from spikelite.checkpoint import save_checkpoint
from spikelite.errors import SpikeliteError
from spikelite.models import create_model
from spikelite.snn import spikify

E = pytest.importorskip("spikelite.export")


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _cnn():
    torch.manual_seed(0)
    return create_model("shufflenetv2_x0_3", num_classes=10, image_size=8, width=0.25).eval()


def test_a_failed_export_removes_the_folders_it_created(tmp_path, capsys):
    pytest.importorskip("nir")
    soft = spikify(_cnn(), T=2, neuron={"v_reset": None}).eval()  # soft reset: NIR refuses it
    with pytest.raises(SpikeliteError, match="soft reset"):
        E.export(soft, tmp_path / "a" / "b" / "m.nir")
    assert list(tmp_path.iterdir()) == []
    # a folder that was there before stays, and so does anything else in a created one
    (tmp_path / "kept").mkdir()
    with pytest.raises(SpikeliteError, match="soft reset"):
        E.export(soft, tmp_path / "kept" / "m.nir")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []
    # export_checkpoint: a checkpoint that cannot be read, an output folder that does not exist yet
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    assert cli.main(["export", str(tmp_path / "garbage.pt"), "-o", str(tmp_path / "new" / "m.onnx")]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.pt", "kept"]
    ckpt = save_checkpoint(tmp_path / "snn.pt", soft)
    assert cli.main(["export", str(ckpt), "-o", str(tmp_path / "new" / "deeper" / "m.nir")]) == 2
    assert "soft reset" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.pt", "kept", "snn.pt"]


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_an_exported_file_has_the_mode_open_gives(tmp_path, mask):
    with _umask(mask):
        with open(tmp_path / "reference", "w"):
            pass
        E.export(_cnn(), tmp_path / "sub" / "m.pt")  # TorchScript
        outs = [tmp_path / "sub" / "m.pt"]
        if _have("nir") and _have("nirtorch"):
            E.export(spikify(_cnn(), T=2).eval(), tmp_path / "m.nir")
            outs.append(tmp_path / "m.nir")
    assert _mode(tmp_path / "reference") == 0o666 & ~mask
    for out in outs:
        assert _mode(out) == _mode(tmp_path / "reference"), (out, oct(_mode(out)))


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
