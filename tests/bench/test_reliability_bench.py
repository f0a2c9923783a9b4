"""Issue #28 in the bench: one writer per run directory, cell recipes with absolute paths, and a model default
that changed (SqueezeNet's pool) makes the cells trained under the old default differ from the spec's."""

import json
import os
from pathlib import Path

import pytest

from spikelite import SpikeliteError
from spikelite import bench as B
from spikelite._io import run_lock
from spikelite.bench import cells as BC
from spikelite.cli import main as cli_main


def _spec(out, **over):
    raw = {"name": "t", "out": str(out), "models": ["squeezenet1_1"],
           "datasets": [{"name": "digits", "image_size": 8}], "variants": ["cnn", "snn"], "T": [2],
           "recipe": {"epochs": 1}}
    raw.update(over)
    return B.build_spec(raw)


def test_a_second_bench_into_a_run_directory_in_use_fails_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    with run_lock(out, "spikelite bench"):
        with pytest.raises(SpikeliteError, match=r"run is in use by spikelite bench \(pid \d+.*choose another --out"):
            B.run_bench(_spec(out), quiet=True)
        spec_file = tmp_path / "s.yaml"
        spec_file.write_text(json.dumps(_spec(out).to_dict()))
        assert cli_main(["bench", str(spec_file), "--quiet", "--no-report"]) == 2
        assert "is in use by spikelite bench" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing planned, nothing written


def test_cell_recipes_record_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _spec("rel/run")
    cnn, snn = B.expand_grid(spec)
    cfg = B.cell_config(spec, snn, Path("rel/run"))
    want = str(tmp_path / "rel" / "run" / "cells" / cnn.id / "last.pt")
    assert cfg.init_from == want and cfg.distill.teacher == want
    assert cfg.out == str(tmp_path / "rel" / "run" / "cells" / snn.id)


def test_cells_trained_under_an_earlier_default_are_not_taken_for_the_spec_s_cells(tmp_path, monkeypatch):
    spec = _spec(tmp_path / "run")
    cnn = B.expand_grid(spec)[0]
    cfg = B.cell_config(spec, cnn, tmp_path / "run")
    fp, _, hashed = BC._fingerprints(spec, cnn, cfg, {})
    assert hashed["train"]["model_defaults"] == {"pool": "avg"}  # the spec leaves pool to the default
    explicit = _spec(tmp_path / "run", models=[{"name": "squeezenet1_1", "options": {"pool": "max"}}])
    c = B.expand_grid(explicit)[0]
    assert "model_defaults" not in BC._fingerprints(explicit, c, B.cell_config(explicit, c, tmp_path), {})[2]["train"]
    other = _spec(tmp_path / "run", models=[{"name": "shufflenetv2_x0_5"}])
    c = B.expand_grid(other)[0]
    assert "model_defaults" not in BC._fingerprints(other, c, B.cell_config(other, c, tmp_path), {})[2]["train"]
    # a cell folder written before the default changed (its fingerprint had no model_defaults) is reported,
    # not reused or resumed with the other pooling
    monkeypatch.setattr(BC, "_changed_defaults", lambda model: {})
    old_fp, _, old_hashed = BC._fingerprints(spec, cnn, cfg, {})
    monkeypatch.undo()
    assert old_fp != fp
    cdir = tmp_path / "run" / "cells" / cnn.id
    cdir.mkdir(parents=True)
    (cdir / "cell.json").write_text(json.dumps({"train_fp": old_fp, "fingerprint_of": old_hashed}))
    (cdir / "last.pt").write_bytes(b"")
    with pytest.raises(SpikeliteError, match=r"trained with other settings \(changed: model_defaults.pool\)"):
        B.run_bench(spec, quiet=True)
    assert os.listdir(tmp_path / "run") == ["cells"]


def test_result_json_keeps_a_confusion_matrix_row_on_one_line(tmp_path):
    # A 200-class confusion matrix written one number per line made each Tiny ImageNet cell's result.json
    # ~40,000 lines; rows of numbers now stay on one line and the file reads back unchanged.
    import math

    import torch

    from spikelite._io import read_json, write_json

    conf = torch.arange(200 * 200).reshape(200, 200)
    obj = {"metrics": {"acc": 0.5, "confusion": conf, "per_class": [0.1, None, float("nan")]},
           "cells": [{"id": "a"}, {"id": "b"}], "empty": [], "path": tmp_path}
    p = write_json(tmp_path / "result.json", obj)
    text = p.read_text()
    assert len(text.splitlines()) < 230
    back = read_json(p)
    assert back["metrics"]["confusion"] == conf.tolist()
    assert back["metrics"]["per_class"][:2] == [0.1, None] and math.isnan(back["metrics"]["per_class"][2])
    assert back["cells"] == [{"id": "a"}, {"id": "b"}] and back["empty"] == [] and back["path"] == str(tmp_path)
