"""Pruning a checkpoint end to end: the greedy search, run_pruning with fine-tuning through
spikelite.train, and the ``spikelite prune`` command line (explicit keep sets, the paper's
schedules, any other schedule as a strategy, the importance report, bad input)."""

from __future__ import annotations

import json

import pytest

from spikelite import checkpoint as C
from spikelite import prune as P
from spikelite import train as T
from spikelite.cli import main as cli_main
from spikelite.models import create_model


# ----------------------------------------------------------------------------------------------
# strategies end to end: greedy, the CLI
# ----------------------------------------------------------------------------------------------


def test_greedy_search_keeps_the_best_within_the_drop_and_stops_at_the_energy_budget():
    cost = {"a": 0.005, "b": 0.001, "c": 0.05, "d": 0.002}  # accuracy lost by removing each module

    def cand(label, kept, acc, energy):
        return P.Candidate(label, list(kept), [], acc, acc, 100, 100, energy, 0.0, 0.0, 0.0)

    def try_remove(model, current, name, step):  # every removal saves 2 mJ
        kept = [k for k in current.kept if k != name]
        return kept, cand(name, kept, current.accuracy - cost[name], current.energy_mj - 2.0)

    base = cand("unpruned", ["a", "b", "c", "d"], 0.90, 10.0)
    tried, best, model, steps, stop = P.greedy_search(base, base.kept, rank=sorted, try_remove=try_remove,
                                                      max_drop=1.0, energy_budget_mj=5.0, candidates_per_step=2)
    assert [(c.label, c.status) for c in tried] == [
        ("a", "within limit"), ("b", "accepted"),  # both within 1 point: the more accurate one is kept
        ("a", "accepted"), ("c", "rejected: drop 5.10 > 1 pts"),
        ("c", "rejected: drop 5.60 > 1 pts"), ("d", "accepted")]
    assert best.kept == model == ["c"] and best.energy_mj == 4.0 and "energy budget met" in stop
    assert [s["ranking"] for s in steps] == [["a", "b", "c", "d"], ["a", "c", "d"], ["c", "d"]]
    # one candidate per step and a tight limit: the first removal is rejected, the baseline stays
    tried, best, _, _, stop = P.greedy_search(base, base.kept, rank=sorted, try_remove=try_remove, max_drop=0.1,
                                              energy_budget_mj=None)
    assert best is base and len(tried) == 1 and "accuracy-drop limit 0.1 pts reached" in stop


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    """A SqueezeNet CNN trained briefly on 8x8 digits (a real checkpoint from spikelite.train)."""
    out = tmp_path_factory.mktemp("cnn")
    cfg = T.load_config(None, {"model.name": "squeezenet1_1", "data.dataset": "digits", "data.image_size": 8,
                               "threads": 1, "quiet": True, "tensorboard": False, "batch_size": 64, "epochs": 1,
                               "optim.lr": 0.05, "data.train_subset": 512, "data.val_subset": 96, "out": str(out)})
    T.train(cfg)
    return out / "last.pt"


def test_greedy_prunes_a_checkpoint_to_an_energy_budget(digits_ckpt, tmp_path):
    cfg = P.PruneConfig(strategy="greedy", energy_budget=0.75, max_drop=100.0, finetune_epochs=1,
                        calibration_size=64, energy_samples=16, val_subset=96, threads=1, quiet=True,
                        ablation=False, overrides=["data.train_subset=128", "optim.lr=0.01"])
    res = P.run_pruning(digits_ckpt, cfg, tmp_path / "g.pt")
    budget = 0.75 * res.baseline.energy_mj
    accepted = [c for c in res.candidates if c.status.startswith("accepted")]
    assert accepted and res.chosen is accepted[-1]
    assert res.chosen.energy_mj <= budget < min(c.energy_mj for c in accepted[:-1] + [res.baseline])
    assert "energy budget met" in res.stop_reason
    for c in accepted:  # each was fine-tuned by spikelite.train (its run directory holds the log)
        assert c.checkpoint and (tmp_path / "g.runs").exists()
    model, meta = C.load_model(tmp_path / "g.pt")
    assert meta["model_spec"]["keep"] == res.chosen.kept == meta["prune"]["keep"]
    table = (tmp_path / "g.table.md").read_text()
    assert "| unpruned |" in table and "Spearman" not in table.split("## Module importance")[0]
    rows = (tmp_path / "g.table.csv").read_text().strip().splitlines()
    assert len(rows) == 2 + len(res.candidates)
    assert json.loads((tmp_path / "g.json").read_text())["chosen"]["kept"] == res.chosen.kept


def test_cli_keep_and_paper_schedules(digits_ckpt, tmp_path, capsys):
    out = tmp_path / "ref1.pt"
    rc = cli_main(["prune", str(digits_ckpt), "--keep", "F4,F6,F8,F9", "--finetune-epochs", "1", "--train-subset",
                   "128", "--lr", "0.01", "--calibration-size", "64", "--energy-samples", "16", "--val-subset", "96",
                   "--threads", "1", "--quiet", "-o", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| keep | F4, F6, F8, F9 |" in printed and "chosen" in printed
    model, meta = C.load_model(out)
    assert meta["model_spec"]["keep"] == ["fire4", "fire6", "fire8", "fire9"]
    assert meta["prune"]["removed"] == ["fire2", "fire3", "fire5", "fire7"]
    assert meta["prune"]["params"] < meta["prune"]["source_params"]
    report = json.loads((tmp_path / "ref1.json").read_text())
    imp = report["importance"]
    assert [m["name"] for m in imp["modules"]] == [f"fire{i}" for i in range(2, 10)]
    assert imp["spearman"] is None or -1 <= imp["spearman"] <= 1
    assert cli_main(["eval", str(out), "--split", "val", "--threads", "1"]) == 0

    # every paper schedule, evaluated as pruned (0 epochs): the kept lists and smaller models
    out2 = tmp_path / "paper.pt"
    assert cli_main(["prune", str(digits_ckpt), "--strategy", "paper", "--finetune-epochs", "0", "--no-ablation",
                     "--calibration-size", "32", "--energy-samples", "8", "--val-subset", "48", "--threads", "1",
                     "--quiet", "-o", str(out2)]) == 0
    rep = json.loads((tmp_path / "paper.json").read_text())
    assert [c["label"] for c in rep["candidates"]] == list(P.PAPER_SCHEDULES)
    for c in rep["candidates"]:
        assert c["kept"] == list(P.PAPER_SCHEDULES[c["label"]])
        assert c["params"] < rep["baseline"]["params"] and c["energy_mj"] < rep["baseline"]["energy_mj"]
    assert "| ref-1 | F4, F6, F8, F9 |" in (tmp_path / "paper.table.md").read_text()

    # the importance report only ranks: its header says so instead of naming a fine-tuning budget
    imp_dir = tmp_path / "imp"
    imp_dir.mkdir()
    assert cli_main(["prune", str(digits_ckpt), "--strategy", "importance", "--calibration-size", "32",
                     "--energy-samples", "8", "--val-subset", "48", "--threads", "1", "--quiet",
                     "-o", str(imp_dir / "importance.json")]) == 0
    [md] = [f for f in imp_dir.iterdir() if f.suffix == ".md"]
    header = md.read_text().split("## Module importance")[0]
    assert "a ranking only" in header and "epoch(s) per candidate" not in header


def test_cli_takes_any_schedule_as_its_strategy(digits_ckpt, tmp_path, capsys):
    common = ["--finetune-epochs", "0", "--no-ablation", "--calibration-size", "32", "--energy-samples", "8",
              "--val-subset", "48", "--threads", "1", "--quiet"]
    # a ranked schedule: rank once by exact ablation on the calibration data, remove the least important module
    out = tmp_path / "abl.pt"
    assert cli_main(["prune", str(digits_ckpt), "--strategy", "Ablation-1", *common, "-o", str(out)]) == 0
    assert "| ablation-1 |" in capsys.readouterr().out
    rep = json.loads((tmp_path / "abl.json").read_text())
    [cand] = rep["candidates"]
    fires = [f"fire{i}" for i in range(2, 10)]
    ranking = rep["steps"][0]["ranking"]
    assert rep["strategy"] == cand["label"] == "ablation-1" and sorted(ranking) == sorted(fires)
    assert cand["removed"] == [ranking[0]] and cand["kept"] == [n for n in fires if n != ranking[0]]
    assert all(m["ablation_loss"] is not None for m in rep["importance"]["modules"])  # needed despite --no-ablation
    _, meta = C.load_model(out)
    assert meta["prune"]["strategy"] == "ablation-1" and meta["model_spec"]["keep"] == cand["kept"]
    # keep:a+b is --keep a,b under its own label; F4, paths and any case work
    out = tmp_path / "keep.pt"
    assert cli_main(["prune", str(digits_ckpt), "--strategy", "keep:F4+features.9,fire8+FIRE9", *common,
                     "-o", str(out)]) == 0
    assert "| keep:f4+features.9+fire8+fire9 | F4, F6, F8, F9 |" in capsys.readouterr().out
    _, meta = C.load_model(out)
    assert meta["model_spec"]["keep"] == ["fire4", "fire6", "fire8", "fire9"]
    assert meta["prune"]["strategy"] == "keep:f4+features.9+fire8+fire9"
    out = tmp_path / "rm.pt"
    assert cli_main(["prune", str(digits_ckpt), "--strategy", "remove:F2,F3", *common, "-o", str(out)]) == 0
    capsys.readouterr()
    assert C.load_model(out)[1]["prune"]["removed"] == ["fire2", "fire3"]


def test_cli_bad_input_exits_2_and_writes_nothing(digits_ckpt, tmp_path, capsys):
    out = tmp_path / "bad.pt"
    common = [str(digits_ckpt), "--threads", "1", "--quiet", "-o", str(out)]
    cases = [
        (["--keep", "fire4,fire99"], "unknown module(s) 'fire99' in squeezenet1_1; valid names: fire2"),
        (["--remove", "F2,F3,F4,F5,F6,F7,F8,F9"], "would remove every macro module"),
        (["--strategy", "greedy"], "greedy needs a stopping rule"),
        (["--strategy", "greedy", "--energy-budget", "7"], "as a fraction must be in (0, 1]"),
        (["--strategy", "ref-1", "--keep", "fire2"], "--keep/--remove go with --strategy keep"),
        ([], "choose --strategy"),
        (["--strategy", "rank-3"], "unknown strategy 'rank-3'; choose keep, paper, greedy, importance or a schedule"),
        (["--strategy", "ablation-8"], "ablation-8 removes 8 modules but squeezenet1_1"),
        (["--strategy", "keep:F4+fire99"], "unknown module(s) 'fire99' in squeezenet1_1"),
        (["--strategy", "remove:F2,F3,F4,F5,F6,F7,F8,F9"], "would remove every macro module"),
        (["--strategy", "taylor-1", "--keep", "fire2"], "--keep/--remove go with --strategy keep, not taylor-1"),
    ]
    for extra, message in cases:
        assert cli_main(["prune", *common, *extra]) == 2
        assert message in capsys.readouterr().err
    # a non-SqueezeNet checkpoint refuses the paper's schedules; a one-module model has nothing to remove
    shuf = C.save_checkpoint(tmp_path / "shuf.pt", create_model("shufflenetv2_x0_3", width=0.25, image_size=8),
                             meta={"data": {"dataset": "digits", "image_size": 8}})
    assert cli_main(["prune", str(shuf), "--strategy", "ref-1", "-o", str(out)]) == 2
    assert "keep SqueezeNet fire modules; shufflenetv2_x0_3 is a shufflenetv2" in capsys.readouterr().err
    one = C.save_checkpoint(tmp_path / "one.pt", create_model("squeezenet1_1", image_size=8, keep=["fire9"]),
                            meta={"data": {"dataset": "digits", "image_size": 8}})
    assert cli_main(["prune", str(one), "--strategy", "greedy", "--max-drop", "1", "-o", str(out)]) == 2
    assert "nothing removable: only fire9 is left" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pt", "shuf.pt"]
