"""Performance options (issue 9): inference copies with BatchNorm folded, activation checkpointing."""

import copy
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikelite import SpikeliteError, spikify
from spikelite.models import create_model
from spikelite.snn import (
    InferenceModel,
    InferenceNet,
    SpikingActivation,
    fold_batchnorm,
    inference_model,
)
from spikelite.snn.recompute import CheckpointSegment, RecomputedNeuron


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that folding has work to do."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
    return model


def _spikes(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, a, o: out.append(o.detach().clone()))
             for m in net.modules() if isinstance(m, SpikingActivation)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return out


class SharedConvNet(nn.Module):
    """c1's output feeds its BatchNorm and a skip path: that BatchNorm must not be folded."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)
        self.bn3 = nn.BatchNorm1d(4)

    def forward(self, x):
        a = self.c1(x)
        x = F.relu(self.bn1(a)) + a
        x = F.relu(self.bn2(self.c2(x)))
        return self.bn3(self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)))


# --------------------------------------------------------------------------------------------
# Inference mode
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["squeezenet1_1", "shufflenetv2_x0_5"])
def test_inference_copy_of_snn_gives_identical_spikes_in_float64(name):
    torch.manual_seed(0)
    cnn = _randomise_bn(create_model(name, num_classes=10, image_size=32)).double()
    net = spikify(cnn, T=3).eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    fast = net.inference()
    assert isinstance(fast, InferenceNet) and not fast.training
    assert fast.folded_bn == n_bn > 0
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fast.modules())
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    ref, got = _spikes(net, x), _spikes(fast, x)
    assert len(ref) == len(got) > 0
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    with torch.no_grad():
        expected = net(x)
    out = fast(x)
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert torch.is_inference(out) and not out.requires_grad
    assert all(not p.requires_grad for p in fast.parameters())
    # the original is untouched: still has its BatchNorms and trainable weights
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == n_bn
    assert all(p.requires_grad for p in net.parameters())
    fast.T = 5  # T can still change
    assert fast.forward_steps(x).shape == (5, 4, 10)


def test_inference_copy_channels_last_matches_eval():
    torch.manual_seed(0)
    cnn = _randomise_bn(create_model("squeezenet1_1", num_classes=10, image_size=32)).double()
    net = spikify(cnn, T=2).eval()
    fast = inference_model(net, channels_last=True)
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(_spikes(net, x), _spikes(fast, x)))


@pytest.mark.parametrize("name", ["squeezenet1_1", "shufflenetv2_x0_5", "mnasnet0_5"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_copy_of_plain_cnn_matches_eval(name, channels_last):
    torch.manual_seed(0)
    cnn = _randomise_bn(create_model(name, num_classes=10, image_size=32)).eval()
    fast = inference_model(cnn, channels_last=channels_last)
    assert isinstance(fast, InferenceModel) and fast.folded_bn > 0
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = cnn(x)
    assert torch.allclose(fast(x), expected, rtol=1e-4, atol=1e-5)
    assert fast.spikelite_spec == cnn.spikelite_spec


def test_only_exactly_foldable_batchnorms_are_folded():
    torch.manual_seed(0)
    cnn = _randomise_bn(SharedConvNet()).double().eval()
    fast = inference_model(cnn)
    # bn1 reads a conv output that is also used by the skip path; bn3 follows a Linear: both stay
    assert fast.folded_bn == 1
    assert {type(m) for m in fast.modules()} >= {nn.BatchNorm2d, nn.BatchNorm1d}
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(fast(x), cnn(x), rtol=1e-12, atol=1e-12)
    snn = spikify(cnn, T=2).eval()
    assert all(torch.equal(a, b) for a, b in zip(_spikes(snn, x), _spikes(snn.inference(), x)))


def test_fold_batchnorm_keeps_a_conv_called_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.c(x)) + self.c(x)

    gm = torch.fx.symbolic_trace(_randomise_bn(Twice()).eval())
    assert fold_batchnorm(gm) == 0


def test_inference_copy_is_eval_only_and_checks_its_arguments():
    net = spikify(create_model("squeezenet1_1", num_classes=10, image_size=32), T=2)
    fast = net.inference()
    with pytest.raises(SpikeliteError, match="inference copy"):
        fast.train()
    fast.eval()  # allowed: already eval
    with pytest.raises(SpikeliteError, match="already an inference copy"):
        inference_model(fast)
    with pytest.raises(SpikeliteError, match="channels_last"):
        inference_model(net, channels_last="yes")
    with pytest.raises(SpikeliteError, match="nn.Module"):
        inference_model("squeezenet")
    assert net.training  # the original keeps its mode


# --------------------------------------------------------------------------------------------
# Activation checkpointing
# --------------------------------------------------------------------------------------------


def _train_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)  # same dropout masks for both nets
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    return loss.detach()


def _saved_bytes(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes autograd keeps for backward (each storage once, parameters excluded), packing as the net does."""
    from spikelite.snn.layers import _pack_saved

    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        p = _pack_saved(t)
        s = (p[0] if isinstance(p, tuple) else p).untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return p

    net.compact_spikes = False  # the counting hook packs exactly as the net's own hook would
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda p: p[0].to(p[1]) if isinstance(p, tuple) else p):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
    finally:
        net.compact_spikes = True
    net.zero_grad(set_to_none=True)
    return sum(storages.values())


@pytest.mark.parametrize("name,neuron", [
    ("squeezenet1_1", None),  # has dropout: the recomputation must repeat its mask
    ("shufflenetv2_x0_5", {"learn_tau": True, "learn_threshold": True}),  # fused (eager) neuron path
])
def test_checkpointing_gives_identical_gradients_and_bn_statistics(name, neuron):
    torch.manual_seed(0)
    plain = spikify(create_model(name, num_classes=10, image_size=32), T=2, neuron=neuron).train()
    ckpt = copy.deepcopy(plain)
    ckpt.checkpoint_segments = 3
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    assert torch.equal(_train_step(plain, x, y), _train_step(ckpt, x, y))
    assert any(isinstance(m, CheckpointSegment) for m in ckpt._ckpt_body[0].modules())
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.equal(p.grad, q.grad), n
    for (n, b), c in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(b, c), n  # running statistics updated once, not twice


def test_checkpointing_saves_less_for_backward():
    torch.manual_seed(0)
    net = spikify(create_model("squeezenet1_1", num_classes=10, image_size=32), T=2).train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    full = _saved_bytes(net, x, y)
    net.checkpoint_segments = 4
    segmented = _saved_bytes(net, x, y)
    assert 0 < segmented < full / 2


def test_checkpointing_option_is_validated_and_survives_copies():
    net = spikify(create_model("shufflenetv2_x0_5", num_classes=10, image_size=32), T=2)
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(SpikeliteError, match="checkpoint_segments"):
            net.checkpoint_segments = bad
    net.checkpoint_segments = 2
    x = torch.randn(2, 3, 32, 32)
    net(x).sum().backward()
    for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert other.checkpoint_segments == 2 and other._ckpt_body == []
        other(x).sum().backward()
    net.eval()
    with torch.no_grad():
        a = net(x)
    net.checkpoint_segments = 0
    with torch.no_grad():
        assert torch.equal(a, net(x))


# SqueezeNet with max-pooling (its default is avg since issue #28): max-pooling's backward stays covered
MAX_POOL = {"squeezenet1_1": {"pool": "max"}}


@pytest.mark.parametrize("name,neuron,dtype", [
    ("squeezenet1_1", None, torch.float32),  # dropout and max-pooling; the compiled LIF kernels
    ("shufflenetv2_x0_5", {"learn_tau": True, "learn_threshold": True}, torch.float32),  # neuron parameters
    ("mnasnet_b1", {"kind": "if", "v_reset": None}, torch.float64),  # residual adds, soft-reset IF
])
def test_recomputed_neurons_give_identical_gradients_and_bn_statistics(name, neuron, dtype):
    torch.manual_seed(0)
    plain = spikify(create_model(name, num_classes=10, image_size=32, **MAX_POOL.get(name, {})), T=2,
                    neuron=neuron).train().to(dtype)
    fast = copy.deepcopy(plain)
    fast.recompute_neurons = True
    x, y = torch.randn(6, 3, 32, 32, dtype=dtype), torch.randint(0, 10, (6,))
    assert torch.equal(_train_step(plain, x, y), _train_step(fast, x, y))
    body = fast._ckpt_body[0]
    pairs = [m for m in body.modules() if isinstance(m, RecomputedNeuron)]
    assert len(pairs) == len(plain.spiking_layers())  # every neuron layer in these nets follows a BatchNorm
    for (n, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert p.grad is not None and torch.equal(p.grad, q.grad), n
    for (n, b), c in zip(plain.named_buffers(), fast.buffers()):
        assert torch.equal(b, c), n  # running statistics updated once, not twice
    assert set(fast.state_dict()) == set(plain.state_dict())  # the recomputed graph adds no state
    fast.eval()  # eval and no_grad use the ordinary graph
    plain.eval()
    with torch.no_grad():
        assert torch.equal(fast(x), plain(x))


def test_recomputed_neurons_give_identical_gradients_under_autocast():
    torch.manual_seed(0)
    plain = spikify(create_model("shufflenetv2_x0_3", num_classes=10, image_size=32), T=2).train()
    fast = copy.deepcopy(plain)
    fast.recompute_neurons = True
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for net in (plain, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()  # outside autocast, as training loops do
    for (n, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert torch.equal(p.grad, q.grad), n


def test_recomputed_neurons_save_less_for_backward_and_spikes_are_stored_compactly():
    torch.manual_seed(0)
    net = spikify(create_model("squeezenet1_1", num_classes=10, image_size=32, pool="max"), T=2).train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    full = _saved_bytes(net, x, y)
    net.recompute_neurons = True
    recomputed = _saved_bytes(net, x, y)
    assert 0 < recomputed < 0.7 * full  # measured: 0.59 (SqueezeNet 1.1, T=4, batch 32)
    # no float tensor that holds only spikes is saved in full (max-pooling keeps its input too)
    from spikelite.snn.layers import _pack_saved

    net.recompute_neurons = False
    loose = []

    def pack(t):
        p = _pack_saved(t)
        if not isinstance(p, tuple) and t.is_floating_point() and t.numel() > 1000 and bool(((t == 0) | (t == 1)).all()):
            loose.append((tuple(t.shape), t.grad_fn.name() if t.grad_fn is not None else "leaf"))
        return p

    net.compact_spikes = False
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda p: p[0].to(p[1]) if isinstance(p, tuple) else p):
        F.cross_entropy(net(x), y).backward()
    assert loose == []


def test_recompute_neurons_option_is_validated_survives_copies_and_yields_to_segments():
    net = spikify(create_model("shufflenetv2_x0_5", num_classes=10, image_size=32), T=2)
    for bad in (1, "yes", None):
        with pytest.raises(SpikeliteError, match="recompute_neurons"):
            net.recompute_neurons = bad
    net.recompute_neurons = True
    x = torch.randn(2, 3, 32, 32)
    net(x).sum().backward()
    for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert other.recompute_neurons and other._ckpt_body == []
        other(x).sum().backward()
    net.checkpoint_segments = 2  # both on: the segments (which recompute everything) are used
    net(x).sum().backward()
    assert any(isinstance(m, CheckpointSegment) for m in net._ckpt_body[0].modules())
    assert not any(isinstance(m, RecomputedNeuron) for m in net._ckpt_body[0].modules())


def test_speed_benchmark_runs_every_variant_and_the_peers_agree(monkeypatch, capsys):
    # benchmarks/speed.py end to end on a tiny configuration: every training and inference variant is
    # timed, memory counted, and the peers' logits agree with spikelite's on the same weights.
    pytest.importorskip("spikingjelly")
    pytest.importorskip("snntorch")
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from spikelite.snn import neuron

    monkeypatch.setattr(neuron._KERNELS, "broken", True)  # eager LIF kernels: no compile time here
    speed = __import__("speed")
    threads = torch.get_num_threads()
    try:
        for neuron_kind in ("default", "recipe"):
            res = speed.main(["--rounds", "1", "--warmup", "0", "--T", "2", "--batch", "2", "--neuron", neuron_kind,
                              "--models", "shufflenetv2_x0_3", "--threads", "1"])
            c = res[("shufflenetv2_x0_3", 2)]
            assert {k for _, k in c["times"]} == set(speed.TRAIN) | set(speed.INFER)
            assert all(v < 1e-4 for v in c["agree"].values()), (neuron_kind, c["agree"])
            assert c["mem"]["spikelite+ckpt"] < c["mem"]["spikelite"]  # checkpointing saves less for backward
            assert c["mem"]["spikelite+recompute"] < c["mem"]["spikelite"]  # so does recomputing the neuron layers
            out = capsys.readouterr().out
            assert "cnn+nhwc" in out and "spikelite-inference" in out and f"neuron={neuron_kind}" in out
            # the peers run the same dynamics: SpikingJelly's node without input decay and with a detached
            # reset exactly when spikelite's LIF has them
            lif = next(m for m in c["train"]["spikelite"].modules() if isinstance(m, neuron.LIF))
            sj = next(m.node for m in c["train"]["spikingjelly"].modules() if hasattr(m, "node"))
            assert (lif.decay_input, lif.detach_reset) == (sj.decay_input, sj.detach_reset)
            assert type(lif.surrogate).__name__.lower() == type(sj.surrogate_function).__name__.lower()
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("speed", None)


def test_speed_benchmark_runs_each_configuration_in_a_process_of_its_own(tmp_path):
    # more than one (model, T): one fresh process per configuration, every table printed, in order; the
    # sweep's other options reach each process
    pytest.importorskip("spikingjelly")
    pytest.importorskip("snntorch")
    import os
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    env = dict(os.environ, SPIKELITE_COMPILE="0")  # eager LIF kernels: no compile or build time here
    out = subprocess.run([sys.executable, str(bench / "speed.py"), "--rounds", "1", "--warmup", "0", "--T", "1", "2",
                          "--batch", "2", "--models", "shufflenetv2_x0_3", "--threads", "1", "--neuron", "recipe"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    tables = [ln for ln in out.stdout.splitlines() if ln.startswith("## ")]
    assert tables == ["## shufflenetv2_x0_3, T=1, batch 2", "## shufflenetv2_x0_3, T=2, batch 2"]
    assert out.stdout.count("neuron=recipe") == 2 and out.stdout.count("CPU threads 1,") == 2
    sys.path.insert(0, str(bench))
    try:
        speed = __import__("speed")
        assert speed._without(["--T", "1", "2", "--rounds", "3", "--models", "a", "b", "--one-process"],
                              ("--models", "--T", "--one-process")) == ["--rounds", "3"]
    finally:
        sys.path.remove(str(bench))
        sys.modules.pop("speed", None)


# ----------------------------------------------------------------------------------------------
# the allocator (spikelite.allocator)
# ----------------------------------------------------------------------------------------------

_FAULTS_CHILD = r"""
import resource, sys, torch
if sys.argv[1] == "retain":
    from spikelite.allocator import retain_freed_memory
    assert retain_freed_memory()
def faults_of_one_step():
    # a step-like pattern: large activations allocated, written and freed. 48 MiB is above glibc's
    # largest dynamic mmap threshold (32 MiB), so by default every block is a fresh mmap
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    xs = [torch.ones(12 << 20) for _ in range(4)]  # 4 x 48 MiB
    del xs
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_step()
print(min(faults_of_one_step() for _ in range(3)))
"""


def _glibc_linux() -> bool:
    import sys

    from spikelite import allocator

    return sys.platform.startswith("linux") and allocator._glibc() is not None


@pytest.mark.skipif(not _glibc_linux(), reason="glibc's mallopt only")
def test_retained_heap_stops_page_faults_on_repeated_large_tensors():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    faults = {}
    for mode in ("system", "retain"):
        out = subprocess.run([sys.executable, "-c", _FAULTS_CHILD, mode], env=env, capture_output=True, text=True,
                             check=True)
        faults[mode] = int(out.stdout.strip().splitlines()[-1])
    # glibc maps and unmaps each 48 MiB block: ~4 x 12288 pages fault in again every time; kept on the heap: ~none
    assert faults["system"] > 20000, faults
    assert faults["retain"] < faults["system"] / 10, faults


def test_malloc_mode_is_a_validated_runtime_key():
    from spikelite.allocator import apply_malloc_mode
    from spikelite.train import RUNTIME_KEYS, load_config

    with pytest.raises(SpikeliteError, match="malloc must be one of retain, system"):
        apply_malloc_mode("jemalloc")
    with pytest.raises(SpikeliteError, match="malloc"):
        load_config(None, ["malloc=fast"])
    assert load_config(None, []).malloc == "retain" and "malloc" in RUNTIME_KEYS
    assert apply_malloc_mode("system") is False


def test_malloc_default_follows_the_environment_switch(monkeypatch):
    # SPIKELITE_MALLOC=system turns the retained heap off for every command, spikelite train and the
    # benchmark's training cells included (their recipes take the default)
    from spikelite.train import load_config

    monkeypatch.setenv("SPIKELITE_MALLOC", "system")
    assert load_config(None, []).malloc == "system"
    assert load_config(None, ["malloc=retain"]).malloc == "retain"  # an explicit key wins
    monkeypatch.setenv("SPIKELITE_MALLOC", "fast")
    with pytest.raises(SpikeliteError, match="SPIKELITE_MALLOC must be one of retain, system, got 'fast'"):
        load_config(None, [])


def test_an_invalid_malloc_switch_is_one_clear_cli_error_for_every_command(monkeypatch, capsys):
    from spikelite import allocator
    from spikelite.cli import main

    calls = []
    monkeypatch.setattr(allocator, "retain_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr("spikelite.cli.retain_freed_memory", allocator.retain_freed_memory)
    monkeypatch.setenv("SPIKELITE_MALLOC", "fast")
    assert main(["models", "--format", "csv"]) == 2
    assert "spikelite models: error: SPIKELITE_MALLOC must be one of retain, system, got 'fast'" in capsys.readouterr().err
    assert calls == []
    monkeypatch.setenv("SPIKELITE_MALLOC", "retain")
    assert main(["models", "--format", "csv"]) == 0 and calls == [1]
    monkeypatch.setenv("SPIKELITE_MALLOC", "system")
    assert main(["models", "--format", "csv"]) == 0 and calls == [1]


def test_train_loop_benchmark_times_the_real_recipes(tmp_path):
    # benchmarks/train_loop.py end to end on digits: the real `spikelite train` recipes run as processes, every
    # SNN recipe reported against T x its CNN in the same round, and the evaluation of a CNN and its SNN
    import json
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "train_loop.py"
    env = dict(os.environ, SPIKELITE_COMPILE="0")
    tiny = ["--dataset", "digits", "--model", "shufflenetv2_x0_3", "--width", "0.25", "--image-size", "8",
            "--batch-size", "32", "--val-size", "200"]
    made = subprocess.run([sys.executable, "-m", "spikelite", "train", "--cnn", *tiny, "--epochs", "1",
                           "--train-subset", "128", "--val-subset", "64", "--threads", "1", "--quiet",
                           "--no-tensorboard", "--out", str(tmp_path / "cnn")], capture_output=True, text=True, env=env,
                          check=False)
    assert made.returncode == 0, made.stderr[-2000:]
    out = subprocess.run([sys.executable, str(bench), "--cnn", str(tmp_path / "cnn" / "last.pt"), "--images", "64",
                          "--val-images", "32", "--rounds", "1", "--threads", "1", "--recipes", "snn", "--cnn-args=",
                          "--eval", "--eval-images", "64", "--json", str(tmp_path / "out.json"), "--", *tiny],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "out.json").read_text())
    assert [r["recipe"] for r in res["rows"]] == ["cnn", "snn"]  # the CNN baseline is always run
    assert all(r["images"] == 64 and r["epoch_seconds"] > 0 for r in res["rows"])
    snn = res["summary"]["snn"]
    assert snn["baseline"] == "cnn" and snn["ratio_to_T_cnn"] == pytest.approx(
        res["rows"][0]["images_per_second"] / res["rows"][1]["images_per_second"] / 4)
    assert 0 < res["summary"]["eval"]["snn_fraction_of_cnn"] < 1.5
    assert "x (T x cnn)" in out.stdout and "eval    CNN" in out.stdout
