"""Issue #28 in pruning: checkpoints record absolute paths and stay usable from any directory and when moved
(a missing teacher is an error only when fine-tuning distils from it, and then before any work); older
checkpoints' relative paths are read from the directory their run started in; one writer per output."""

from __future__ import annotations

import shutil
import time

import pytest

from spikelite import SpikeliteError
from spikelite import checkpoint as C
from spikelite import prune as P
from spikelite import train as T
from spikelite._io import run_lock
from spikelite.cli import main as cli_main

TINY = {"model.name": "squeezenet1_1", "data.dataset": "digits", "data.image_size": 8, "threads": 1, "quiet": True,
        "tensorboard": False, "batch_size": 32, "epochs": 1, "optim.lr": 0.05, "data.train_subset": 64,
        "data.val_subset": 32}
FT = ["data.train_subset=32", "batch_size=32"]


def _prune(ckpt, out, **kw) -> P.PruneResult:
    cfg = P.PruneConfig(**{"strategy": "ref-1", "finetune_epochs": 1, "calibration_size": 32, "energy_samples": 8,
                           "val_subset": 32, "threads": 1, "quiet": True, "ablation": False, **kw})
    return P.run_pruning(ckpt, cfg, out)


def _is_abs(p) -> bool:
    return isinstance(p, str) and p.startswith("/")


def test_checkpoints_trained_with_relative_paths_work_from_anywhere_and_when_moved(tmp_path, monkeypatch):
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    monkeypatch.setenv("SPIKELITE_NATIVE", "0")  # no compile step for the tiny SNN in a fresh cache
    monkeypatch.chdir(a)  # the runs are started here with relative paths, as `spikelite demo` does
    T.train(T.load_config(None, {**TINY, "out": "cnn"}))
    T.train(T.load_config(None, {**TINY, "mode": "snn", "snn.T": 2, "init_from": "cnn/last.pt",
                                 "distill.teacher": "cnn/last.pt", "out": "snn"}))
    snn = a / "snn" / "last.pt"
    ckpt = C.read_checkpoint(snn)
    cfg = ckpt["config"]
    assert cfg["init_from"] == cfg["distill"]["teacher"] == str(a / "cnn" / "last.pt") and cfg["out"] == str(a / "snn")
    assert ckpt["source_checkpoint"]["path"] == ckpt["teacher_checkpoint"]["path"] == str(a / "cnn" / "last.pt")

    # an older checkpoint: the same run recorded with relative paths (as spikelite wrote them before)
    model, meta = C.load_model(snn)
    old = {k: v for k, v in meta.items() if k not in ("model_spec", "kind", "snn")}
    old["config"] = {**cfg, "out": "old", "init_from": "cnn/last.pt",
                     "distill": {**cfg["distill"], "teacher": "cnn/last.pt"}}
    old["source_checkpoint"] = {**meta["source_checkpoint"], "path": "cnn/last.pt"}
    old["teacher_checkpoint"] = {**meta["teacher_checkpoint"], "path": "cnn/last.pt"}
    C.save_checkpoint(a / "old" / "last.pt", model, meta=old)

    monkeypatch.chdir(b)  # another directory: the issue's `cd "$(mktemp -d)" && spikelite prune ...`
    res = _prune(snn, "p.pt", overrides=FT)
    assert (b / "p.pt").is_file() and res.chosen is not None
    _prune(a / "old" / "last.pt", "q.pt", overrides=FT)  # its relative paths are read from a/, where it ran
    assert (b / "q.pt").is_file()

    # moved, and its teacher gone: the teacher is needed only when fine-tuning distils from it
    moved = c / "moved.pt"
    shutil.copy(snn, moved)
    shutil.rmtree(a / "cnn")
    t0 = time.perf_counter()
    with pytest.raises(SpikeliteError, match=r"fine-tuning distils from .*cnn/last.pt .*not on disk: pass --set "
                                             r"distill.teacher=PATH, or --set distill.weight=0"):
        _prune(moved, "r.pt", overrides=FT)
    assert time.perf_counter() - t0 < 5 and not (b / "r.runs").exists()  # before any work
    _prune(moved, "r.pt", overrides=FT + ["distill.weight=0"])
    _prune(moved, "s.pt", finetune_epochs=0)
    assert (b / "r.pt").is_file() and (b / "s.pt").is_file()
    # spikelite train --init-from the moved SNN, distillation off: its recorded teacher is not looked for
    assert cli_main(["train", "--init-from", str(moved), "--epochs", "1", "--train-subset", "32", "--val-subset", "32",
                     "--batch-size", "32", "--threads", "1", "--quiet", "--no-tensorboard", "--T", "2",
                     "--out", "ft"]) == 0
    # a recipe that names a teacher but gives it no weight does not need it either
    T.train(T.load_config(None, {**TINY, "mode": "snn", "snn.T": 2, "init_from": str(moved),
                                 "distill.teacher": str(a / "cnn" / "last.pt"), "distill.weight": 0.0, "out": "w"}))
    with pytest.raises(SpikeliteError, match="distill.teacher: no such checkpoint"):
        T.train(T.load_config(None, {**TINY, "mode": "snn", "snn.T": 2, "init_from": str(moved),
                                     "distill.teacher": str(a / "cnn" / "last.pt"), "out": "w2"}))


def test_a_second_prune_to_the_same_output_fails_at_once(tmp_path):
    out = tmp_path / "p.pt"
    with run_lock(tmp_path, "spikelite prune", name=".p.pt.lock"):
        # refused before the checkpoint is even read (this one does not exist)
        with pytest.raises(SpikeliteError, match=r"is in use by spikelite prune \(pid \d+.*choose another -o"):
            _prune(tmp_path / "missing.pt", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
