"""spikelite.train: recipes, metrics, checkpoints, the CNN -> SNN pipeline, resume after SIGKILL, DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from spikelite import SpikeliteError
from spikelite.snn import neuron
from spikelite import data as D
from spikelite import checkpoint as C
from spikelite import train as T
from spikelite.train import metrics as TE
from spikelite.train import loop as TL
from spikelite.train import optim as TO
from spikelite.cli import main as cli_main
from spikelite.snn import SpikingNet, spikify
from spikelite.models import create_model

# A zoo model small enough for 8x8 digits on a shared 2-core machine (~30 ms per CNN step).
TINY = {"model.name": "shufflenetv2_x0_3", "model.width": 0.25, "data.dataset": "digits", "data.image_size": 8,
        "threads": 1, "quiet": True, "tensorboard": False, "batch_size": 32, "optim.lr": 0.05,
        "data.val_subset": 96}
TINY_FLAGS = ["--model", "shufflenetv2_x0_3", "--width", "0.25", "--dataset", "digits", "--image-size", "8",
              "--threads", "1", "--quiet", "--no-tensorboard", "--batch-size", "32", "--lr", "0.05",
              "--val-subset", "96"]


def _env():
    env = dict(os.environ, SPIKELITE_COMPILE="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(Path(T.__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKELITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(neuron._KERNELS, "broken", True)  # eager LIF kernels: no compile time in tests
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: 1 thread is fastest, and 50x faster than 2 on a busy machine
    D.clear_memory_cache()
    yield
    D.clear_memory_cache()
    torch.set_num_threads(threads)


def _cfg(tmp_path, name="run", **over):
    ov = dict(TINY)
    ov["out"] = str(tmp_path / name)
    ov.update({k.replace("__", "."): v for k, v in over.items()})
    return T.load_config(None, ov)


# ----------------------------------------------------------------------------------------------
# recipes
# ----------------------------------------------------------------------------------------------


def test_recipe_from_yaml_with_flag_overrides_and_clear_errors(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "mode": "snn", "epochs": 3,
        "optim": {"lr": "5e-2", "weight_decay": "5e-4", "optimizer": "AdamW", "betas": [0.9, 0.99]},
        "snn": {"T": 2, "neuron": {"tau": 2.0, "surrogate": "atan"}, "tet": True},
        "data": {"dataset": "CIFAR-10", "val_size": 5000},
    }))
    cfg = T.load_config(recipe, ["optim.lr=0.1", "snn.neuron.v_threshold=0.5", "data.val_size=0.2"])
    assert cfg.mode == "snn" and cfg.epochs == 3 and cfg.snn.T == 2 and cfg.snn.tet
    assert cfg.optim.lr == 0.1 and cfg.optim.weight_decay == 5e-4 and cfg.optim.optimizer == "adamw"
    assert cfg.snn.neuron == {"tau": 2.0, "surrogate": "atan", "v_threshold": 0.5}
    assert cfg.data.dataset == "cifar10" and cfg.data.val_size == 0.2
    assert T.TrainConfig.from_dict(cfg.to_dict()) == cfg  # the dict form (stored in checkpoints) round-trips
    assert isinstance(T.load_config(recipe, ["data.val_size=5000"]).data.val_size, int)  # a count stays a count

    with pytest.raises(SpikeliteError, match=r"unknown key\(s\) 'lr' in the recipe; valid keys: .*optim.lr\?"):
        T.load_config(None, {"lr": 0.1})
    with pytest.raises(SpikeliteError, match=r"'nesterov_momentum' in section 'optim'; valid keys: optimizer, lr"):
        T.load_config(None, {"optim.nesterov_momentum": True})
    with pytest.raises(SpikeliteError, match="optim.lr must be a number"):
        T.load_config(None, {"optim.lr": "fast"})
    with pytest.raises(SpikeliteError, match="mode must be one of cnn, snn"):
        T.load_config(None, {"mode": "ann"})
    with pytest.raises(SpikeliteError, match="snn.neuron: unknown neuron option"):
        T.load_config(None, {"snn.neuron.taus": 2})
    with pytest.raises(SpikeliteError, match="unknown model"):
        T.load_config(None, {"model.name": "resnet9000"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SpikeliteError, match="must hold a mapping"):
        T.load_config(bad)


def test_example_recipes_in_configs_load():
    found = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert {p.name for p in found} >= {"cnn_cifar10.yaml", "snn_cifar10.yaml"}
    import yaml

    from spikelite.bench import load_spec

    for path in found:
        raw = yaml.safe_load(path.read_text()) or {}
        if "models" in raw:  # a benchmark grid, not a training recipe
            names = [d["name"] if isinstance(d, dict) else d for d in raw["datasets"]]
            load_spec(path, check_paths=False, roots={n: "unused" for n in names})
        else:
            T.load_config(path)
    cnn = T.load_config(found[0].with_name("cnn_cifar10.yaml")).to_dict()
    snn = T.load_config(found[0].with_name("snn_cifar10.yaml")).to_dict()
    assert {k for k in cnn if cnn[k] != snn[k]} == {"mode"}  # one recipe for both


def test_cli_flags_override_the_yaml_recipe(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 7\noptim: {lr: 0.2, label_smoothing: 0.1}\nsnn: {T: 6}\n")
    assert cli_main(["train", "-c", str(recipe), "--lr", "0.05", "--snn", "--tet", "--neuron", "tau=3",
                     "--set", "optim.betas=[0.8,0.9]", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["epochs"] == 7 and printed["mode"] == "snn"
    assert printed["optim"]["lr"] == 0.05 and printed["optim"]["label_smoothing"] == 0.1
    assert printed["optim"]["betas"] == [0.8, 0.9]
    assert printed["snn"] == {**printed["snn"], "T": 6, "tet": True, "neuron": {"tau": 3}}
    assert cli_main(["train", "--set", "optim.lrr=1", "--print-config"]) == 2
    assert "valid keys" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# metrics, schedule, optimiser groups, loss
# ----------------------------------------------------------------------------------------------


def test_macro_f1_and_confusion_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        k = 2 + trial % 6
        y = torch.randint(0, k, (50,), generator=g)
        p = torch.where(torch.rand(50, generator=g) < 0.6, y, torch.randint(0, k, (50,), generator=g))
        if trial % 5 == 0:
            p[p == 0] = 1  # a class never predicted
        cm = T.confusion_matrix(p, y, k + 1)  # one extra class that never occurs: left out of the mean
        assert cm.tolist() == metrics.confusion_matrix(y, p, labels=list(range(k + 1))).tolist()
        assert T.macro_f1(cm) == pytest.approx(metrics.f1_score(y, p, average="macro"), abs=1e-12)


def test_lr_schedule_warms_up_then_follows_the_cosine():
    cfg = T.OptimConfig(lr=0.1, min_lr=0.001, warmup_epochs=1)
    total, warm = 100, 10
    lrs = [T.lr_at(s, total, cfg, warm) for s in range(total)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    mid = warm + (total - warm) // 2
    assert lrs[mid] == pytest.approx(0.001 + 0.5 * 0.099, rel=1e-6)
    assert T.lr_at(total, total, cfg, warm) == pytest.approx(0.001)
    const = T.OptimConfig(lr=0.1, schedule="constant")
    assert {T.lr_at(s, 50, const, 0) for s in range(50)} == {0.1}


def test_no_weight_decay_on_batchnorm_bias_and_neuron_parameters():
    cnn = create_model("shufflenetv2_x0_3", num_classes=10, image_size=8, width=0.25)
    net = spikify(cnn, T=2, neuron={"learn_tau": True, "learn_threshold": True})
    decay, no_decay = T.param_groups(net, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    names = dict(net.named_parameters())
    assert set(decay["names"]) | set(no_decay["names"]) == set(names)
    assert all(names[n].ndim > 1 for n in decay["names"])  # conv and linear weights only
    assert any(n.endswith("tau_param") for n in no_decay["names"])
    assert any(n.endswith("v_threshold") for n in no_decay["names"])
    assert any(n.endswith("fc.bias") for n in no_decay["names"])
    bn = [n for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(f"{b}.weight" in no_decay["names"] for b in bn)
    opt = TO._make_optimizer(net, T.OptimConfig(optimizer="sgd"))
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[1]["weight_decay"] == 0.0


def test_neuron_weight_decay_is_its_own_group_and_pulls_thresholds_down():
    cnn = create_model("shufflenetv2_x0_3", num_classes=10, image_size=8, width=0.25)
    net = spikify(cnn, T=2, neuron={"learn_tau": True, "learn_threshold": True})
    decay, no_decay, neuron = T.param_groups(net, 5e-4, neuron_weight_decay=0.1)
    assert neuron["weight_decay"] == 0.1
    names = dict(net.named_parameters())
    assert set(decay["names"]) | set(no_decay["names"]) | set(neuron["names"]) == set(names)
    assert neuron["names"] and all(n.endswith(("tau_param", "v_threshold")) for n in neuron["names"])
    assert not any(n.endswith(("tau_param", "v_threshold")) for n in no_decay["names"])
    # zero gradients: one AdamW step moves the thresholds by the decoupled decay alone (lr * wd * value)
    opt = TO._make_optimizer(net, T.OptimConfig(optimizer="adamw", lr=0.5, weight_decay=0.0, neuron_weight_decay=0.1))
    th = [p for n, p in net.named_parameters() if n.endswith("v_threshold")]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(p.item() == pytest.approx(1.0 * (1 - 0.5 * 0.1)) for p in th)
    # 0 (the default) keeps the two groups of before, so checkpoints' optimizer states still load
    assert len(T.param_groups(net, 5e-4)) == 2
    with pytest.raises(SpikeliteError, match="neuron_weight_decay"):
        T.OptimConfig(neuron_weight_decay=-1)


def test_tet_loss_is_the_mean_of_per_step_cross_entropies():
    g = torch.Generator().manual_seed(1)
    out = torch.randn(3, 5, 4, generator=g)
    y = torch.randint(0, 4, (5,), generator=g)
    expected = sum(F.cross_entropy(out[t], y, label_smoothing=0.1) for t in range(3)) / 3
    assert torch.allclose(TE._classification_loss(out, y, 0.1), expected)
    assert torch.allclose(TE._classification_loss(out.mean(0), y, 0.0), F.cross_entropy(out.mean(0), y))


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------


def test_checkpoints_rebuild_cnn_and_snn_from_the_file_alone(tmp_path):
    torch.manual_seed(0)
    cnn = create_model("shufflenetv2_x0_3", num_classes=10, image_size=8, width=0.25).eval()
    x = torch.randn(6, 3, 8, 8)
    net = spikify(cnn, T=3, neuron={"tau": 1.5, "surrogate": "atan", "v_reset": None}, balance=99.0,
                  calibration=x).eval()
    for model, name in ((cnn, "cnn.pt"), (net, "snn.pt")):
        path = C.save_checkpoint(tmp_path / name, model, meta={"data": {"dataset": "digits"}, "note": [1, 2.5]})
        assert not list(tmp_path.glob(".*.tmp"))  # written via a temp file + os.replace
        loaded, meta = C.load_model(path)
        assert type(loaded) is type(model) and not loaded.training
        assert meta["kind"] == ("snn" if model is net else "cnn") and meta["note"] == [1, 2.5]
        assert "state_dict" not in meta and meta["model_spec"] == cnn.spikelite_spec
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
    _, meta = C.load_model(tmp_path / "snn.pt")
    assert meta["snn"]["T"] == 3 and meta["snn"]["neuron"]["v_reset"] is None
    # balanced thresholds are state, not config: they come back from the state_dict
    thresholds = [float(a.neuron.v_threshold) for _, a in C.load_model(tmp_path / "snn.pt")[0].spiking_layers()]
    assert thresholds == [float(a.neuron.v_threshold) for _, a in net.spiking_layers()] and len(set(thresholds)) > 1


@pytest.mark.parametrize("legacy", [False, True])
def test_checkpoints_keep_module_versions_mnasnet_cnn_and_snn(tmp_path, legacy):
    # torchvision's MNASNet refuses a state_dict that lacks its version entry; older checkpoints
    # (legacy) did not store module versions and still load
    torch.manual_seed(0)
    cnn = create_model("mnasnet0_5", num_classes=10, image_size=32, width=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    for model, name in ((cnn, "cnn.pt"), (spikify(cnn, T=2).eval(), "snn.pt")):
        path = C.save_checkpoint(tmp_path / name, model)
        raw = torch.load(path, weights_only=True)
        assert raw["state_dict_metadata"][""] is not None
        if legacy:  # an older file: neither module versions nor a checksum
            del raw["state_dict_metadata"], raw["checksum"]
            torch.save(raw, path)
        loaded, meta = C.load_model(path)
        assert "state_dict_metadata" not in meta
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


def test_bad_checkpoints_are_one_clear_error(tmp_path):
    cnn = create_model("shufflenetv2_x0_3", num_classes=10, image_size=8, width=0.25)
    good = C.save_checkpoint(tmp_path / "good.pt", cnn)
    raw = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save(cnn.state_dict(), tmp_path / "bare.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": C.CHECKPOINT_FORMAT, "x": Evil()}, tmp_path / "evil.pt")
    cases = {"truncated.pt": "corrupt or truncated", "garbage.pt": "corrupt or truncated",
             "bare.pt": "not a spikelite checkpoint", "evil.pt": "never run code", "missing.pt": "does not exist"}
    for name, msg in cases.items():
        with pytest.raises(SpikeliteError, match=msg):
            C.load_model(tmp_path / name)
    wrong = C.read_checkpoint(good)
    wrong["model_spec"] = {**wrong["model_spec"], "num_classes": 7}
    C.write_checkpoint(tmp_path / "wrong.pt", wrong)
    with pytest.raises(SpikeliteError, match="weights do not fit"):
        C.load_model(tmp_path / "wrong.pt")
    import numpy as np

    with pytest.raises(SpikeliteError, match="holds a ndarray"):
        C.save_checkpoint(tmp_path / "np.pt", cnn, meta={"extra": np.zeros(2)})
    assert not (tmp_path / "np.pt").exists()


def test_rebuild_hook_passes_a_prune_keep_list_to_create_model(monkeypatch):
    seen = {}

    def fake_create_model(**spec):
        seen.update(spec)
        return torch.nn.Linear(2, 2)

    import spikelite.models as M

    monkeypatch.setattr(M, "create_model", fake_create_model)
    C.rebuild_model({"kind": "cnn", "model_spec": {"name": "squeezenet1_1"}, "prune": {"keep": ["fire2", "fire4"]}})
    # (a spec without "pool" predates its recording: it rebuilds with the default of then, max)
    assert seen == {"name": "squeezenet1_1", "pool": "max", "keep": ["fire2", "fire4"]}


# ----------------------------------------------------------------------------------------------
# training runs
# ----------------------------------------------------------------------------------------------


def test_cnn_to_snn_pipeline_on_digits(tmp_path, capsys):
    """Train a zoo CNN, then: convert without fine-tuning (epochs 0) and convert + fine-tune with TET."""
    cnn_cfg = _cfg(tmp_path, "cnn", epochs=2, data__train_subset=320, optim__warmup_epochs=0.5,
                   optim__label_smoothing=0.1)
    summary = T.train(cnn_cfg)
    run = Path(cnn_cfg.out)
    assert summary["epochs"] == 2 and summary["steps"] == 20 and summary["kind"] == "cnn"
    rows = list((run / "log.csv").read_text().splitlines())
    assert rows[0].startswith("epoch,step,lr,train_loss,train_acc,val_loss,val_acc,val_f1,epoch_seconds,data_seconds")
    assert len(rows) == 3
    hist = summary["final"]
    assert hist["train_samples"] == 320 and 0 <= hist["data_share"] <= 1 and hist["epoch_seconds"] > 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 20
    assert (run / "best.pt").exists() and (run / "config.yaml").exists()

    # the SNN must use the CNN's train/val split: another split would leak training images into validation
    with pytest.raises(SpikeliteError, match="different train/val split"):
        T.train(_cfg(tmp_path, "leak", mode="snn", init_from=str(run / "last.pt"), epochs=0, data__val_size=0.3))

    # converted, not fine-tuned: one evaluation at epoch 0, checkpoint written
    conv = T.train(_cfg(tmp_path, "conv", mode="snn", init_from=str(run / "last.pt"), epochs=0, snn__T=2,
                        snn__balance=99.9, snn__calibration_size=64))
    assert conv["kind"] == "snn" and conv["steps"] == 0 and conv["final"]["epoch"] == 0
    model, meta = C.load_model(tmp_path / "conv" / "last.pt")
    assert isinstance(model, SpikingNet) and model.T == 2 and meta["source_checkpoint"]["kind"] == "cnn"
    assert meta["metrics"]["val_acc"] == conv["final"]["val_acc"]

    # a pruned structure recorded in the source checkpoint is carried into the converted one
    src = C.read_checkpoint(run / "last.pt")
    src["prune"] = {"keep": None, "method": "test"}
    C.write_checkpoint(tmp_path / "pruned.pt", src)
    T.train(_cfg(tmp_path, "conv_pruned", mode="snn", init_from=str(tmp_path / "pruned.pt"), epochs=0, snn__T=2))
    assert C.load_model(tmp_path / "conv_pruned" / "last.pt")[1]["prune"] == {"keep": None, "method": "test"}

    # converted and fine-tuned with surrogate gradients and the TET loss
    ft = T.train(_cfg(tmp_path, "ft", mode="snn", init_from=str(run / "last.pt"), epochs=1, snn__T=2, snn__tet=True,
                      data__train_subset=128, optim__lr=0.01))
    assert [r["epoch"] for r in C.read_checkpoint(tmp_path / "ft" / "last.pt")["history"]] == [0, 1]
    assert ft["final"]["train_loss"] > 0

    # the checkpoint evaluates from the file alone, on the test split
    capsys.readouterr()
    assert cli_main(["eval", str(tmp_path / "ft" / "last.pt"), "--split", "test", "--threads", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["kind"] == "snn" and res["T"] == 2 and res["n"] == 359 and res["dataset"] == "digits"
    assert 0 <= res["accuracy"] <= 1 and sum(map(sum, res["confusion"])) == 359
    direct = T.evaluate_checkpoint(tmp_path / "ft" / "last.pt", split="test")
    assert direct["accuracy"] == res["accuracy"] and direct["macro_f1"] == res["macro_f1"]


def test_cnn_training_learns_digits(tmp_path):
    summary = T.train(_cfg(tmp_path, epochs=4, data__train_subset=640, data__val_subset=None, data__image_size=16,
                           optim__warmup_epochs=1))
    assert summary["best"]["val_acc"] > 0.5, summary["best"]  # 10 classes: chance is 0.1 (measured: 0.74)


def test_channels_last_trains_the_same_network(tmp_path, capsys):
    # a speed option only: NHWC weights (and so activations); checkpoints load like any other
    runs = {}
    for cl in (False, True):
        T.train(_cfg(tmp_path, name=f"cl{cl}", epochs=1, channels_last=cl, data__train_subset=32,
                     data__image_size=16, optim__warmup_epochs=0))  # one SGD step: the tiny net is chaotic
        raw = C.read_checkpoint(tmp_path / f"cl{cl}" / "last.pt")
        assert raw["config"]["channels_last"] is cl
        runs[cl] = raw["state_dict"]
    # kernels whose NCHW and NHWC layouts differ (not 1x1, more than one input channel)
    convs = [k for k, v in runs[True].items() if v.dim() == 4 and v.shape[1] > 1 and v.shape[2] * v.shape[3] > 1]
    assert convs and all(runs[True][k].is_contiguous(memory_format=torch.channels_last) for k in convs)
    assert not any(runs[False][k].is_contiguous(memory_format=torch.channels_last) for k in convs)
    model, _ = C.load_model(tmp_path / "clTrue" / "last.pt")  # loads like any other checkpoint
    assert torch.equal(model.state_dict()[convs[0]], runs[True][convs[0]])
    # Same math (float64 gradients agree to 1e-14), but fp32 BatchNorm training kernels round differently in
    # NHWC (docs/performance.md), so one SGD step from the same start lands close, not bit-identical.
    flat = {cl: torch.cat([v.double().flatten() for k, v in sorted(sd.items()) if v.is_floating_point()])
            for cl, sd in runs.items()}
    assert ((flat[True] - flat[False]).norm() / flat[False].norm()).item() < 2e-3
    assert cli_main(["train", "--channels-last", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["channels_last"] is True


def test_eval_T_trains_short_and_validates_longer(tmp_path, monkeypatch):
    # train at T=1, validate and record checkpoints at T=3; resuming trains at T=1 again
    from spikelite.snn import SpikingNet

    seen_T = []
    fwd = SpikingNet.forward_steps
    monkeypatch.setattr(SpikingNet, "forward_steps",
                        lambda self, x: seen_T.append((self.training, self.T)) or fwd(self, x))
    run = tmp_path / "evalT"
    cfg = _cfg(tmp_path, "evalT", mode="snn", epochs=2, snn__T=1, snn__eval_T=3, data__train_subset=32,
               data__image_size=8, optim__warmup_epochs=0)
    epoch = TL._Run._train_epoch
    calls = []

    def stop_in_second_epoch(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run stops after epoch 1 (last.pt written at its end)
        return epoch(self)

    monkeypatch.setattr(TL._Run, "_train_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg)
    assert {t for training, t in seen_T if training} == {1} and {t for training, t in seen_T if not training} == {3}
    model, meta = C.load_model(run / "last.pt")
    assert isinstance(model, SpikingNet) and model.T == 3 and meta["config"]["snn"]["eval_T"] == 3
    res = T.evaluate_checkpoint(run / "best.pt", split="val")  # spikelite eval's default: the recorded T
    assert res["T"] == 3 and abs(res["accuracy"] - C.read_checkpoint(run / "best.pt")["best"]["val_acc"]) < 1e-9
    seen_T.clear()
    T.train(cfg, resume=True)  # the resumed run trains at T=1 again, though last.pt recorded T=3
    assert len(calls) == 3 and {t for training, t in seen_T if training} == {1}
    assert C.load_model(run / "last.pt")[0].T == 3
    with pytest.raises(SpikeliteError, match="snn.eval_T must be >= 1"):
        _cfg(tmp_path, mode="snn", snn__eval_T=0)


def test_time_bn_per_step_converts_trains_and_reloads(tmp_path):
    from spikelite.snn import StepBatchNorm

    T.train(_cfg(tmp_path, "cnn", epochs=1, data__train_subset=64, optim__warmup_epochs=0))
    cnn_ckpt = str(tmp_path / "cnn" / "last.pt")
    # a CNN converted straight to per-step BatchNorm, statistics recalibrated per step, then fine-tuned
    T.train(_cfg(tmp_path, "tbn", mode="snn", init_from=cnn_ckpt, epochs=1, snn__T=2, snn__time_bn="per-step",
                 data__train_subset=64, optim__warmup_epochs=0))
    model, meta = C.load_model(tmp_path / "tbn" / "last.pt")
    layers = [m for m in model.modules() if isinstance(m, StepBatchNorm)]
    assert layers and meta["snn"]["time_bn"] == "per-step" and meta["snn"]["time_bn_steps"] == 2
    assert not torch.allclose(layers[0].running_var[0], layers[0].running_var[1])
    res = T.evaluate_checkpoint(tmp_path / "tbn" / "last.pt", split="val")
    assert res["T"] == 2 and res["n"] == 144 and 0 <= res["accuracy"] <= 1  # rebuilt from the file alone
    # a shared-BN SNN checkpoint fine-tuned with per-step BatchNorm; the reverse is one clear error
    T.train(_cfg(tmp_path, "shared", mode="snn", init_from=cnn_ckpt, epochs=0, snn__T=2))
    T.train(_cfg(tmp_path, "later", mode="snn", init_from=str(tmp_path / "shared" / "last.pt"), epochs=1,
                 snn__T=2, snn__time_bn="per-step", data__train_subset=32, optim__warmup_epochs=0))
    assert C.load_model(tmp_path / "later" / "last.pt")[1]["snn"]["time_bn_steps"] == 2
    with pytest.raises(SpikeliteError, match="has per-step BatchNorm; this run asks for snn.time_bn: shared"):
        T.train(_cfg(tmp_path, "back", mode="snn", init_from=str(tmp_path / "tbn" / "last.pt"), epochs=1, snn__T=2))
    with pytest.raises(SpikeliteError, match="snn.time_bn"):
        _cfg(tmp_path, mode="snn", snn__time_bn="bntt")


def test_spike_inputs_from_a_cnn_or_added_to_an_snn_checkpoint(tmp_path, capsys):
    T.train(_cfg(tmp_path, "cnn", epochs=1, data__train_subset=64, optim__warmup_epochs=0))
    cnn_ckpt = str(tmp_path / "cnn" / "last.pt")
    T.train(_cfg(tmp_path, "direct", mode="snn", init_from=cnn_ckpt, epochs=1, snn__T=2, snn__spike_inputs=True,
                 data__train_subset=32, optim__warmup_epochs=0))
    model, meta = C.load_model(tmp_path / "direct" / "last.pt")
    added = [p for p, _ in model.spiking_layers() if p.endswith("_input_spike")]
    assert added and meta["snn"]["spike_inputs"] is True
    # an SNN checkpoint without them: the layers are added, BatchNorm recalibrated, the rest of the weights kept
    T.train(_cfg(tmp_path, "plain", mode="snn", init_from=cnn_ckpt, epochs=0, snn__T=2))
    capsys.readouterr()
    T.train(_cfg(tmp_path, "later", mode="snn", init_from=str(tmp_path / "plain" / "last.pt"), epochs=0, snn__T=2,
                 snn__spike_inputs=True, quiet=False))
    out = capsys.readouterr().out
    assert f"{len(added)} input neuron layers added" in out and "BatchNorm layers recalibrated on spikes" in out
    later, _ = C.load_model(tmp_path / "later" / "last.pt")
    plain, _ = C.load_model(tmp_path / "plain" / "last.pt")
    conv = next(n for n, m in plain.named_modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(later.get_submodule(conv).weight, plain.get_submodule(conv).weight)
    with pytest.raises(SpikeliteError, match="snn.spike_inputs: false"):
        T.train(_cfg(tmp_path, "back", mode="snn", init_from=str(tmp_path / "later" / "last.pt"), epochs=0, snn__T=2))


def test_recompute_neurons_trains_the_identical_snn(tmp_path, capsys, monkeypatch):
    # a memory option only: the same weights after training, bit for bit
    from spikelite.snn.recompute import RecomputedNeuron

    runs = []
    forward = RecomputedNeuron.forward
    monkeypatch.setattr(RecomputedNeuron, "forward", lambda self, z: runs.append(1) or forward(self, z))
    states = {}
    for rc in (False, True):
        T.train(_cfg(tmp_path, name=f"rc{rc}", mode="snn", epochs=1, recompute_neurons=rc, snn__T=2,
                     data__train_subset=32, data__image_size=16, optim__warmup_epochs=0))
        assert bool(runs) is rc  # the recomputed graph is used when asked for, and only then
        raw = C.read_checkpoint(tmp_path / f"rc{rc}" / "last.pt")
        assert raw["config"]["recompute_neurons"] is rc
        states[rc] = raw["state_dict"]
    assert states[True].keys() == states[False].keys()
    for k, v in states[False].items():
        assert torch.equal(v, states[True][k]), k
    with pytest.raises(SpikeliteError, match="recompute_neurons applies to spiking networks"):
        _cfg(tmp_path, mode="cnn", recompute_neurons=True)
    assert cli_main(["train", "--cnn", "--recompute-neurons", "--print-config"]) == 2
    assert "recompute_neurons" in capsys.readouterr().err
    assert cli_main(["train", "--snn", "--recompute-neurons", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["recompute_neurons"] is True


def test_compact_spikes_off_trains_the_identical_snn_and_stores_floats(tmp_path, capsys, monkeypatch):
    # a speed/memory option only: the same weights after training, bit for bit; off, nothing is packed
    from spikelite.snn import net as snn_net

    packed = []
    pack = snn_net._pack_saved
    monkeypatch.setattr(snn_net, "_pack_saved", lambda t: packed.append(1) or pack(t))
    states = {}
    for compact in (True, False):
        packed.clear()
        T.train(_cfg(tmp_path, name=f"cs{compact}", mode="snn", epochs=1, compact_spikes=compact, snn__T=2,
                     data__train_subset=32, data__image_size=16, optim__warmup_epochs=0))
        assert bool(packed) is compact  # the saved-tensor hooks run when asked for, and only then
        raw = C.read_checkpoint(tmp_path / f"cs{compact}" / "last.pt")
        assert raw["config"]["compact_spikes"] is compact
        states[compact] = raw["state_dict"]
    for k, v in states[True].items():
        assert torch.equal(v, states[False][k]), k
    # a runtime key: a run written with it on resumes with it off (no "different recipe" error)
    T.train(_cfg(tmp_path, name="csTrue", mode="snn", epochs=1, compact_spikes=False, snn__T=2,
                 data__train_subset=32, data__image_size=16, optim__warmup_epochs=0), resume=True)
    with pytest.raises(SpikeliteError, match="compact_spikes applies to spiking networks"):
        _cfg(tmp_path, mode="cnn", compact_spikes=False)
    assert cli_main(["train", "--snn", "--no-compact-spikes", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["compact_spikes"] is False


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = TL._classification_loss

    def poisoned(out, y, ls):
        calls["n"] += 1
        loss = real(out, y, ls)
        return loss * float("nan") if calls["n"] > 12 else loss  # epoch 1 has 8 steps: dies in epoch 2

    monkeypatch.setattr(TL, "_classification_loss", poisoned)
    cfg = _cfg(tmp_path, epochs=3, data__train_subset=256)
    with pytest.raises(SpikeliteError, match=r"loss became NaN/inf in epoch 2 \(step 13\).*last good checkpoint is "):
        T.train(cfg)
    ckpt = C.read_checkpoint(Path(cfg.out) / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["train_state"]["step"] == 8
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_bad_input_gives_one_clear_error_and_exit_2(tmp_path, capsys):
    cnn = create_model("shufflenetv2_x0_3", num_classes=10, image_size=8, width=0.25)
    ckpt = C.save_checkpoint(tmp_path / "c.pt", cnn, meta={"data": {"dataset": "digits", "image_size": 8}})
    cases = [
        (["train", "--dataset", "imagefolder", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")],
         "does not exist"),
        (["eval", str(tmp_path / "missing.pt")], "does not exist"),
        (["eval", str(ckpt), "--dataset", "fashion-mnist", "--data", str(tmp_path / "fm")], "fashion-mnist"),
    ]
    # an image folder with 3 classes, for a 10-class checkpoint
    from PIL import Image

    for c in ("a", "b", "c"):
        (tmp_path / "three" / "test" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "three" / "test" / c / "0.png")
    cases.append((["eval", str(ckpt), "--dataset", "imagefolder", "--data", str(tmp_path / "three"),
                   "--split", "test"],
                  "has 3 classes but the checkpoint's model has 10"))
    (tmp_path / "trunc.pt").write_bytes(ckpt.read_bytes()[:1000])
    cases.append((["eval", str(tmp_path / "trunc.pt")], "corrupt or truncated"))
    for argv, msg in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_existing_run_needs_resume_and_the_same_recipe(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = _cfg(tmp_path, epochs=1, data__train_subset=64, tensorboard=True)
    T.train(cfg)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    with pytest.raises(SpikeliteError, match="already holds a run.*--resume"):
        T.train(cfg)
    changed = _cfg(tmp_path, epochs=1, data__train_subset=64, tensorboard=True, optim__lr=0.5)
    with pytest.raises(SpikeliteError, match=r"different recipe \(optim.lr: 0.05 -> 0.5\)"):
        T.train(changed, resume=True)
    # a finished run resumes to a no-op; runtime keys (eval batch size) may change
    again = T.train(_cfg(tmp_path, epochs=1, data__train_subset=64, data__eval_batch_size=17), resume=True)
    assert again["steps"] == 2
    # a run written before a recipe key existed (LATE_KEYS) meant its neutral value: it still resumes ...
    last = tmp_path / "run" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["config"]["optim"]["neuron_weight_decay"]
    C.write_checkpoint(last, ckpt)
    assert T.train(_cfg(tmp_path, epochs=1, data__train_subset=64), resume=True)["steps"] == 2
    # ... but not with another value of it
    with pytest.raises(SpikeliteError, match=r"different recipe \(optim.neuron_weight_decay: 0.0 -> 0.1\)"):
        T.train(_cfg(tmp_path, epochs=1, data__train_subset=64, optim__neuron_weight_decay=0.1), resume=True)


def test_state_dtype_bfloat16_stores_a_smaller_last_pt_that_resumes(tmp_path, monkeypatch):
    # the optimizer's momentum in last.pt as bfloat16 (a resumable file under a size cap); the weights stay float32
    first: dict = {}
    save_last = TL._Run._save_last

    def keep_first(run):  # keep the first mid-run last.pt (step 1 of 4) to resume from below
        save_last(run)
        first.setdefault(run.out.name, (run.last_path.read_bytes(), run.step))

    monkeypatch.setattr(TL._Run, "_save_last", keep_first)
    full = T.train(_cfg(tmp_path, "full", epochs=2, data__train_subset=64, save_every_steps=1))
    small = T.train(_cfg(tmp_path, "small", epochs=2, data__train_subset=64, save_every_steps=1, state_dtype="bfloat16"))
    assert full["steps"] == small["steps"] == 4 and first["small"][1] == 1
    a, b = (C.read_checkpoint(tmp_path / n / "last.pt") for n in ("full", "small"))
    moments = [st["momentum_buffer"] for st in b["train_state"]["optimizer"]["state"].values()
               if st["momentum_buffer"].numel() > 1]
    assert moments and all(m.dtype == torch.bfloat16 for m in moments)
    assert all(v.dtype == torch.float32 for v in b["state_dict"].values() if v.is_floating_point())
    ref = {k: st["momentum_buffer"] for k, st in a["train_state"]["optimizer"]["state"].items()}
    for k, st in b["train_state"]["optimizer"]["state"].items():  # the same run, its momentum rounded to bfloat16
        assert ((st["momentum_buffer"].float() - ref[k]).abs() <= ref[k].abs() * 2 ** -8).all()
    assert (tmp_path / "small" / "last.pt").stat().st_size < 0.9 * (tmp_path / "full" / "last.pt").stat().st_size
    # resumed from step 1 (a runtime key: float32 from here, the recipe still matches): the optimizer takes the
    # stored momentum back as float32, and the run finishes (its weights then differ from the uninterrupted run's
    # by what that rounding grows into; a float32 last.pt resumes bit for bit, test_sigkill_... below)
    (tmp_path / "small" / "last.pt").write_bytes(first["small"][0])
    stored = C.read_checkpoint(tmp_path / "small" / "last.pt")["train_state"]["optimizer"]["state"]
    loaded: dict = {}
    load = torch.optim.SGD.load_state_dict

    def spy(opt, state):
        load(opt, state)
        loaded.update({i: opt.state[p]["momentum_buffer"].clone() for i, p in
                       enumerate(p for g in opt.param_groups for p in g["params"])})

    monkeypatch.setattr(torch.optim.SGD, "load_state_dict", spy)
    more = T.train(_cfg(tmp_path, "small", epochs=2, data__train_subset=64, save_every_steps=1), resume=True)
    assert more["steps"] == 4 and loaded.keys() == stored.keys()
    for i, m in loaded.items():
        assert m.dtype == torch.float32 and torch.equal(m, stored[i]["momentum_buffer"].float())
    c = C.read_checkpoint(tmp_path / "small" / "last.pt")
    assert all(st["momentum_buffer"].dtype == torch.float32 for st in c["train_state"]["optimizer"]["state"].values())
    with pytest.raises(SpikeliteError, match="state_dtype must be one of float32, bfloat16, got 'fp16'"):
        _cfg(tmp_path, "bad", state_dtype="fp16")


# ----------------------------------------------------------------------------------------------
# resume after SIGKILL and DDP (subprocesses)
# ----------------------------------------------------------------------------------------------

RESUME_FLAGS = TINY_FLAGS + ["--snn", "--T", "2", "--encoding", "rate", "--epochs", "3", "--train-subset", "320",
                             "--warmup-epochs", "1", "--label-smoothing", "0.1", "--save-every-steps", "3"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_bit_identical_weights(tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "spikelite", "train", *RESUME_FLAGS, "--out", str(killed)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (killed / "last.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = C.read_checkpoint(killed / "last.pt")["train_state"]
    assert state["epoch"] < 3 and state["batch"] > 0, state  # killed mid-epoch, mid-run

    resumed = subprocess.run([sys.executable, "-m", "spikelite", "train", "--out", str(killed), "--resume",
                              "--quiet", "--threads", "1"], env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr

    # the uninterrupted reference, same recipe, in a process like the killed one's (the same kernels: this
    # process may run the native BatchNorm -> LIF pair, which rounds like NCHW BatchNorm, not like NHWC's)
    ref = subprocess.run([sys.executable, "-m", "spikelite", "train", *RESUME_FLAGS, "--out", str(tmp_path / "ref")],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert ref.returncode == 0, ref.stderr
    a = C.read_checkpoint(killed / "last.pt")
    b = C.read_checkpoint(tmp_path / "ref" / "last.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for ra, rb in zip(a["history"], b["history"]):
        assert (ra["train_loss"], ra["val_acc"], ra["train_acc"]) == (rb["train_loss"], rb["val_acc"], rb["train_acc"])
    assert len((killed / "log.csv").read_text().splitlines()) == 4


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_torchrun(tmp_path):
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("gloo backend not available")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "spikelite", "train", *TINY_FLAGS, "--epochs", "2", "--train-subset", "256", "--out", str(out),
           "--snn", "--T", "2", "--tet"]  # DDP wraps the per-step (TET) forward of a SpikingNet
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2 * 8  # 256 images, global batch 32
    ckpt = C.read_checkpoint(out / "last.pt")
    assert ckpt["train_state"]["world_size"] == 2 and len(ckpt["train_state"]["rng"]["torch"]) == 2
    assert [r["train_samples"] for r in ckpt["history"]] == [256, 256]  # the two shards cover the data once
    assert len((out / "log.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "log.csv", "summary.json"]
    model, meta = C.load_model(out / "last.pt")
    assert isinstance(model, SpikingNet) and meta["config"]["snn"]["tet"]
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 10)


# ----------------------------------------------------------------------------------------------
# knowledge distillation (distill.*)
# ----------------------------------------------------------------------------------------------


def test_distillation_loss_is_hintons_soft_target_kl():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for tau in (1.0, 3.0):
        p, q = F.softmax(s / tau, 1), F.softmax(t / tau, 1)
        manual = (q * (q.log() - p.log())).sum(1).mean() * tau ** 2
        assert torch.allclose(T.distillation_loss(s, t, tau), manual, atol=1e-6)
    assert float(T.distillation_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)
    # adding a constant to all logits of a row changes no probability
    assert float(T.distillation_loss(t + 5.0, t, 2.0)) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(SpikeliteError, match="differ"):
        T.distillation_loss(s, t[:, :3], 2.0)


def test_distillation_recipe_keys_are_checked(tmp_path, capsys):
    cfg = _cfg(tmp_path, distill__teacher="t.pt", distill__weight=0.9, distill__temperature=4)
    assert cfg.distill.teacher == "t.pt" and cfg.distill.weight == 0.9 and cfg.distill.temperature == 4.0
    assert T.TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(SpikeliteError, match=r"distill.weight must be in \[0, 1\]"):
        _cfg(tmp_path, distill__weight=1.5)
    with pytest.raises(SpikeliteError, match="distill.temperature must be a positive number"):
        _cfg(tmp_path, distill__temperature=0)
    assert cli_main(["train", "--distill-from", "t.pt", "--distill-weight", "2", "--print-config"]) == 2
    assert "distill.weight must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert cli_main(["train", "--distill-from", "t.pt", "--distill-temperature", "3", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["distill"] == {"teacher": "t.pt", "weight": 0.5, "temperature": 3.0}
    with pytest.raises(SpikeliteError, match="distill.teacher: no such checkpoint"):
        T.train(_cfg(tmp_path, "x", epochs=1, distill__teacher=str(tmp_path / "missing.pt")))


def test_distilling_from_a_teacher_changes_training_and_pulls_the_student_to_it(tmp_path):
    T.train(_cfg(tmp_path, "teacher", epochs=2, data__train_subset=256, optim__warmup_epochs=0))
    teacher_ckpt = str(tmp_path / "teacher" / "last.pt")
    teacher, _ = C.load_model(teacher_ckpt)
    common = dict(epochs=2, data__train_subset=128, optim__warmup_epochs=0, seed=3, model__width=0.5)
    T.train(_cfg(tmp_path, "plain", **common))
    T.train(_cfg(tmp_path, "w0", distill__teacher=teacher_ckpt, distill__weight=0.0, **common))
    T.train(_cfg(tmp_path, "w1", distill__teacher=teacher_ckpt, distill__weight=1.0, **common))
    plain, _ = C.load_model(tmp_path / "plain" / "last.pt")
    w0, _ = C.load_model(tmp_path / "w0" / "last.pt")
    w1, meta = C.load_model(tmp_path / "w1" / "last.pt")
    # weight 0: the teacher runs but the loss is the task loss alone, so the very same weights
    for (k, a), b in zip(plain.state_dict().items(), w0.state_dict().values()):
        assert torch.equal(a, b), k
    assert meta["teacher_checkpoint"]["path"] == teacher_ckpt and meta["teacher_checkpoint"]["kind"] == "cnn"
    assert meta["config"]["distill"] == {"teacher": teacher_ckpt, "weight": 1.0, "temperature": 2.0}
    # weight 1: trained on the teacher's soft targets only, the student agrees with it more than the plain one
    val = D.load_split("digits", None, "val", image_size=8)
    x, _ = next(iter(D.BatchLoader(val, 200)))
    with torch.no_grad():
        t = teacher(x)
        kl = {name: float(T.distillation_loss(m(x), t, 1.0)) for name, m in (("plain", plain), ("w1", w1))}
    assert kl["w1"] < kl["plain"], kl


def test_distilling_from_the_source_cnn_follows_the_checkpoint_lineage(tmp_path, monkeypatch):
    T.train(_cfg(tmp_path, "cnn", epochs=1, data__train_subset=32, optim__warmup_epochs=0))
    cnn_ckpt = str(tmp_path / "cnn" / "last.pt")
    snn = dict(mode="snn", epochs=1, snn__T=2, data__train_subset=32, optim__warmup_epochs=0)
    # converted from the CNN: the source is the CNN itself
    T.train(_cfg(tmp_path, "snn", init_from=cnn_ckpt, distill__teacher="source", **snn))
    first = C.read_checkpoint(tmp_path / "snn" / "last.pt")
    assert first["teacher_checkpoint"]["path"] == cnn_ckpt and first["config"]["distill"]["teacher"] == "source"
    # a second pass from that SNN: one link further up, still the CNN; stopped after its first epoch
    pass2 = _cfg(tmp_path, "pass2", init_from=str(tmp_path / "snn" / "last.pt"), distill__teacher="source",
                 **{**snn, "epochs": 2})
    epoch, calls = TL._Run._train_epoch, []

    def stop_in_second_epoch(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return epoch(self)

    monkeypatch.setattr(TL._Run, "_train_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        T.train(pass2)
    monkeypatch.undo()
    second = C.read_checkpoint(tmp_path / "pass2" / "last.pt")
    assert second["epoch"] == 1 and second["teacher_checkpoint"]["path"] == cnn_ckpt
    assert second["source_checkpoint"]["path"] == str(tmp_path / "snn" / "last.pt")
    assert T.source_cnn(tmp_path / "pass2" / "last.pt") == cnn_ckpt
    # the resumed run keeps its source record (and so its lineage)
    T.train(pass2, resume=True)
    resumed = C.read_checkpoint(tmp_path / "pass2" / "last.pt")
    assert resumed["epoch"] == 2 and resumed["source_checkpoint"]["path"] == str(tmp_path / "snn" / "last.pt")
    assert resumed["teacher_checkpoint"]["path"] == cnn_ckpt
    # the lineage broken (the CNN moved away), or no lineage at all: one error each, naming the link
    Path(cnn_ckpt).rename(tmp_path / "moved.pt")
    with pytest.raises(SpikeliteError, match=r"source: checkpoint .*cnn/last.pt \(recorded as the source of "
                                             r".*snn/last.pt\) is not on disk"):
        T.train(_cfg(tmp_path, "pass3", init_from=str(tmp_path / "pass2" / "last.pt"), distill__teacher="source", **snn))
    assert not (tmp_path / "pass3" / "last.pt").exists()
    with pytest.raises(SpikeliteError, match="source needs a run that starts from a checkpoint"):
        T.train(_cfg(tmp_path, "scratch", distill__teacher="source", **snn))
    T.train(_cfg(tmp_path, "snn-scratch", **snn))
    with pytest.raises(SpikeliteError, match="records no source checkpoint"):
        T.train(_cfg(tmp_path, "from-scratch-snn", init_from=str(tmp_path / "snn-scratch" / "last.pt"),
                     distill__teacher="source", **snn))


def test_distilling_an_snn_from_its_cnn_and_a_mismatched_teacher(tmp_path):
    T.train(_cfg(tmp_path, "cnn", epochs=1, data__train_subset=64, optim__warmup_epochs=0))
    cnn_ckpt = str(tmp_path / "cnn" / "last.pt")
    T.train(_cfg(tmp_path, "snn", mode="snn", init_from=cnn_ckpt, epochs=1, snn__T=2, data__train_subset=32,
                 distill__teacher=cnn_ckpt, optim__warmup_epochs=0))
    _, meta = C.load_model(tmp_path / "snn" / "last.pt")
    assert meta["teacher_checkpoint"]["kind"] == "cnn" and meta["history"][-1]["train_loss"] > 0
    # the SNN as the teacher of another run works too (its time-averaged output)
    T.train(_cfg(tmp_path, "from-snn", epochs=1, data__train_subset=32, distill__teacher=str(tmp_path / "snn" / "last.pt"),
                 optim__warmup_epochs=0))
    # a teacher for other classes, or the same classes in another order, is refused by name
    five = create_model("shufflenetv2_x0_3", num_classes=5, width=0.25, in_chans=1)
    C.save_checkpoint(tmp_path / "five.pt", five)
    with pytest.raises(SpikeliteError, match="distill.teacher .*five.pt: the model does not fit the data: 5 classes"):
        T.train(_cfg(tmp_path, "bad", epochs=1, distill__teacher=str(tmp_path / "five.pt")))
    ckpt = C.read_checkpoint(cnn_ckpt)
    ckpt["data"]["classes"] = list(reversed(ckpt["data"]["classes"]))
    C.write_checkpoint(tmp_path / "reordered.pt", ckpt)
    with pytest.raises(SpikeliteError, match="other classes \\(or another class order\\)"):
        T.train(_cfg(tmp_path, "bad2", epochs=1, distill__teacher=str(tmp_path / "reordered.pt")))
