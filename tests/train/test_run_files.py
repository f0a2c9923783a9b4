"""Issue #28, item 5: every file a run writes has the mode open() gives under the umask (last.pt, best.pt and
log.csv were 0600), and model.options cannot set create_model's own arguments (a raw TypeError before)."""

import contextlib
import os
import stat
from pathlib import Path

import pytest

from spikelite import SpikeliteError
from spikelite import train as T
from spikelite.cli import main as cli_main

TINY = {"model.name": "shufflenetv2_x0_3", "model.width": 0.25, "data.dataset": "digits", "data.image_size": 8,
        "threads": 1, "quiet": True, "tensorboard": False, "batch_size": 32, "optim.lr": 0.05,
        "data.val_subset": 64, "data.train_subset": 64}


@pytest.fixture(autouse=True)
def _isolated(isolated_run):  # tests/conftest.py: own cache, eager kernels, one thread
    yield


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_file_a_run_writes_has_the_mode_open_gives(tmp_path, capsys):
    out = tmp_path / "run"
    with _umask(0o027):  # not the usual 022: the files follow the umask, not a fixed 0644
        with open(tmp_path / "reference", "w"):
            pass
        T.train(T.load_config(None, {**TINY, "out": str(out), "epochs": 1}))
        assert cli_main(["energy", str(out / "best.pt"), "--samples", "16", "--profile", "45nm-fp32",
                         "-o", str(tmp_path / "energy" / "report.json")]) == 0
    capsys.readouterr()
    ref = _mode(tmp_path / "reference")
    assert ref == 0o640
    written = [p for p in out.rglob("*") if p.is_file()] + [tmp_path / "energy" / "report.json"]
    names = {p.name for p in written}
    assert {"last.pt", "best.pt", "log.csv", "summary.json", "config.yaml", "report.json"} <= names, names
    wrong = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in written if _mode(p) != ref}
    assert not wrong, f"not {oct(ref)}: {wrong}"


@pytest.mark.parametrize("key", ["num_classes", "image_size", "in_chans", "width", "name"])
def test_model_options_cannot_set_create_model_arguments(tmp_path, capsys, key):
    with pytest.raises(SpikeliteError, match=rf"model.options cannot set {key}: .*model.options \(--model-opt\) "
                                             r"holds the model family's own options"):
        T.load_config(None, {**TINY, "out": str(tmp_path / "r"), f"model.options.{key}": 5})
    argv = ["train", "--dataset", "digits", "--model", "shufflenetv2_x0_3", "--epochs", "1", "--quiet",
            "--model-opt", f"{key}=5", "--out", str(tmp_path / "r")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert f"model.options cannot set {key}" in err and err.count("\n") == 1, err
    assert not Path(tmp_path / "r").exists()
