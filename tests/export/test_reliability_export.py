"""The default path goes through (issue #28): `spikelite train --snn --model squeezenet1_1` and then
`spikelite export <that>.pt --format nir`, no options, no edits."""

import pytest

from spikelite.cli import main as cli_main
from spikelite.snn import neuron

pytest.importorskip("nir")
pytest.importorskip("nirtorch")


def test_the_default_squeezenet_snn_exports_to_nir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPIKELITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(neuron._KERNELS, "broken", True)
    run = tmp_path / "run"
    assert cli_main(["train", "--snn", "--model", "squeezenet1_1", "--dataset", "digits", "--image-size", "8",
                     "--epochs", "0", "--T", "2", "--val-subset", "32", "--threads", "1", "--quiet",
                     "--no-tensorboard", "--out", str(run)]) == 0
    capsys.readouterr()
    assert cli_main(["export", str(run / "last.pt"), "--format", "nir", "-o", str(tmp_path / "sq.nir")]) == 0, \
        capsys.readouterr().err
    assert (tmp_path / "sq.nir").is_file()
