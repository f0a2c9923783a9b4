"""spikelite.export: NIR round trips for the zoo's SNNs, ONNX and TorchScript, bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from spikelite import cli
from spikelite.snn import spikify
from spikelite.errors import SpikeliteError
from spikelite.export.files import _spiking_outputs
from spikelite.export.onnx import _inference_copy
from spikelite.models import create_model

E = pytest.importorskip("spikelite.export")
nir = pytest.importorskip("nir")
pytest.importorskip("nirtorch")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is fastest, and on a shared 2-core machine much faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomize_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BatchNorm statistics (so folding is exercised) with a positive bias (so neurons fire)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2 + 0.3)
    return model


def _snn(name: str, image_size: int, T: int = 3, neuron: dict | None = None, **opts):
    torch.manual_seed(0)
    cnn = _randomize_bn(create_model(name, num_classes=10, image_size=image_size, **opts)).eval()
    neuron = {"v_threshold": 0.3, "backend": "fused", **(neuron or {})}
    return spikify(cnn, T=T, neuron=neuron).eval()


def _layer_spikes(net, x):
    out, spikes = _spiking_outputs(net, x)
    return out, spikes


def _assert_round_trip(net, path, x):
    """Read the file back with our NIR reader and compare outputs and every neuron layer's spikes."""
    back = E.nir_to_torch(path)
    assert back.T == net.T  # from the graph's metadata
    ref, spikes = _layer_spikes(net, x)
    with torch.no_grad():
        ys, nir_spikes = back.forward_steps(x, record=True)
    assert ys.shape == (net.T, x.shape[0], ref.shape[1])
    torch.testing.assert_close(ys.mean(0), ref, atol=1e-5, rtol=1e-5)
    covered = set()
    active = 0
    for node, paths in back.layers.items():
        ours = torch.cat([spikes[p] for p in paths], dim=2) if len(paths) > 1 else spikes[paths[0]]
        assert torch.equal(ours, nir_spikes[node]), f"spikes of {node} differ"
        covered.update(paths)
        active += bool(ours.any())
    assert covered == set(spikes), "every spiking layer has a NIR neuron node"
    # the comparison means something only if the network is alive
    assert active >= 0.8 * len(back.layers), f"only {active}/{len(back.layers)} neuron layers fired"
    return back


ZOO = [
    ("squeezenet1_1", 16, dict(pool="avg")),  # ceil-mode pools with partial windows: conv + Scale
    ("squeezenet1_0", 12, dict(pool="avg")),
    ("shufflenetv2_x0_3", 8, dict(width=0.25)),
    ("mnasnet_b1", 16, dict(width=0.25)),
    ("xception_mini", 16, dict(width=0.25)),
]


@pytest.mark.parametrize("name,size,opts", ZOO, ids=[z[0] for z in ZOO])
def test_nir_round_trip_reproduces_every_spike(tmp_path, name, size, opts):
    net = _snn(name, size, **opts)
    path = tmp_path / f"{name}.nir"
    result = E.export(net, path)
    assert path.is_file() and result.format == "nir" and result.kind == "snn"
    assert result.checked and result.max_abs_diff <= result.tolerance and result.spike_mismatch == 0.0
    assert set(result.nodes) <= {"Input", "Output", "Conv2d", "LIF", "AvgPool2d", "Flatten", "Affine", "Scale",
                                 "Linear"}
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    _assert_round_trip(net, path, x)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_squeezenet_expand_convs_become_one_conv_and_one_neuron_node():
    net = _snn("squeezenet1_1", 16, pool="avg")
    g = E.to_nir(net)
    conv = g.nodes["features.3.expand1x1_expand3x3"]
    e1 = net.body.get_submodule("features.3.expand1x1")
    e3 = net.body.get_submodule("features.3.expand3x3")
    assert isinstance(conv, nir.Conv2d)
    assert conv.weight.shape == (e1.out_channels + e3.out_channels, e1.in_channels, 3, 3)
    head = conv.weight[:e1.out_channels]  # the 1x1 kernels, zero-padded to 3x3: only the centre is set
    assert np.count_nonzero(head[:, :, 1, 1]) > 0
    head = head.copy()
    head[:, :, 1, 1] = 0
    assert not head.any()
    lif = g.nodes["features.3.expand1x1_activation_expand3x3_activation"]
    assert isinstance(lif, nir.LIF) and lif.v_threshold.shape == (conv.weight.shape[0], 16, 16)
    # no concatenation survives: every fire module's two neuron layers are one node
    assert sum(isinstance(n, nir.LIF) for n in g.nodes.values()) == len(net.spiking_layers()) - 8


def test_shufflenet_channel_shuffle_is_folded_into_weights():
    net = _snn("shufflenetv2_x0_3", 8, width=0.25)
    g = E.to_nir(net)
    # the chunk/concat/shuffle of a unit reaches the next unit's 1x1 conv as per-source slices of its weights
    parts = [k for k in g.nodes if k.startswith("stage2.1.branch2.0.part")]
    assert len(parts) == 2
    w = net.body.get_submodule("stage2.1.branch2.0").weight
    total = sum(np.abs(g.nodes[k].weight).sum() for k in parts)
    bn = net.body.get_submodule("stage2.1.branch2.1")
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    assert total == pytest.approx(float((w.detach()[:, :, 0, 0].abs() * scale[:, None].abs()).sum()), rel=1e-5)


NEURONS = [
    {"kind": "if", "v_threshold": 0.6},
    {"decay_input": False, "tau": 3.0, "v_threshold": 0.5},
    {"v_reset": -0.3, "tau": 1.7},
    {"learn_tau": True, "learn_threshold": True},
]


@pytest.mark.parametrize("neuron", NEURONS, ids=["if", "no_decay_input", "v_reset", "learned_tau_threshold"])
def test_nir_round_trip_neuron_variants(tmp_path, neuron):
    net = _snn("squeezenet1_1", 8, T=4, neuron=neuron, pool="avg")
    if neuron.get("learn_tau"):
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for _, act in net.spiking_layers():
                act.neuron.tau_param.fill_(float(torch.randn(1, generator=g)))
                act.neuron.v_threshold.fill_(0.2 + 0.3 * float(torch.rand(1, generator=g)))
    path = tmp_path / "v.nir"
    assert E.export(net, path).spike_mismatch == 0.0
    _assert_round_trip(net, path, torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2)))


class _OneLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


@pytest.mark.parametrize("neuron", [
    {"tau": 2.5, "v_threshold": 0.7, "v_reset": 0.1},
    {"tau": 4.0, "v_threshold": 0.5, "decay_input": False},
    {"kind": "if", "v_threshold": 0.8, "v_reset": -0.2},
], ids=["lif", "lif_no_decay_input", "if"])
@pytest.mark.parametrize("dt", [1.0, 1e-3])
def test_nir_neuron_parameters_are_the_forward_euler_discretisation(neuron, dt):
    """A plain forward-Euler integration of NIR's equations with the node's own parameters (independent
    of our reader) gives our neuron's spikes: tau dv/dt = (v_leak - v) + r I, v -> v_reset on a spike."""
    torch.manual_seed(0)
    net = spikify(_OneLayer().double(), T=6, neuron=dict(neuron, backend="torch")).eval()
    g = E.to_nir(net, input_shape=(2, 5, 5), dt=dt)
    (name, node), = [(k, n) for k, n in g.nodes.items() if isinstance(n, (nir.LIF, nir.IF))]
    assert g.metadata["dt"] == dt and g.metadata["spike_rule"] == "v >= v_threshold"
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64) * 2
    with torch.no_grad():
        current = net.body.conv(x)  # the neuron's input at every step (direct encoding)
        ours = net.body.act.neuron(current.unsqueeze(0).expand(6, *current.shape)).numpy()
    i = current.numpy()
    v = np.broadcast_to(node.v_reset, i.shape).astype(np.float64)
    for t in range(6):
        if isinstance(node, nir.IF):
            v = v + dt * node.r * i
        else:
            v = v + dt / node.tau * ((node.v_leak - v) + node.r * i)
        s = v >= node.v_threshold
        assert np.array_equal(s, ours[t] > 0), f"step {t}"
        v = np.where(s, node.v_reset, v)
    assert ours.any() and not ours.all()


class _Own(nn.Module):
    """A user's own CNN: a functional flatten and modules called 'input' and 'output'."""

    def __init__(self):
        super().__init__()
        self.input = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.output = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = self.pool(self.act(self.bn(self.input(x))))
        return self.output(x.reshape(x.shape[0], -1))


def test_a_users_own_snn_round_trips(tmp_path):
    torch.manual_seed(0)
    net = spikify(_randomize_bn(_Own()).eval(), T=3, neuron={"v_threshold": 0.2, "backend": "fused"}).eval()
    with pytest.raises(SpikeliteError, match="input_shape"):
        E.to_nir(net)  # no spikelite_spec to take the image size from
    g = E.to_nir(net, input_shape=(3, 8, 8))
    assert list(g.nodes) == ["input", "input_1", "act", "pool", "output.flatten", "output_1", "output"]
    assert isinstance(g.nodes["input"], nir.Input) and isinstance(g.nodes["output"], nir.Output)
    path = tmp_path / "own.nir"
    E.export(net, path, input_shape=(3, 8, 8))
    _assert_round_trip(net, path, torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)))


def test_spikingjelly_reads_our_nir_file(tmp_path):
    """A third-party reader: SpikingJelly's import_from_nir (dt=1e-4, its default) runs the graph."""
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    net = _snn("squeezenet1_1", 16, T=4, pool="avg")
    path = tmp_path / "sj.nir"
    # 19 px: both ceil-mode pools tile exactly, so the graph is plain AvgPool2d (SpikingJelly has no Scale)
    E.export(net, path, input_shape=(3, 19, 19))
    m = import_from_nir(str(path))
    x = torch.randn(2, 3, 19, 19, generator=torch.Generator().manual_seed(5))
    state, outs = None, []
    with torch.no_grad():
        for _ in range(net.T):
            out, state = m(x, state)
            outs.append(out)
        ref = net(x)
    assert ref.abs().max() > 0.01
    torch.testing.assert_close(torch.stack(outs).mean(0), ref, atol=1e-5, rtol=1e-5)


def test_rate_encoded_snn_takes_spike_trains_as_nir_input(tmp_path):
    torch.manual_seed(0)
    cnn = _randomize_bn(create_model("shufflenetv2_x0_3", num_classes=10, image_size=8, width=0.25)).eval()
    net = spikify(cnn, T=3, encoding="rate", neuron={"v_threshold": 0.3, "backend": "fused"}).eval()
    path = tmp_path / "rate.nir"
    result = E.export(net, path)
    assert result.checked and result.max_abs_diff <= result.tolerance
    back = E.nir_to_torch(path)
    assert back.metadata["encoding"] == "rate"
    steps = torch.bernoulli(torch.rand(3, 2, 3, 8, 8))
    with torch.no_grad():
        ref = net.body(steps.flatten(0, 1)).view(3, 2, -1).mean(0)
        torch.testing.assert_close(back.forward_steps(steps).mean(0), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(SpikeliteError, match="rate-encoded"):
        E.export(net, tmp_path / "rate.onnx")


# ---------------------------------------------------------------------------------------------
# What NIR cannot express, and bad input
# ---------------------------------------------------------------------------------------------


def test_mixnet_squeeze_excitation_is_refused_by_name(tmp_path):
    net = spikify(create_model("mixnet_s", num_classes=10, image_size=16).eval(), T=2)
    with pytest.raises(SpikeliteError, match=r"blocks\.\d+\.\d+\.se\.gate \(Sigmoid\).*squeeze-excitation"):
        E.export(net, tmp_path / "m.nir")
    assert not list(tmp_path.iterdir())


def test_squeezenet_max_pooling_is_refused_with_the_avg_option_named(tmp_path):
    net = spikify(create_model("squeezenet1_1", num_classes=10, image_size=16, pool="max").eval(), T=2)
    with pytest.raises(SpikeliteError, match=r"features\.5 \(MaxPool2d\).*squeezenet1_1 with pool='avg'"):
        E.to_nir(net)


def test_soft_reset_is_refused(tmp_path):
    net = _snn("shufflenetv2_x0_3", 8, neuron={"v_reset": None}, width=0.25)
    with pytest.raises(SpikeliteError, match="conv1.2 .*soft reset"):
        E.export(net, tmp_path / "s.nir")


def test_cnn_to_nir_is_refused():
    cnn = create_model("shufflenetv2_x0_3", num_classes=10, image_size=8, width=0.25)
    with pytest.raises(SpikeliteError, match="spikify"):
        E.export(cnn, "unused.nir")


def test_bad_format_and_paths_raise_one_clear_error_and_write_nothing(tmp_path):
    cnn = create_model("shufflenetv2_x0_3", num_classes=10, image_size=8, width=0.25).eval()
    with pytest.raises(SpikeliteError, match="unknown export format 'tflite'; valid: nir, onnx, torchscript"):
        E.export(cnn, tmp_path / "m.bin", format="tflite")
    with pytest.raises(SpikeliteError, match="cannot tell the export format"):
        E.export(cnn, tmp_path / "m.bin")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpikeliteError, match="cannot write .*cannot create its directory"):
        E.export(cnn, blocker / "m.onnx")
    with pytest.raises(SpikeliteError, match="is a directory"):
        E.export(cnn, tmp_path, format="onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failed_export_leaves_an_existing_file_untouched(tmp_path):
    out = tmp_path / "model.nir"
    out.write_bytes(b"previous export")
    net = spikify(create_model("squeezenet1_1", num_classes=10, image_size=8, pool="max").eval(), T=2)
    with pytest.raises(SpikeliteError):
        E.export(net, out)
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.nir"]


# ---------------------------------------------------------------------------------------------
# ONNX and TorchScript
# ---------------------------------------------------------------------------------------------


def test_inference_copy_matches_spikelites_neurons():
    for neuron in ({}, {"v_reset": None}, {"kind": "if"}, {"decay_input": False, "tau": 3.0}):
        net = _snn("shufflenetv2_x0_3", 8, neuron=neuron, width=0.25)
        x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.testing.assert_close(_inference_copy(net)(x), net(x), atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["cnn", "snn"])
def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path, kind):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _snn("shufflenetv2_x0_3", 8, width=0.25)
    if kind == "cnn":
        model = _randomize_bn(create_model("shufflenetv2_x0_3", num_classes=10, image_size=8, width=0.25)).eval()
    path = tmp_path / "m.onnx"
    result = E.export(model, path)
    assert result.checked and result.max_abs_diff <= result.tolerance
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(4))  # another batch size
    got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        ref = model(x)
    assert ref.abs().max() > 0.01
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")
@pytest.mark.parametrize("kind", ["cnn", "snn"])
def test_torchscript_export_matches_pytorch(tmp_path, kind):
    model = _snn("shufflenetv2_x0_3", 8, neuron={"v_reset": None}, width=0.25)  # soft reset is fine here
    if kind == "cnn":
        model = _randomize_bn(create_model("shufflenetv2_x0_3", num_classes=10, image_size=8, width=0.25)).eval()
    path = tmp_path / "m.pt"
    result = E.export(model, path)
    assert result.format == "torchscript" and result.max_abs_diff == 0.0
    loaded = torch.jit.load(str(path))
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Checkpoints and the CLI
# ---------------------------------------------------------------------------------------------


def test_cli_exports_a_checkpoint(tmp_path, capsys):
    from spikelite.checkpoint import save_checkpoint

    net = _snn("shufflenetv2_x0_3", 8, width=0.25)
    ckpt = save_checkpoint(tmp_path / "snn.pt", net)
    out = tmp_path / "exports" / "snn.nir"
    assert cli.main(["export", str(ckpt), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "check: read back" in text and "spikes differing: 0.000%" in text
    back = E.nir_to_torch(out)
    assert back.T == 3 and back.input_shape == (3, 8, 8)

    assert cli.main(["export", str(ckpt), "-o", str(tmp_path / "snn.onnx"), "--T", "2", "--json"]) == 0
    assert '"format": "onnx"' in capsys.readouterr().out

    assert cli.main(["export", str(ckpt), "-o", str(tmp_path / "x.nir"), "--format", "caffe"]) == 2
    err = capsys.readouterr().err
    assert "spikelite export: error: unknown export format 'caffe'" in err
    assert cli.main(["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.nir")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.nir").exists()


def test_per_step_batchnorm_is_one_clear_export_error(tmp_path):
    net = spikify(create_model("squeezenet1_1", stem_reduction=4, pool="avg"), T=2, time_bn="per-step").eval()
    with pytest.raises(SpikeliteError, match=r"to NIR: a per-step \(time-aware\) BatchNorm"):
        E.to_nir(net, (3, 32, 32))
    assert not list(tmp_path.iterdir())
