"""spikelite.bench: spec validation, grid expansion, resumable runs, failed cells, the ray executor, the demo."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from spikelite import SpikeliteError
from spikelite import bench as B
from spikelite.bench import cells as BC
from spikelite.bench import spec as BS
from spikelite.cli import bench as CB
from spikelite.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]

# Tiny: ShuffleNetV2 x0.3 at width 0.25 on 8x8 digits, small subsets, one epoch each.
TINY_MODEL = {"name": "shufflenetv2_x0_3", "width": 0.25, "label": "tiny"}
TINY_DATA = {"name": "digits", "image_size": 8, "train_subset": 128, "val_subset": 48}
TINY_RECIPE = {"epochs": 1, "batch_size": 32, "threads": 1, "optim": {"lr": 0.05},
               "snn": {"neuron": {"v_threshold": 0.5, "decay_input": False}}}
TINY_EVAL = {"split": "test", "subset": 60, "energy_samples": 24, "batch_size": 64}


def tiny_spec(out, **over):
    raw = {"name": "t", "out": str(out), "models": [TINY_MODEL], "datasets": [TINY_DATA],
           "variants": ["cnn", "snn", "snn-p"], "T": [2], "seeds": [0], "recipe": TINY_RECIPE,
           "prune": {"schedules": ["ref-1"], "fallback": "ablation-2", "calibration_size": 32}, "eval": TINY_EVAL}
    raw.update(over)
    return raw


@pytest.fixture(autouse=True)
def _isolated(isolated_run):  # tests/conftest.py: own cache, eager kernels, one thread
    yield


def _env():
    env = dict(os.environ, SPIKELITE_COMPILE="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _rows(run_dir):
    with open(Path(run_dir) / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------
# the spec
# ----------------------------------------------------------------------------------------------


def test_invalid_spec_lists_every_problem(tmp_path):
    raw = {
        "models": ["squeezenet1_1", "resnet9000", {"name": "mnasnet_b1", "widht": 0.5}],
        "datasets": ["digits", "cifar11", {"name": "cifar10", "root": str(tmp_path / "nowhere")},
                    {"name": "cifar100"}],
        "variants": ["cnn", "snn", "ann"],
        "T": [4, 0],
        "epochs": 3,
        "recipe": {"optim": {"lr": 0.1, "lrr": 1}},
        "eval": {"split": "train", "profiles": ["45nm-fp32", "7nm-magic"], "samples": 5},
        "prune": {"schedules": ["ref-1", "ref-9"]},
    }
    with pytest.raises(SpikeliteError) as info:
        B.build_spec(raw)
    msg = str(info.value)
    for needle in ("resnet9000", "'widht'", "cifar11", "does not exist", "cifar100", "no data path", "'ann'",
                   "T: 0", "'epochs'", "eval.split", "7nm-magic", "'samples'", "ref-9"):
        assert needle in msg, (needle, msg)
    assert msg.count("\n  - ") >= 12  # one line per problem


def test_recipe_problems_and_grid_owned_keys_are_listed():
    raw = {"models": ["squeezenet1_1"], "datasets": ["digits"], "recipe": {"optim": {"lr": 0.1, "lrr": 1}},
           "snn": {"seed": 3, "snn": {"T": 8}}}
    with pytest.raises(SpikeliteError) as info:
        B.build_spec(raw)
    msg = str(info.value)
    assert "snn.seed is set by the grid" in msg and "snn.snn.T is set by the grid" in msg
    raw = {"models": ["squeezenet1_1"], "datasets": ["digits"], "recipe": {"optim": {"lrr": 1}}}
    with pytest.raises(SpikeliteError, match="'lrr'.*valid keys"):
        B.build_spec(raw)
    # a model too deep for the images is caught before anything runs
    with pytest.raises(SpikeliteError, match="mnasnet_b1 on digits.*too small"):
        B.build_spec({"models": ["mnasnet_b1"], "datasets": [{"name": "digits", "image_size": 8}]})


def test_cli_rejects_bad_spec_before_training(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    out = tmp_path / "run"
    spec.write_text(yaml.safe_dump({"out": str(out), "models": ["nope"], "datasets": ["cifar10"]}))
    assert cli_main(["bench", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "cifar10" in err and "no data path" in err
    assert not out.exists()  # nothing written


def test_data_paths_are_parameters(tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAR10_ROOT", raising=False)
    monkeypatch.delenv("CIFAR100_ROOT", raising=False)
    monkeypatch.delenv("TINYIMAGENET_ROOT", raising=False)
    with pytest.raises(SpikeliteError) as info:
        B.load_spec(REPO / "configs" / "paper.yaml")
    msg = str(info.value)
    assert "CIFAR10_ROOT" in msg and "CIFAR100_ROOT" in msg and "TINYIMAGENET_ROOT" in msg
    for name in ("cifar10", "cifar100", "tinyimagenet"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("CIFAR10_ROOT", str(tmp_path / "cifar10"))
    spec = B.load_spec(REPO / "configs" / "paper.yaml",
                       roots={"cifar100": str(tmp_path / "cifar100"), "tinyimagenet": str(tmp_path / "tinyimagenet")})
    assert [d.root for d in spec.datasets] == [str(tmp_path / n) for n in ("cifar10", "cifar100", "tinyimagenet")]
    assert [m.family for m in spec.models] == ["squeezenet", "shufflenetv2", "mnasnet", "mixnet", "xception"]
    cells = B.expand_grid(spec)
    # per dataset and model: cnn, cnn-p, snn (T=4), snn-p
    assert len(cells) == 3 * 5 * 4
    assert {c.schedule for c in cells if c.model.family == "squeezenet" and c.schedule} == {"ref-1"}
    assert {c.schedule for c in cells if c.model.family != "squeezenet" and c.schedule} == {"ablation-25%"}


def test_demo_yaml_is_the_demo_spec():
    from spikelite.cli.demo import DEMO_SPEC

    assert yaml.safe_load((REPO / "configs" / "demo.yaml").read_text()) == DEMO_SPEC
    spec = B.load_spec(REPO / "configs" / "demo.yaml")
    assert len(B.expand_grid(spec)) == 2 * (1 + 2 + 2)


# ----------------------------------------------------------------------------------------------
# the grid
# ----------------------------------------------------------------------------------------------


def test_grid_expansion_and_dependencies():
    spec = B.build_spec({"models": ["squeezenet1_1", "shufflenetv2_x0_5"], "datasets": ["digits"],
                         "variants": ["cnn", "snn", "snn-p"], "T": [2, 4], "seeds": [0, 1]})
    cells = B.expand_grid(spec)
    assert len(cells) == 2 * 2 * (1 + 2 + 2)
    ids = [c.id for c in cells]
    assert len(set(ids)) == len(ids)
    pos = {c.id: i for i, c in enumerate(cells)}
    for c in cells:
        for d in c.deps:
            assert pos[d] < pos[c.id]  # dependencies first
        if c.variant == "snn":
            assert c.deps == [BC._cell_id(c.dataset, c.model, "cnn", c.seed)]
        if c.variant == "snn-p":
            assert c.deps == [BC._cell_id(c.dataset, c.model, "snn", c.seed, c.T)]
            assert c.schedule == ("ref-1" if c.model.name.startswith("squeezenet") else "ablation-25%")
    assert "digits__squeezenet1_1__snn-p__T4__ref-1__s1" in ids
    # a variant brings what it needs; from scratch the SNN needs no CNN
    only_p = B.expand_grid(B.build_spec({"models": ["squeezenet1_1"], "datasets": ["digits"], "variants": ["snn-p"]}))
    assert [c.variant for c in only_p] == ["cnn", "snn", "snn-p"]
    scratch = B.expand_grid(B.build_spec({"models": ["squeezenet1_1"], "datasets": ["digits"], "variants": ["snn"],
                                          "snn_init": "scratch", "T": [2, 4]}))
    assert [(c.variant, c.deps) for c in scratch] == [("snn", []), ("snn", [])]
    # an entry's variants narrow the grid's for that model only (a study whose last family has no pruned pair)
    narrow = B.build_spec({"models": ["squeezenet1_1", {"name": "shufflenetv2_x0_5", "variants": ["cnn", "snn"]}],
                           "datasets": ["digits"], "variants": ["cnn", "snn", "snn-p", "cnn-p"]})
    by = [(c.model.name, c.variant) for c in B.expand_grid(narrow)]
    assert by == [("squeezenet1_1", "cnn"), ("squeezenet1_1", "cnn-p"), ("squeezenet1_1", "snn"),
                  ("squeezenet1_1", "snn-p"), ("shufflenetv2_x0_5", "cnn"), ("shufflenetv2_x0_5", "snn")]
    assert B.build_spec(narrow.to_dict()).models[1].variants == ["cnn", "snn"]  # survives the resolved spec
    # ... and changes no cell's fingerprint: finished cells of a grid stay finished when an entry narrows it
    wide = B.build_spec({**narrow.to_dict(), "models": ["squeezenet1_1", "shufflenetv2_x0_5"]})
    wide_cells = {c.id: c for c in B.expand_grid(wide)}
    for a in B.expand_grid(narrow)[4:]:
        b = wide_cells[a.id]
        fa = BC._fingerprints(narrow, a, B.cell_config(narrow, a, Path("r")), {})
        assert fa == BC._fingerprints(wide, b, B.cell_config(wide, b, Path("r")), {})
    assert "variants" not in B.expand_grid(wide)[0].to_dict()["model"]
    with pytest.raises(SpikeliteError) as err:
        B.build_spec({"models": [{"name": "squeezenet1_1", "variants": ["cnn", "snnp"]},
                                 {"name": "shufflenetv2_x0_5", "variants": ["snn-p"]}],
                      "datasets": ["digits"], "variants": ["cnn", "snn"]})
    for part in ("models[0] (squeezenet1_1): unknown variant(s) 'snnp'",
                 "models[1] (shufflenetv2_x0_5): variants snn-p not among the grid's variants (cnn, snn)"):
        assert part in str(err.value), part
    # the recipe layers: shared recipe < variant section < grid-owned keys
    spec = B.build_spec({"models": ["squeezenet1_1"], "datasets": [{"name": "digits", "image_size": 8}],
                         "recipe": {"epochs": 7, "optim": {"lr": 0.2}}, "snn": {"optim": {"lr": 0.01}}, "T": [3]})
    cnn, snn = B.expand_grid(spec)[:2]
    c1, c2 = B.cell_config(spec, cnn, Path("r")), B.cell_config(spec, snn, Path("r"))
    assert (c1.mode, c1.epochs, c1.optim.lr, c1.init_from) == ("cnn", 7, 0.2, None)
    assert (c2.mode, c2.epochs, c2.optim.lr, c2.snn.T, c2.data.image_size) == ("snn", 7, 0.01, 3, 8)
    assert c2.init_from == os.path.abspath(Path("r") / "cells" / cnn.id / "last.pt")  # absolute: see issue #28
    assert c2.quiet and not c2.tensorboard
    # distill: cnn (the default): the converted SNN learns from the CNN it starts from; the CNN from no one
    assert spec.distill == "cnn" and c2.distill.teacher == c2.init_from and c1.distill.teacher is None
    fp_kd = BC._fingerprints(spec, snn, c2, {})[0]
    # a recipe key added later (train.LATE_KEYS) stays out of the fingerprint at its neutral value, so
    # cells finished before it existed stay finished; any other value is a different recipe
    assert "optim.neuron_weight_decay" not in BC._fingerprints(spec, snn, c2, {})[2]["train"]["recipe"]
    decayed = B.build_spec({**spec.to_dict(), "snn": {"optim": {"lr": 0.01, "neuron_weight_decay": 0.1}}})
    c4 = B.cell_config(decayed, B.expand_grid(decayed)[1], Path("r"))
    assert c4.optim.neuron_weight_decay == 0.1 and BC._fingerprints(decayed, snn, c4, {})[0] != fp_kd
    off = B.build_spec({**spec.to_dict(), "distill": "none"})
    c3 = B.cell_config(off, B.expand_grid(off)[1], Path("r"))
    assert c3.distill.teacher is None and BC._fingerprints(off, snn, c3, {})[0] != fp_kd
    with pytest.raises(SpikeliteError, match="distill must be one of cnn, none, got 'teacher'"):
        B.build_spec({"models": ["squeezenet1_1"], "datasets": ["digits"], "distill": "teacher"})
    with pytest.raises(SpikeliteError, match="snn.distill.teacher: with distill: cnn the grid sets"):
        B.build_spec({"models": ["squeezenet1_1"], "datasets": ["digits"], "snn": {"distill": {"teacher": "t.pt"}}})
    mine = B.build_spec({"models": ["squeezenet1_1"], "datasets": ["digits"], "distill": "none",
                         "snn": {"distill": {"teacher": "t.pt", "weight": 0.3}}})
    c4 = B.cell_config(mine, B.expand_grid(mine)[1], Path("r"))
    assert (c4.distill.teacher, c4.distill.weight) == ("t.pt", 0.3)


def test_bench_schedules_speak_prune_s_grammar():
    # one vocabulary: the bench accepts what spikelite prune accepts (F4, module paths, any case, ',' or '+')
    # and names cells by the canonical label; a name the model does not have is a spec problem
    spec = B.build_spec({"models": ["squeezenet1_1"], "datasets": ["digits"], "variants": ["snn-p"],
                         "prune": {"schedules": ["keep:F4+F6,fire8+FIRE9", "Ablation-2", "ref-1"]}})
    labels = [c.schedule for c in B.expand_grid(spec) if c.variant == "snn-p"]
    assert labels == ["keep:fire4+fire6+fire8+fire9", "ablation-2", "ref-1"]
    with pytest.raises(SpikeliteError, match="fire99"):
        B.build_spec({"models": ["squeezenet1_1"], "datasets": ["digits"], "variants": ["snn-p"],
                      "prune": {"schedules": ["keep:F4+fire99"]}})
    with pytest.raises(SpikeliteError, match="prune schedule"):
        B.build_spec({"models": ["squeezenet1_1"], "datasets": ["digits"], "variants": ["snn-p"],
                      "prune": {"schedules": ["rank-3"]}})


def test_flags_override_the_spec(tmp_path):
    import argparse

    p = argparse.ArgumentParser()
    CB.add_grid_flags(p)
    p.add_argument("spec")
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump({"models": ["squeezenet1_1", {"name": "mnasnet_b1", "width": 0.12,
                                                                      "label": "mnasnet"}],
                                         "datasets": [{"name": "digits", "image_size": 16}], "T": [4],
                                         "snn": {"epochs": 5}}))
    args = p.parse_args([str(spec_file), "--models", "mnasnet,shufflenetv2_x0_5@0.5", "--T", "2,8", "--epochs", "1",
                         "--set", "eval.energy_samples=16", "--out", str(tmp_path / "o")])
    spec = CB.spec_from_args(args)
    assert [(m.name, m.width, m.label) for m in spec.models] == [("mnasnet_b1", 0.12, "mnasnet"),
                                                                ("shufflenetv2_x0_5", 0.5, "shufflenetv2_x0_5@0.5")]
    assert spec.T == [2, 8] and spec.eval.energy_samples == 16 and spec.out == str(tmp_path / "o")
    assert spec.recipe["epochs"] == 1 and spec.variant_recipes["snn"]["epochs"] == 1
    assert spec.datasets[0].options == {"image_size": 16}


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------


def test_end_to_end_tiny_bench_resumes_and_skips_finished_cells(tmp_path):
    out = tmp_path / "run"
    spec = B.build_spec(tiny_spec(out))
    summary = B.run_bench(spec, quiet=True)
    assert summary["counts"] == {"ok": 3}
    rows = _rows(out)
    assert [r["variant"] for r in rows] == ["cnn", "snn", "snn-p"]
    for r in rows:
        cdir = out / "cells" / r["id"]
        for f in ("config.yaml", "last.pt", "log.csv", "result.json", "energy.json", "cell.json"):
            assert (cdir / f).is_file(), (r["id"], f)
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and r["eval_n"] == "60" and r["eval_split"] == "test"
        assert float(r["energy_mj@45nm-fp32-mem"]) > float(r["energy_mj@45nm-fp32"]) > 0
        assert int(r["params"]) > 0
    cnn, snn, snnp = rows
    assert float(cnn["acs"]) == 0 and float(cnn["macs"]) > 0
    assert float(snn["acs"]) > 0 and 0 < float(snn["firing_rate"]) < 1
    # the SNN is the CNN converted: its epoch-0 row is the converted network, compared with its own CNN
    cfg = yaml.safe_load((out / "cells" / snn["id"] / "config.yaml").read_text())
    assert cfg["init_from"].endswith(f"{cnn['id']}/best.pt") and cfg["mode"] == "snn" and cfg["snn"]["T"] == 2
    assert snn["start_val_acc"] != "" and snn["cnn_accuracy"] == cnn["accuracy"]
    ratio = float(snn["energy_ratio@45nm-fp32"])
    assert ratio == pytest.approx(float(cnn["energy_mj@45nm-fp32"]) / float(snn["energy_mj@45nm-fp32"]), rel=1e-4)
    # the pruned SNN has fewer parameters, removed the two units whose ablation costs least
    # (ablation-2), and records the ranking it used
    assert int(snnp["params"]) < int(snn["params"])
    assert len(snnp["removed"].split("+")) == 2 and snnp["schedule"] == "ablation-2"
    prune = json.loads((out / "cells" / snnp["id"] / "prune.json").read_text())
    imp = prune["importance"]
    assert len(imp["ranking_ablation"]) == 16 and len(imp["ablation_loss"]) == 16
    cheapest = sorted(imp["ablation_loss"], key=imp["ablation_loss"].get)[:2]
    assert set(snnp["removed"].split("+")) == set(cheapest) == set(imp["ranking_ablation"][:2])
    # Parquet beside the CSV, same rows
    import pyarrow.parquet as pq

    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == 3 and table.column("id").to_pylist() == [r["id"] for r in rows]
    assert not (out / "report.md").exists()  # the bench writes results; the report is the report stage's
    from spikelite.report import build_report

    build_report(out)
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    # re-running skips every finished cell: nothing is trained or measured again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*") if p.is_file()}
    again = B.run_bench(B.build_spec(tiny_spec(out)), quiet=True)
    assert again["counts"] == {"ok": 3}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a changed recipe is refused for cells that trained under the old one, before anything runs
    changed = tiny_spec(out, recipe={**TINY_RECIPE, "optim": {"lr": 0.02}})
    with pytest.raises(SpikeliteError, match="trained with other settings.*optim.lr"):
        B.run_bench(B.build_spec(changed), quiet=True)
    # changed evaluation settings re-measure without retraining
    remeasure = tiny_spec(out, eval={**TINY_EVAL, "subset": 40})
    res = B.run_bench(B.build_spec(remeasure), quiet=True)
    assert res["counts"] == {"ok": 3}
    assert all(r["eval_n"] == "40" for r in _rows(out))
    assert all((out / "cells" / r["id"] / "last.pt").stat().st_mtime_ns == stamps[out / "cells" / r["id"] / "last.pt"]
               for r in rows)


def test_imported_checkpoints_are_measured_not_trained(tmp_path):
    # a first grid trains a CNN and its SNN; a second grid imports both files and prunes the imported SNN
    first = tmp_path / "first"
    B.run_bench(B.build_spec(tiny_spec(first, variants=["cnn", "snn"])), quiet=True)
    trained = {r["variant"]: r for r in _rows(first)}
    cnn_ckpt = first / "cells" / trained["cnn"]["id"] / "best.pt"
    snn_ckpt = first / "cells" / trained["snn"]["id"] / "best.pt"
    out = tmp_path / "second"
    model = {**TINY_MODEL, "checkpoints": {"cnn": str(cnn_ckpt), "snn": str(snn_ckpt)}}
    spec = B.build_spec(tiny_spec(out, models=[model]))
    cells = B.expand_grid(spec)
    assert [(c.variant, bool(c.checkpoint)) for c in cells] == [("cnn", True), ("snn", True), ("snn-p", False)]
    assert cells[1].deps == [] and cells[2].deps == [cells[1].id]
    summary = B.run_bench(spec, quiet=True)
    assert summary["counts"] == {"ok": 3}
    rows = {r["variant"]: r for r in _rows(out)}
    for v in ("cnn", "snn"):
        cdir = out / "cells" / rows[v]["id"]
        assert not (cdir / "last.pt").exists() and not (cdir / "log.csv").exists()  # nothing trained
        res = json.loads((cdir / "result.json").read_text())
        assert res["imported"]["path"] == str(cnn_ckpt if v == "cnn" else snn_ckpt)
        # the same file under the same evaluation gives the same figures as in the grid that trained it
        for k in ("accuracy", "macro_f1", "params", "acs", "macs", "energy_mj@45nm-fp32"):
            assert rows[v][k] == trained[v][k], (v, k)
        # the epoch the file itself records (best.pt: the best epoch, 0 when the converted SNN was best)
        ckpt_epoch = torch.load(cnn_ckpt if v == "cnn" else snn_ckpt, weights_only=True)["epoch"]
        assert rows[v]["epochs"] == str(ckpt_epoch) and (float(rows[v]["train_seconds"]) > 0) == (ckpt_epoch > 0)
    assert rows["snn"]["start_val_acc"] == trained["snn"]["start_val_acc"] != ""
    assert rows["cnn"]["imported"] == str(cnn_ckpt) and rows["snn-p"]["imported"] == ""
    from spikelite.report import build_report

    report = Path(build_report(out)["markdown"]).read_text()
    assert f"imported: `{snn_ckpt}`" in report and "in this run" in report
    assert rows["snn"]["cnn_accuracy"] == rows["cnn"]["accuracy"]
    # the trained pruned cell started from the imported SNN file
    prune = json.loads((out / "cells" / rows["snn-p"]["id"] / "prune.json").read_text())
    assert prune["source"] == str(snn_ckpt) and (out / "cells" / rows["snn-p"]["id"] / "last.pt").is_file()
    # importing the pruned result too: one more grid, every cell imported, the schedule read from the file
    snnp_ckpt = out / "cells" / rows["snn-p"]["id"] / "best.pt"
    third = tmp_path / "third"
    model3 = {**TINY_MODEL, "checkpoints": {"cnn": str(cnn_ckpt), "snn": str(snn_ckpt), "snn-p": str(snnp_ckpt)}}
    cells3 = B.expand_grid(B.build_spec(tiny_spec(third, models=[model3])))
    assert all(c.checkpoint for c in cells3) and cells3[2].schedule.startswith("keep:")
    assert cells3[2].id.endswith("__snn-p__T2__" + BS._safe(cells3[2].schedule) + "__s0")
    # re-running measures nothing again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/result.json")}
    assert B.run_bench(B.build_spec(tiny_spec(out, models=[model])), quiet=True)["counts"] == {"ok": 3}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # bad imports: one error naming every problem, before anything runs
    bad = {**TINY_MODEL, "checkpoints": {"snn": str(cnn_ckpt), "cnn": str(tmp_path / "nope.pt"), "snn-p": str(snn_ckpt),
                                          "xyz": "a.pt"}}
    with pytest.raises(SpikeliteError) as err:
        B.build_spec(tiny_spec(tmp_path / "bad", models=[bad], T=[4]))
    msg = str(err.value)
    for part in ("is a CNN checkpoint; a snn cell needs an SNN one", "nope.pt does not exist",
                 "is not pruned", "unknown variant 'xyz'", "runs T=2; add it to T"):
        assert part in msg, part
    other = {"name": "squeezenet1_1", "label": "sq", "checkpoints": {"cnn": str(cnn_ckpt)}}
    with pytest.raises(SpikeliteError, match="holds a shufflenetv2_x0_3, not a squeezenet1_1"):
        B.build_spec(tiny_spec(tmp_path / "bad", models=[other], variants=["cnn"]))
    with pytest.raises(SpikeliteError, match="snn-p is not among the grid's variants"):
        B.build_spec(tiny_spec(tmp_path / "bad", models=[model3], variants=["cnn", "snn"]))
    # cnn-q, the convertible CNN, is imported only, and must be a QCFS CNN
    with pytest.raises(SpikeliteError, match="cnn-q cells are imported, not trained"):
        B.build_spec(tiny_spec(tmp_path / "bad", variants=["cnn", "cnn-q"]))
    relu_as_q = {**TINY_MODEL, "checkpoints": {"cnn": str(cnn_ckpt), "cnn-q": str(cnn_ckpt)}}
    with pytest.raises(SpikeliteError, match="has no QCFS activations"):
        B.build_spec(tiny_spec(tmp_path / "bad", models=[relu_as_q], variants=["cnn", "cnn-q"]))
    model_q, meta_q = torch_load_cnn_as_qcfs(cnn_ckpt, tmp_path / "q.pt")
    cells_q = B.expand_grid(B.build_spec(tiny_spec(tmp_path / "q", models=[{**TINY_MODEL, "checkpoints": {
        "cnn": str(cnn_ckpt), "cnn-q": str(tmp_path / "q.pt")}}], variants=["cnn", "cnn-q"])))
    assert [(c.variant, bool(c.checkpoint)) for c in cells_q] == [("cnn", True), ("cnn-q", True)]
    # measured, the QCFS CNN is priced as a low-bit network, and an SNN is set beside it
    q_out = tmp_path / "q_run"
    q_model = {**TINY_MODEL, "checkpoints": {"cnn": str(cnn_ckpt), "cnn-q": str(tmp_path / "q.pt"),
                                             "snn": str(snn_ckpt)}}
    B.run_bench(B.build_spec(tiny_spec(q_out, models=[q_model], variants=["cnn", "cnn-q", "snn"])), quiet=True)
    qrows = {r["variant"]: r for r in _rows(q_out)}
    assert qrows["cnn-q"]["activation_bits"] == "3" and qrows["cnn"]["activation_bits"] == ""  # L = 4: 5 values
    q_e = float(qrows["cnn-q"]["lowbit_energy_mj@45nm-fp32"])
    assert 0 < q_e < float(qrows["cnn-q"]["energy_mj@45nm-fp32"])  # cheaper than the same net at full width
    assert qrows["snn"]["qcnn_accuracy"] == qrows["cnn-q"]["accuracy"]
    assert float(qrows["snn"]["qcnn_lowbit_energy_mj@45nm-fp32"]) == q_e
    assert float(qrows["snn"]["lowbit_ratio@45nm-fp32"]) == pytest.approx(  # from the CSV's 6-digit figures
        q_e / float(qrows["snn"]["energy_mj@45nm-fp32"]), rel=2e-5)
    from spikelite.report import build_report

    md = Path(build_report(q_out)["markdown"]).read_text()
    assert "low-bit CNN/SNN (compute)" in md and "QCFS CNN acc %" in md


def torch_load_cnn_as_qcfs(src, dst):
    """The CNN at ``src`` rebuilt with QCFS activations (learned λ), saved to ``dst``."""
    from spikelite import checkpoint as C
    from spikelite.models import create_model

    cnn, meta = C.load_model(src)
    spec = {**meta["model_spec"], "act_levels": 4, "act_threshold": 1.0}
    q = create_model(**spec)
    q.load_state_dict(cnn.state_dict(), strict=False)
    C.save_checkpoint(dst, q, meta={k: meta[k] for k in ("data", "config") if k in meta})
    return q, meta


def test_failed_cell_is_recorded_and_the_others_go_on(tmp_path):
    out = tmp_path / "run"
    # the SNN fine-tuning diverges (a real NaN loss); the second model's cells still run
    raw = tiny_spec(out, models=[TINY_MODEL, {"name": "squeezenet1_1", "label": "sq"}],
                    snn={"optim": {"lr": 1.0e30, "warmup_epochs": 0}}, variants=["cnn", "snn", "snn-p"])
    summary = B.run_bench(B.build_spec(raw), quiet=True)
    status = {r["id"]: r["status"] for r in summary["cells"]}
    assert sorted(status.values()) == ["failed", "failed", "ok", "ok", "skipped", "skipped"]
    rows = {r["id"]: r for r in _rows(out)}
    for cid, s in status.items():
        assert rows[cid]["status"] == s
        if s == "failed":
            assert "NaN" in rows[cid]["error"] and (out / "cells" / cid / "error.txt").is_file()
        if s == "skipped":
            assert "which failed" in rows[cid]["error"]
        if s == "ok":
            assert "__cnn__" in cid and float(rows[cid]["accuracy"]) >= 0
    # the report still renders, listing the failures
    from spikelite.report import build_report

    html = Path(build_report(out)["html"]).read_text()
    assert "Cells that did not finish" in html and "NaN" in html


@pytest.mark.slow
def test_killed_bench_resumes_the_half_trained_cell(tmp_path):
    out = tmp_path / "run"
    raw = tiny_spec(out, variants=["cnn"], recipe={**TINY_RECIPE, "epochs": 4},
                    datasets=[{**TINY_DATA, "train_subset": 512}])
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "spikelite", "bench", str(spec_file), "--quiet", "--no-report"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = out / "cells" / "digits__tiny__cnn__s0" / "log.csv"
    deadline = time.time() + 90
    try:
        while time.time() < deadline:
            if log.exists() and len(log.read_text().splitlines()) >= 2:  # epoch 1 written, 3 to go
                break
            if proc.poll() is not None:
                pytest.fail(f"bench ended early: {proc.stdout.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("no epoch finished in time")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    before = log.read_text().splitlines()
    assert 2 <= len(before) < 5  # header + at least one epoch, not all four
    summary = B.run_bench(B.build_spec(raw), quiet=True)
    assert summary["counts"] == {"ok": 1}
    after = log.read_text().splitlines()
    assert len(after) == 5 and after[:len(before)] == before  # the finished epochs were not trained again


@pytest.mark.slow
def test_ray_executor_runs_cells_as_tasks(tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "run"
    raw = tiny_spec(out, variants=["cnn", "snn"], executor="ray", resources={"cpus": 1})
    spec = B.build_spec(raw)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"SPIKELITE_COMPILE": "0", "OMP_NUM_THREADS": "1",
                                       "SPIKELITE_CACHE": str(tmp_path / "cache")}})
    try:
        ex = B.RayExecutor(resources=spec.resources)
        summary = B.run_bench(spec, quiet=True, executor=ex)
        assert ray.is_initialized()  # a Ray instance started by the caller is left running
    finally:
        ray.shutdown()
    assert summary["counts"] == {"ok": 2}
    rows = _rows(out)
    assert [r["variant"] for r in rows] == ["cnn", "snn"]
    res = json.loads((out / "cells" / rows[1]["id"] / "result.json").read_text())
    assert res["status"] == "ok" and res["machine"]["cpus"]
    # the SNN task ran after its CNN and converted that CNN's checkpoint
    ck = torch.load(out / "cells" / rows[1]["id"] / "last.pt", weights_only=True)
    assert ck["source_checkpoint"]["path"].endswith(f"{rows[0]['id']}/best.pt")


def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    assert cli_main(["demo", "--quick", "--out", str(out)]) == 0
    seconds = time.perf_counter() - t0
    text = capsys.readouterr().out
    assert f"open the report: {out / 'report.html'}" in text
    rows = _rows(out)
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert {r["model"] for r in rows} == {"squeezenet1_1", "shufflenetv2_x0_5"}
    assert {r["schedule"] for r in rows if r["variant"] == "snn-p"} == {"ref-1", "taylor-25%"}
    assert seconds < 60


def _committed_study_cells(study: str, dataset: str) -> list:
    """The cells of a committed study spec, after the spec's own import checks found no problem."""
    spec = B.load_spec(REPO / study, roots={dataset: "/nonexistent"}, check_paths=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        problems: list = []
        BS._check_imports(spec, problems)
        assert problems == []
        return B.expand_grid(spec)


def test_committed_tinyimagenet_study_imports_its_checkpoints():
    # results/tinyimagenet/study.yaml: its cells are committed Tiny ImageNet checkpoints (200 classes, 64 px)
    cells = _committed_study_cells("results/tinyimagenet/study.yaml", "tinyimagenet")
    assert [(c.model.label, c.variant, c.T) for c in cells] == [
        ("squeezenet1_1", "cnn", None), ("squeezenet1_1", "cnn-q", None), ("squeezenet1_1", "cnn-p", None),
        ("squeezenet1_1", "snn", 4), ("squeezenet1_1", "snn-p", 4),
        ("mnasnet", "cnn", None), ("mnasnet", "cnn-q", None), ("mnasnet", "snn", 4),
        ("mnasnet-x0.35", "cnn", None), ("mnasnet-x0.35", "cnn-q", None), ("mnasnet-x0.35", "snn", 4),
        ("mixnet", "cnn", None), ("mixnet", "cnn-q", None), ("mixnet", "snn", 4),
        ("mixnet-x0.35", "cnn", None), ("mixnet-x0.35", "cnn-q", None), ("mixnet-x0.35", "snn", 4),
        ("shufflenetv2", "cnn", None), ("shufflenetv2", "cnn-q", None), ("shufflenetv2", "snn", 4),
        ("xception", "cnn", None), ("xception", "cnn-q", None), ("xception", "snn", 4)]
    for c in cells:
        meta = torch.load(REPO / c.checkpoint, map_location="cpu", weights_only=False)
        assert meta["data"]["dataset"] == "tinyimagenet" and meta["model_spec"]["num_classes"] == 200
        # each entry's checkpoints are of its own width (two MnasNet and two MixNet widths side by side)
        assert (meta["model_spec"]["name"], meta["model_spec"]["width"]) == (c.model.name, c.model.width)
        assert (REPO / c.checkpoint).stat().st_size <= 5 << 20


def test_committed_cifar10_study_imports_its_checkpoints():
    # results/cifar10/study.yaml: every cell is a committed checkpoint that the spec's rules accept
    cells = _committed_study_cells("results/cifar10/study.yaml", "cifar10")
    by_model: dict = {}
    for c in cells:
        by_model.setdefault(c.model.name, []).append((c.variant, c.T, c.schedule))
    assert list(by_model) == ["squeezenet1_1", "mnasnet_b1", "mixnet_s", "shufflenetv2_x1_0", "xception_mini"]
    assert by_model["squeezenet1_1"] == [
        ("cnn", None, None), ("cnn-q", None, None), ("cnn-p", None, "ref-1"), ("snn", 4, None), ("snn-p", 4, "ref-1")]
    for name, n_blocks in (("mnasnet_b1", 16), ("mixnet_s", 16), ("shufflenetv2_x1_0", 16)):
        rows = [r for r in by_model[name] if r[0] != "cnn-q"]
        assert [(v, t) for v, t, _ in rows] == [("cnn", None), ("cnn-p", None), ("snn", 4), ("snn-p", 4)]
        # the pruned pair keeps the same 12 of 16 blocks (a quarter removed), read from the files
        cnn_p, snn_p = rows[1][2], rows[3][2]
        assert cnn_p == snn_p and cnn_p.startswith("keep:") and len(cnn_p[5:].split("+")) == n_blocks - 4
    assert by_model["xception_mini"] == [("cnn", None, None), ("cnn-q", None, None), ("snn", 4, None)]  # no pruned pair
    assert all(("cnn-q", None, None) in by_model[m] for m in ("mnasnet_b1", "mixnet_s", "shufflenetv2_x1_0"))
    assert all(c.checkpoint and c.deps == [] for c in cells)
    for c in cells:
        assert (REPO / c.checkpoint).stat().st_size <= 5 << 20  # the limit per checkpoint
