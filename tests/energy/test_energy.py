"""spikelite.energy: exact AC/MAC counts (brute force, the all-ones-kernel formula, peer counters),
neuron counts, energy profiles, bad input and the CLI. The fan-out of single convs is in
test_energy_counting.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikelite import cli
from spikelite.snn import spikify
from spikelite.energy import (
    PROFILES,
    EnergyProfile,
    MemoryCost,
    get_profile,
    load_profiles,
    measure,
    resolve_profiles,
)
from spikelite.errors import SpikeliteError
from spikelite.models import create_model, model_info
from spikelite.snn import LIF


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the machine's 2 cores are shared; intra-op threads oversubscribe
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FUSED = {"backend": "fused"}  # no torch.compile in tests: same spikes, no compile time


# ----------------------------------------------------------------------------------------------
# a small hand-built SNN, counted independently
# ----------------------------------------------------------------------------------------------


class TinySNN(nn.Module):
    """conv(analog) -> BN -> LIF -> grouped strided conv -> LIF -> depthwise conv -> LIF -> avgpool -> linear,
    time folded into the batch like SpikingNet: the stem runs once on [N, ...]."""

    def __init__(self, T=3):
        super().__init__()
        self.T = T
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.lif1 = LIF(v_threshold=0.5, backend="fused")
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False)
        self.lif2 = LIF(v_threshold=0.3, backend="fused")
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.lif3 = LIF(v_threshold=0.2, backend="fused")
        self.fc = nn.Linear(8, 10)

    def forward(self, x, record=None):
        T, n = self.T, x.shape[0]
        h = self.bn1(self.conv1(x))
        s1 = self.lif1(h.unsqueeze(0).expand(T, *h.shape)).flatten(0, 1)
        s2 = self.lif2(self.conv2(s1).view(T, n, 8, 4, 4)).flatten(0, 1)
        s3 = self.lif3(self.dw(s2).view(T, n, 8, 4, 4)).flatten(0, 1)
        pooled = s3.mean((2, 3))
        if record is not None:
            record.update(s1=s1, s2=s2, s3=s3, pooled=pooled)
        return self.fc(pooled).view(T, n, 10).mean(0)


def _tiny(T=3):
    torch.manual_seed(0)
    net = TinySNN(T)
    with torch.no_grad():  # non-trivial BN statistics
        net.bn1.running_mean.uniform_(-0.2, 0.2)
        net.bn1.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_tiny_snn_counts_match_independent_computation():
    T, n = 3, 5
    net = _tiny(T)
    x = torch.randn(n, 3, 8, 8)
    rec = {}
    with torch.no_grad():
        net(x, record=rec)

        def ones(cout, cin_g, k, **kw):  # the formula, with the full output-channel count
            return lambda s: float(F.conv2d((s != 0).double(), torch.ones(cout, cin_g, k, k, dtype=torch.float64),
                                            **kw).sum())

        acs_conv2 = ones(8, 4, 3, stride=2, padding=1, groups=2)(rec["s1"])
        acs_dw = ones(8, 1, 3, padding=1, groups=8)(rec["s2"])
    r = measure(net, x, profiles=["45nm-fp32"])
    layers = {row.name: row for row in r.layers}
    assert r.spiking and r.time_steps == T and r.samples == n
    # the stem sees the analog image once per inference: dense MACs, padding taps included
    assert layers["conv1"].op == "MAC" and layers["conv1"].macs == 8 * 8 * 8 * 3 * 9
    assert layers["bn1"].op == "folded" and layers["bn1"].macs == 0
    assert layers["conv2"].op == "AC" and layers["conv2"].acs == pytest.approx(acs_conv2 / n, rel=0, abs=1e-9)
    assert layers["dw"].op == "AC" and layers["dw"].acs == pytest.approx(acs_dw / n, rel=0, abs=1e-9)
    # average-pooled spikes are not binary: the classifier is a dense MAC layer, at every step
    assert layers["fc"].op == "MAC" and layers["fc"].macs == T * 8 * 10
    assert r.acs == pytest.approx((acs_conv2 + acs_dw) / n, abs=1e-9)
    assert r.macs == 8 * 8 * 8 * 3 * 9 + T * 80
    # CNN-equivalent: every layer once per step
    assert r.cnn_macs == 8 * 8 * 8 * 27 + 8 * 4 * 4 * 4 * 9 + 8 * 4 * 4 * 9 + 80
    # neurons: one update per neuron per step; spikes and firing rates from the real outputs
    spikes = {k: float(rec[k].sum()) / n for k in ("s1", "s2", "s3")}
    neurons = {nr.name: nr for nr in r.neurons}
    assert neurons["lif1"].neurons == 8 * 8 * 8 and neurons["lif1"].updates == T * 8 * 8 * 8
    assert neurons["lif2"].updates == T * 8 * 4 * 4
    for key, name in (("s1", "lif1"), ("s2", "lif2"), ("s3", "lif3")):
        assert neurons[name].spikes == pytest.approx(spikes[key])
        assert neurons[name].firing_rate == pytest.approx(float(rec[key].mean()))
    assert r.neuron_updates == T * (512 + 128 + 128)
    assert r.firing_rate == pytest.approx(sum(spikes.values()) / r.neuron_updates)
    assert r.activation_sparsity == pytest.approx(1 - r.firing_rate)
    assert layers["conv2"].input_density == pytest.approx(float(rec["s1"].mean()))
    assert 0 < r.firing_rate < 1  # the test exercises real, partial activity
    # energy = the paper's formula
    assert r.energy[0].total_pj == pytest.approx(0.9 * r.acs + 4.6 * r.macs)


def test_counts_do_not_depend_on_batching_or_loader_form():
    net = _tiny()
    x = torch.randn(7, 3, 8, 8)
    y = torch.randint(0, 10, (7,))
    a = measure(net, x, batch_size=7)
    b = measure(net, x, batch_size=2)
    c = measure(net, [(x[:3], y[:3]), (x[3:], y[3:])])
    for r in (b, c):
        assert r.acs == pytest.approx(a.acs, rel=1e-12)
        assert r.macs == a.macs and r.cnn_macs == a.cnn_macs
        assert r.neuron_updates == a.neuron_updates
        assert r.spikes == pytest.approx(a.spikes, rel=1e-12)
    assert a.accuracy is None and c.accuracy is not None
    with torch.no_grad():
        assert c.accuracy == pytest.approx(float((net(x).argmax(1) == y).float().mean()))


def test_samples_truncates_the_data():
    net = _tiny()
    x = torch.randn(9, 3, 8, 8)
    r = measure(net, [(x[:4], None), (x[4:],)], samples=6)
    ref = measure(net, x[:6])
    assert r.samples == 6
    assert r.acs == pytest.approx(ref.acs, rel=1e-12) and r.spikes == pytest.approx(ref.spikes, rel=1e-12)


def test_batchnorm_that_cannot_be_folded_costs_macs_and_makes_next_layer_mac():
    class BNOnSpikes(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.lif = LIF(v_threshold=0.3, backend="fused")
            self.bn = nn.BatchNorm2d(4)  # normalises spikes: no conv to fold into
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            s = self.lif(self.conv1(x).unsqueeze(0).expand(2, -1, -1, -1, -1)).flatten(0, 1)
            return self.conv2(self.bn(s)).mean((1, 2, 3))

    torch.manual_seed(0)
    net = BNOnSpikes().eval()
    with torch.no_grad():
        net.bn.running_mean.fill_(0.3)  # binary in, non-binary out
    r = measure(net, torch.randn(3, 3, 6, 6))
    layers = {row.name: row for row in r.layers}
    assert layers["bn"].op == "MAC" and layers["bn"].macs == 2 * 4 * 36
    assert r.bn_macs == 2 * 4 * 36
    assert layers["conv2"].op == "MAC" and layers["conv2"].macs == 2 * 4 * 36 * 4 * 9
    assert r.acs == 0


def test_batchnorm_after_concatenated_or_broadcast_convs_is_folded():
    class CatBN(nn.Module):  # a mixed conv (two convs, concatenated) and a stem broadcast over time
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 2, 3, padding=1, bias=False)
            self.b = nn.Conv2d(3, 2, 5, padding=2, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.lif = LIF(v_threshold=0.3, backend="fused")

        def forward(self, x):
            h = torch.cat([self.a(x), self.b(x)], 1).unsqueeze(0).expand(2, -1, -1, -1, -1).flatten(0, 1)
            return self.lif(self.bn(h).view(2, x.shape[0], 4, 6, 6)).mean((0, 2, 3, 4))

    r = measure(CatBN(), torch.randn(3, 3, 6, 6))
    layers = {row.name: row for row in r.layers}
    assert layers["bn"].op == "folded" and r.bn_macs == 0
    assert r.macs == 2 * 36 * 3 * 9 + 2 * 36 * 3 * 25


def test_plain_cnn_is_all_macs_and_matches_model_info():
    cnn = create_model("squeezenet1_1")
    r = measure(cnn, torch.randn(2, 3, 32, 32), profiles=["45nm-fp32"])
    assert not r.spiking and r.acs == 0 and r.neuron_updates == 0
    assert r.macs == model_info(cnn).macs == r.cnn_macs
    assert r.comparison is None and r.firing_rate is None
    assert r.params == model_info(cnn).params
    assert all(row.op in ("MAC", "folded") for row in r.layers)
    assert r.energy[0].total_pj == pytest.approx(4.6 * r.macs)


def test_cnn_with_binary_input_is_still_all_macs():
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    r = measure(cnn, (torch.rand(2, 1, 8, 8) < 0.5).float())
    assert r.acs == 0 and r.macs == 4 * 36 * 9 + 3 * 144


def test_rate_encoded_input_makes_the_stem_ac():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    x = torch.rand(4, 3, 8, 8)
    neuron = {**FUSED, "v_threshold": 0.05}
    direct = measure(spikify(cnn, T=2, neuron=neuron), x)
    rate = measure(spikify(cnn, T=2, neuron=neuron, encoding="rate"), x)
    d = {row.name: row for row in direct.layers}
    r = {row.name: row for row in rate.layers}
    assert d["0"].op == "MAC" and d["0"].macs == 6 * 64 * 27  # analog image, once
    assert r["0"].op == "AC" and 0 < r["0"].acs < 2 * 6 * 64 * 27
    assert r["7"].op == "MAC" and r["7"].macs == 2 * 24  # pooled spikes
    assert r["7"].input_density > 0 and 0 < rate.neurons[-1].firing_rate < 1
    assert rate.cnn_macs == direct.cnn_macs


# ----------------------------------------------------------------------------------------------
# spiking SqueezeNet: CNN MACs, and the peers' counters on the same network
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def squeeze_snn():
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", pool="max")  # max-pooled spikes stay spikes: only the stem reads values
    calib = torch.randn(16, 3, 32, 32)
    with torch.no_grad():  # give BN real statistics so the layers see realistic pre-activations
        cnn.train()
        cnn(calib)
    cnn.eval()
    net = spikify(cnn, T=4, neuron=FUSED, balance=90.0, calibration=calib[:4]).eval()
    x = torch.randn(6, 3, 32, 32)
    return cnn, net, x


def test_snn_cnn_macs_equal_the_cnn(squeeze_snn):
    cnn, net, x = squeeze_snn
    r = measure(net, x, cnn=cnn, accuracy=0.88, cnn_accuracy=91.0)
    assert r.cnn_macs == model_info(cnn).macs
    assert r.time_steps == 4
    stem = r.layers[0]
    assert stem.name == "features.0.conv" and stem.op == "MAC"
    assert r.macs == stem.macs == model_info(cnn).macs / 88_735_744 * 1_769_472  # only the stem, once
    assert all(row.op in ("AC", "folded") for row in r.layers[1:])
    rates = [n.firing_rate for n in r.neurons]
    assert min(rates) > 0.0 and max(rates) < 1.0  # every layer fires, none saturates
    c = r.comparison
    assert c.cnn_energy_mj == pytest.approx(4.6e-9 * model_info(cnn).macs)
    assert c.energy_ratio == pytest.approx(c.cnn_energy_mj / c.snn_energy_mj)
    assert c.accuracy_diff == pytest.approx(0.88 - 0.91)
    # without the CNN the comparison uses the SNN's own layers for one step: same figure
    r2 = measure(net, x)
    assert r2.comparison.cnn_energy_mj == pytest.approx(c.cnn_energy_mj)
    assert r2.comparison.cnn_accuracy is None


@pytest.mark.slow
def test_agrees_with_spikingjelly_op_counter(squeeze_snn):
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    _, net, x = squeeze_snn
    r = measure(net, x)
    syn = SynOpCounter()
    mac = MACCounter(extra_ignore_modules=[nn.BatchNorm2d])  # BN folded, as we count it
    with torch.no_grad(), DispatchCounterMode([syn, mac]):
        net(x)
    n = x.shape[0]
    assert r.acs > 1e6
    assert abs(syn.get_total() / n - r.acs) <= 0.01 * r.acs
    assert abs(mac.get_total() / n - r.macs) <= 0.01 * r.macs
    # in fact they agree exactly: same fan-out, same dense MAC convention
    assert syn.get_total() / n == pytest.approx(r.acs, rel=1e-12)
    assert mac.get_total() / n == pytest.approx(r.macs, rel=1e-12)


@pytest.mark.slow
def test_agrees_with_neurobench_synaptic_operations(squeeze_snn):
    from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
    from neurobench.models import TorchModel

    _, net, x = squeeze_snn
    r = measure(net, x)
    model = TorchModel(net)
    model.add_activation_module(LIF)
    model.register_hooks()
    try:
        with torch.no_grad():
            preds = model(x)
        ops = SynapticOperations()(model, preds, (x, None))
        sparsity = ActivationSparsity()(model, preds, (x, None))
    finally:
        model.close_hooks()
    assert abs(ops["Effective_ACs"] - r.acs) <= 0.01 * r.acs
    assert ops["Effective_ACs"] == pytest.approx(r.acs, rel=1e-12)
    # NeuroBench's MACs skip zero inputs and padding taps: our effective_macs, not the dense figure
    assert ops["Effective_MACs"] == pytest.approx(r.effective_macs, rel=1e-12)
    assert r.effective_macs == 3 * 64 * 94 * 94  # 32x32 stem, pad 1: 94^2 in-bounds taps per channel pair
    assert r.macs == 3 * 64 * 9 * 32 * 32
    assert sparsity == pytest.approx(r.activation_sparsity, rel=1e-9)


# ----------------------------------------------------------------------------------------------
# profiles
# ----------------------------------------------------------------------------------------------


def test_paper_figure():
    e = get_profile("45nm-fp32").energy(16_610e3, 4_470e3)
    assert e.total_mj == pytest.approx(0.035511, rel=1e-6)
    assert round(e.total_mj, 4) == 0.0355


def test_builtin_profiles():
    assert list(PROFILES)[0] == "45nm-fp32"
    assert (PROFILES["45nm-fp16"].mac_pj, PROFILES["45nm-fp16"].ac_pj) == (1.5, 0.4)
    assert (PROFILES["45nm-int8"].mac_pj, PROFILES["45nm-int8"].ac_pj) == (0.23, 0.03)
    mem = PROFILES["45nm-fp32-mem"]
    e = mem.energy(1000, 10, neuron_updates=50)
    assert e.weight_memory_pj == pytest.approx(1010 * 4 * 12.5)
    assert e.state_memory_pj == pytest.approx(50 * 2 * 4 * 12.5)
    assert e.total_pj == pytest.approx(900 + 46 + 1010 * 50 + 5000)
    assert resolve_profiles(None)[0].name == "45nm-fp32"


def test_yaml_profiles(tmp_path):
    one = tmp_path / "chip.yaml"
    one.write_text("mac_pj: 3.0\nac_pj: 0.5\nneuron_update_pj: 0.25\n")
    (p,) = load_profiles(one)
    assert p == EnergyProfile("chip", 3.0, 0.5, 0.25, None, str(one))
    many = tmp_path / "many.yml"
    many.write_text("profiles:\n  a: {mac_pj: 1, ac_pj: 0.1}\n"
                    "  b: {mac_pj: 2, ac_pj: 0.2, memory: {pj_per_byte: 1.0, weight_bytes: 1, state_bytes: 2}}\n")
    a, b = load_profiles(many)
    assert (a.name, b.name) == ("a", "b") and b.memory == MemoryCost(1.0, 1.0, 2.0)
    net = _tiny()
    r = measure(net, torch.randn(2, 3, 8, 8), profiles=["45nm-int8", str(many)])
    assert [e.profile for e in r.energy] == ["45nm-int8", "a", "b"]
    assert r.energy_for("b").total_pj == pytest.approx(2 * r.macs + 0.2 * r.acs + (r.acs + r.macs) * 1.0
                                                        + 2 * r.neuron_updates * 2.0)


@pytest.mark.parametrize("text, match", [
    ("mac_pj: 3.0\n", r"missing required field\(s\) \['ac_pj'\]"),
    ("ac_pj: 3.0\n", r"missing required field\(s\) \['mac_pj'\]"),
    ("mac_pj: 1\nac_pj: 1\nmemory: {pj_per_byte: 1, weight_bytes: 4}\n", r"missing memory field\(s\) \['state_bytes'\]"),
    ("mac_pj: 1\nac_pj: 1\nmac_pJ: 2\n", r"unknown profile field\(s\) \['mac_pJ'\]"),
    ("mac_pj: -1\nac_pj: 1\n", r"mac_pj must be a finite number >= 0"),
    ("mac_pj: fast\nac_pj: 1\n", r"mac_pj must be a finite number"),
    ("profiles:\n  x: {ac_pj: 1}\n", r"profile 'x' is missing required field\(s\) \['mac_pj'\]"),
    ("[1, 2]\n", r"must hold a mapping"),
    ("mac_pj: [1\n", r"not valid YAML"),
])
def test_bad_profiles(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(SpikeliteError, match=match):
        load_profiles(f)
    with pytest.raises(SpikeliteError, match=match):
        measure(_tiny(), torch.randn(1, 3, 8, 8), profiles=[str(f)])


def test_unknown_profile_names():
    with pytest.raises(SpikeliteError, match="unknown energy profile 'hbm'"):
        resolve_profiles(["hbm"])
    with pytest.raises(SpikeliteError, match="given twice"):
        resolve_profiles(["45nm-fp32", "45nm-fp32"])
    with pytest.raises(SpikeliteError, match="does not exist"):
        load_profiles("/nonexistent/profile.yaml")


# ----------------------------------------------------------------------------------------------
# bad input, report formats
# ----------------------------------------------------------------------------------------------


def test_bad_input_raises_one_clear_error():
    net = _tiny()
    with pytest.raises(SpikeliteError, match="no samples"):
        measure(net, torch.empty(0, 3, 8, 8))
    with pytest.raises(SpikeliteError, match="no samples"):
        measure(net, [])
    with pytest.raises(SpikeliteError, match="no samples"):
        measure(net, iter([]))
    with pytest.raises(SpikeliteError, match="samples must be a positive integer"):
        measure(net, torch.randn(2, 3, 8, 8), samples=0)
    with pytest.raises(SpikeliteError, match="expects an nn.Module"):
        measure("model.pt", torch.randn(2, 3, 8, 8))
    with pytest.raises(SpikeliteError, match="data must be"):
        measure(net, 3)
    with pytest.raises(SpikeliteError, match="batch 0"):
        measure(net, [("x", "y")])
    with pytest.raises(SpikeliteError, match="failed on a data batch"):
        measure(net, torch.randn(2, 5, 8, 8))
    with pytest.raises(SpikeliteError, match="accuracy"):
        measure(net, torch.randn(2, 3, 8, 8), accuracy=150)


def test_report_json_and_table():
    net = _tiny()
    r = measure(net, torch.randn(3, 3, 8, 8))
    d = json.loads(r.to_json())
    assert d["acs"] == r.acs and d["samples"] == 3 and len(d["layers"]) == len(r.layers)
    assert d["energy"][0]["profile"] == "45nm-fp32"
    assert d["energy"][0]["total_mj"] == pytest.approx(r.energy_mj)
    assert d["comparison"]["energy_ratio"] == pytest.approx(r.comparison.energy_ratio)
    text = r.table(layers=True)
    for word in ("45nm-fp32", "45nm-fp32-mem", "ACs", "conv2", "lif3", "firing rate", "CNN/SNN"):
        assert word in text
    assert math.isfinite(r.comparison.energy_ratio) and r.comparison.energy_ratio > 1


def test_model_mode_and_rng_are_restored():
    net = _tiny().train()
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(123)
    expect = torch.rand(1)
    torch.manual_seed(123)
    measure(net, x)
    assert net.training and net.bn1.training
    assert torch.equal(torch.rand(1), expect)
    assert not net.conv1._forward_hooks  # hooks removed


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _write_checkpoint(path, model, meta):
    from spikelite.checkpoint import save_checkpoint

    save_checkpoint(path, model, meta=meta)


@pytest.fixture(scope="module")
def digits_ckpts(tmp_path_factory):
    from spikelite.data import load_split

    pytest.importorskip("spikelite.train")
    from spikelite.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("ckpt")
    val = load_split("digits", None, "val", cache_dir="off")
    info = {"dataset": "digits", "root": None, "classes": list(val.classes), "num_classes": 10,
            "mean": list(val.mean), "std": list(val.std), "image_size": 32, "in_chans": 3, "val_size": None,
            "split_seed": 0}
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10)
    cnn.eval()
    snn = spikify(cnn, T=2, neuron=FUSED)
    try:
        save_checkpoint(d / "cnn.pt", cnn, meta={"data": info})
        save_checkpoint(d / "snn.pt", snn, meta={"data": info, "source_checkpoint": {
            "path": str(d / "cnn.pt"), "kind": "cnn", "metrics": None}})
    except TypeError as exc:  # pragma: no cover - the training module's API changed
        pytest.skip(f"save_checkpoint signature: {exc}")
    return d


def test_cli_energy_table_and_json(digits_ckpts, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = cli.main(["energy", str(digits_ckpts / "snn.pt"), "--samples", "4", "--batch-size", "2",
                     "--profile", "45nm-fp32", "--profile", "45nm-int8", "--layers", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "45nm-int8" in text and "features.3.squeeze" in text and "SNN vs CNN" in text
    d = json.loads(out.read_text())
    assert d["samples"] == 4 and d["spiking"] and d["time_steps"] == 2
    assert d["comparison"]["cnn_source"].startswith("squeezenet1_1, run on the same 4 images")
    assert d["comparison"]["snn_accuracy"] is not None and d["comparison"]["cnn_accuracy"] is not None
    code = cli.main(["energy", str(digits_ckpts / "cnn.pt"), "--samples", "2", "--format", "json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and not d["spiking"] and d["acs"] == 0 and d["comparison"] is None


def test_cli_errors(digits_ckpts, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ac_pj: 1\n")
    out = tmp_path / "never.json"
    assert cli.main(["energy", str(digits_ckpts / "snn.pt"), "--profile", str(bad), "-o", str(out)]) == 2
    assert "missing required field" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["energy", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["energy", str(digits_ckpts / "snn.pt"), "--samples", "0"]) == 2
    assert "--samples" in capsys.readouterr().err


@pytest.mark.slow
def test_peers_option_runs_both_counters_on_the_same_rate_encoded_spikes():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    net = spikify(cnn, T=3, neuron={**FUSED, "v_threshold": 0.1}, encoding="rate")
    x = torch.rand(5, 3, 8, 8)
    r = measure(net, x, batch_size=2, peers=True, seed=7)
    sj, nb = r.peers["spikingjelly"], r.peers["neurobench"]
    assert r.acs > 0 and r.macs == 3 * 8 * 5  # only the classifier reads non-binary (pooled) values
    assert sj["synops"] == pytest.approx(r.acs, rel=1e-12) and nb["effective_acs"] == pytest.approx(r.acs, rel=1e-12)
    assert sj["mac_counter"] == pytest.approx(r.macs, rel=1e-12)
    assert nb["effective_macs"] == pytest.approx(r.effective_macs, rel=1e-12)
    assert nb["activation_sparsity"] == pytest.approx(r.activation_sparsity, rel=1e-9)
    assert sj["ac_counter"] > sj["synops"]  # it also counts additions in BN, pooling and the neurons
    # the same seed draws the same spikes again; another seed draws others
    assert measure(net, x, batch_size=2, seed=7).acs == r.acs
    assert measure(net, x, batch_size=2, seed=8).acs != r.acs
    assert "SynOpCounter" in r.table()


def test_input_repeated_over_time_counts_the_stem_every_step():
    class RepeatSNN(nn.Module):  # the image enters every step: the stem is temporal too
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.lif = LIF(v_threshold=0.2, backend="fused")
            self.fc = nn.Linear(4 * 25, 3)

        def forward(self, x):
            T, n = 3, x.shape[0]
            s = self.lif(self.conv(x.repeat(T, 1, 1, 1)).view(T, n, 4, 5, 5)).flatten(0, 1)
            return self.fc(s.flatten(1)).view(T, n, 3).mean(0)

    torch.manual_seed(0)
    r = measure(RepeatSNN(), torch.randn(4, 2, 5, 5))
    stem = 4 * 25 * 2 * 9
    assert r.time_steps == 3
    assert r.macs == 3 * stem  # analog input at every step
    assert r.cnn_macs == stem + 3 * 100  # one step of the CNN
    assert r.layers[1].op == "AC" and r.acs == pytest.approx(r.spikes * 3)  # each spike reaches 3 outputs


def test_per_step_batchnorm_is_never_folded_one_mac_per_element():
    """A time-aware BatchNorm scales each step differently, so it cannot fold into the conv before it."""
    from spikelite.snn import StepBatchNorm

    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", stem_reduction=4).eval()
    x = torch.rand(3, 3, 32, 32)
    shared = spikify(cnn, T=2).eval()
    per_step = spikify(cnn, T=2, time_bn="per-step").eval()
    a = measure(shared, x, profiles=["45nm-fp32"])
    b = measure(per_step, x, profiles=["45nm-fp32"])
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
             for m in per_step.modules() if isinstance(m, StepBatchNorm)]
    with torch.no_grad():
        per_step(x)
    for h in hooks:
        h.remove()
    elements = sum(sizes)
    assert a.acs == b.acs  # same spikes: the per-step copies start equal
    assert b.bn_macs - a.bn_macs == pytest.approx(elements / x.shape[0])
    assert b.macs - a.macs == pytest.approx(elements / x.shape[0])


def test_qcfs_cnn_is_priced_as_a_low_bit_network():
    from spikelite.models.qcfs import QCFS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), QCFS(4, threshold=0.7), nn.Conv2d(6, 5, 1),
                          nn.AvgPool2d(2), nn.Conv2d(5, 4, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        a = model[1](model[0](x))  # the QCFS output: whole multiples of 0.7 / 4, many zeros
    assert 0 < int((a == 0).sum()) < a.numel()
    rep = measure(model, x, profiles=["45nm-fp32", "45nm-int8"])
    q = rep.lowbit
    assert q is not None and q.activation_bits == 3  # L = 4: five values
    # only model[2] reads QCFS outputs: nonzero inputs x 5 outputs (1x1 conv); its dense count 6 x 5 x 64
    assert q.lowbit_macs == pytest.approx(int((a != 0).sum()) * 5 / 5)
    assert q.lowbit_dense_macs == pytest.approx(6 * 5 * 64)
    dense = 3 * 9 * 6 * 64 + 6 * 5 * 64 + 5 * 4 * 16 + 64 * 3
    assert rep.macs == pytest.approx(dense) and q.full_macs == pytest.approx(dense - 6 * 5 * 64)
    # priced: the add plus 3/32 of the multiplier for the low-bit MACs, the rest at full width
    fp32 = q.energy_for("45nm-fp32")
    assert fp32.total_pj == pytest.approx(q.lowbit_macs * (0.9 + 3.7 * 3 / 32) + q.full_macs * 4.6)
    assert q.energy_for("45nm-int8").total_pj == pytest.approx(q.lowbit_macs * (0.03 + 0.2 * 3 / 8)
                                                               + q.full_macs * 0.23)
    assert fp32.total_pj < rep.energy_for("45nm-fp32").total_pj
    assert "low-bit CNN (3-bit QCFS activations" in rep.table() and rep.to_dict()["lowbit"]["activation_bits"] == 3
    # a ReLU CNN and an SNN have no low-bit figure
    relu = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 1)).eval()
    assert measure(relu, x).lowbit is None


def test_profile_weight_bits(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("mac_pj: 2.0\nac_pj: 0.5\nweight_bits: 16\n")
    (prof,) = load_profiles(p)
    assert prof.weight_bits == 16 and prof.lowbit_mac_pj(4) == pytest.approx(0.5 + 1.5 * 4 / 16)
    assert prof.lowbit_mac_pj(32) == pytest.approx(2.0)  # never above a full MAC
    p.write_text("mac_pj: 2.0\nac_pj: 0.5\nweight_bits: 0\n")
    with pytest.raises(SpikeliteError, match="weight_bits must be a positive integer"):
        load_profiles(p)


class PooledSNN(nn.Module):
    """Spikes -> overlapping average pool (3x3, stride 2, ceil mode: SqueezeNet's) -> 1x1 conv, and a global
    pool of spikes -> linear: both pools fold into the layer that reads them."""

    def __init__(self, T):
        super().__init__()
        self.T = T
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.lif1 = LIF(v_threshold=0.3, backend="fused")
        self.pool = nn.AvgPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(4, 6, 1)
        self.lif2 = LIF(v_threshold=0.3, backend="fused")
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x, record=None):
        T, n = self.T, x.shape[0]
        h = self.conv1(x)
        s1 = self.lif1(h.unsqueeze(0).expand(T, *h.shape)).flatten(0, 1)
        p = self.pool(s1)
        c2 = self.conv2(p)
        s2 = self.lif2(c2.view(T, n, *c2.shape[1:])).flatten(0, 1)
        g = self.gap(s2)
        if record is not None:
            record.update(s1=s1, s2=s2)
        return self.fc(g.flatten(1)).view(T, n, 10).mean(0)


def test_average_pools_of_spikes_fold_into_the_next_layer():
    T, n = 3, 4
    torch.manual_seed(1)
    net = PooledSNN(T).eval()
    x = torch.randn(n, 3, 9, 9)  # 9 -> ceil((9 - 3) / 2) + 1 = 4: windows overlap
    rec = {}
    with torch.no_grad():
        net(x, record=rec)
    r = measure(net, x, profiles=["45nm-fp32"])
    layers = {row.name: row for row in r.layers}
    # each spike reaches conv2's 6 outputs once per pool window that holds it
    windows = F.avg_pool2d(rec["s1"].double(), 3, 2, 0, True, True, 1)
    assert 0 < float(rec["s1"].sum()) and layers["conv2"].op == "AC"
    assert layers["conv2"].acs == pytest.approx(float(windows.sum()) * 6 / n)
    assert layers["conv2"].macs == 0
    # a global pool read through a flatten is not followed (the view drops the tag): the linear stays MAC
    assert layers["fc"].op == "MAC"


def test_pooled_qcfs_activations_stay_low_bit():
    from spikelite.models.qcfs import QCFS

    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), QCFS(4, threshold=0.5), nn.AvgPool2d(2),
                          nn.Conv2d(4, 6, 1)).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        a = model[1](model[0](x))
    rep = measure(model, x, profiles=["45nm-fp32"])
    # each nonzero activation in a 2x2 window reaches the 6 outputs of the 1x1 conv at the window's position
    assert rep.lowbit.lowbit_macs == pytest.approx(int((a != 0).sum()) * 6 / 3)
    assert rep.lowbit.full_macs == pytest.approx(3 * 9 * 4 * 64)  # the stem only
