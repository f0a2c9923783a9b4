"""The flags every command spells the same way (spikelite.cli._flags), and the old spellings that still work."""

import json

import pytest
import torch

from spikelite import cli
from spikelite.checkpoint import save_checkpoint
from spikelite.data import load_split
from spikelite.models import create_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny digits CNN checkpoint (untrained: the flags, not the figures, are under test)."""
    torch.manual_seed(0)
    val = load_split("digits", None, "val", cache_dir="off")
    info = {"dataset": "digits", "root": None, "classes": list(val.classes), "num_classes": 10,
            "mean": list(val.mean), "std": list(val.std), "image_size": 16, "in_chans": 3, "val_size": None,
            "split_seed": 0}
    path = tmp_path_factory.mktemp("ckpt") / "cnn.pt"
    save_checkpoint(path, create_model("mnasnet_b1", num_classes=10, image_size=16, width=0.1).eval(),
                    meta={"data": info})
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_eval_and_energy_read_the_same_default_split(ckpt, capsys):
    assert cli.main(["eval", str(ckpt), "--threads", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["split"] == "val" and res["n"] == len(load_split("digits", None, "val", cache_dir="off"))
    assert cli.main(["energy", str(ckpt), "--samples", "3", "--threads", "1", "--device", "cpu", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert any("val split" in n for n in rep["notes"])


def test_json_and_out_are_spelled_the_same_everywhere_and_the_old_spellings_still_work(ckpt, tmp_path, capsys):
    new = tmp_path / "new.json"
    assert cli.main(["energy", str(ckpt), "--samples", "2", "--threads", "1", "--json", "-o", str(new)]) == 0
    printed = json.loads(capsys.readouterr().out)
    old = tmp_path / "old.json"
    assert cli.main(["energy", str(ckpt), "--samples", "2", "--threads", "1", "--format", "json",
                     "--output", str(old)]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["samples"] == printed["samples"] == 2
    assert "--format is deprecated" in cap.err and "--output is deprecated" in cap.err and "-o/--out" in cap.err
    assert json.loads(new.read_text())["samples"] == json.loads(old.read_text())["samples"] == 2
    # --format table is the table, not JSON
    assert cli.main(["energy", str(ckpt), "--samples", "2", "--threads", "1", "--format", "table"]) == 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(capsys.readouterr().out)
    # export: -o/--out, and the former --output
    assert cli.main(["export", str(ckpt), "--out", str(tmp_path / "a.onnx"), "--threads", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "onnx"
    assert cli.main(["export", str(ckpt), "--output", str(tmp_path / "b.onnx"), "--threads", "1"]) == 0
    assert "--output is deprecated" in capsys.readouterr().err and (tmp_path / "b.onnx").is_file()
    # models: --json is --format json
    assert cli.main(["models", "--names", "mnasnet_b1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "mnasnet_b1"


def test_missing_output_and_bad_runtime_flags_are_one_clear_error(ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", str(ckpt)])
    assert exc.value.code == 2 and "-o/--out" in capsys.readouterr().err
    assert cli.main(["eval", str(ckpt), "--threads", "0"]) == 2
    assert "threads must be an integer >= 1" in capsys.readouterr().err
    assert cli.main(["energy", str(ckpt), "--samples", "2", "--device", "tpu"]) == 2
    assert "device must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main(["eval", str(ckpt), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
