"""Energy counting of a SpikingNet run in windows of time steps (``time_chunk``, large T): the same counts as
the one-pass run, layer by layer, for binary, scaled/signed/burst spikes and per-step BatchNorm."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from spikelite.energy import measure
from spikelite.models import create_model
from spikelite.snn import chunk_aware, convert, spikify, time_window
from spikelite.snn import net as snn_net
from spikelite.snn.net import recalibrate_bn


@pytest.fixture(autouse=True)
def _isolated(isolated_run):  # tests/conftest.py: eager kernels (the native operator), one thread
    yield



def _report(net, x, chunk, **kw) -> dict:
    """measure()'s report as a dict, and how many windows the SNN ran in."""
    net.time_chunk = chunk
    seen = set()

    @chunk_aware
    def count(m, a, out):
        if time_window() is not None:
            seen.add((time_window().run, time_window().index))

    h = net.spiking_layers()[-1][1].register_forward_hook(count)
    try:
        report = measure(net, x, profiles=["45nm-fp32"], **kw)
    finally:
        h.remove()
    return dataclasses.asdict(report), len(seen)


def _same(one_pass: dict, chunked: dict) -> None:
    for key in one_pass:
        assert chunked[key] == one_pass[key], key


NETS = {
    "lif": lambda cnn, x: spikify(cnn, T=7, neuron={"kind": "lif", "v_threshold": 0.3}),
    "lif-per-step-bn": lambda cnn, x: spikify(cnn, T=7, neuron={"kind": "lif", "v_threshold": 0.3},
                                              time_bn="per-step"),
    "conversion-if-burst": lambda cnn, x: convert(cnn, T=7, calibration=x, burst=3, rate=2),
}


@pytest.mark.parametrize("kind", sorted(NETS))
def test_chunked_counts_equal_the_one_pass_counts(kind):
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=32).double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    recalibrate_bn(cnn, x)  # BatchNorm statistics of real activations
    cnn.eval()
    net = NETS[kind](cnn, x)
    one_pass, windows = _report(net, x, None, batch_size=2)
    assert windows == 0
    assert one_pass["acs"] > 0 and one_pass["macs"] > 0 and one_pass["spikes"] > 0
    for chunk in (3, 1):  # 7 = 3 + 3 + 1, and windows of one step (as many rows as images: not static calls)
        chunked, windows = _report(net, x, chunk, batch_size=2)
        assert windows == 2 * -(-7 // chunk)  # two batches
        _same(one_pass, chunked)
    ops = {row["name"]: row["op"] for row in one_pass["layers"]}
    assert ops["features.0.conv"] == "MAC" and ops["features.3.expand3x3"] == "AC"
    if kind == "lif-per-step-bn":
        assert one_pass["bn_macs"] > 0  # per-step BatchNorm cannot fold: counted, window by window too


def test_auto_chunking_inside_measure_keeps_the_counts(monkeypatch):
    torch.manual_seed(0)
    cnn = create_model("mnasnet_b1", num_classes=10, image_size=32, width=0.12).double()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    recalibrate_bn(cnn, x)  # BatchNorm statistics of real activations
    cnn.eval()
    net = convert(cnn, T=6, calibration=x)
    one_pass, windows = _report(net, x, None)
    assert windows == 0
    # 6 steps x 3 images > 8 steps x images at 3x32x32: windows of 8 // 3 = 2 steps
    monkeypatch.setattr(snn_net, "AUTO_CHUNK_VALUES", 8 * 3 * 32 * 32)
    auto, windows = _report(net, x, "auto")
    assert windows == 3
    _same(one_pass, auto)


class _Late(nn.Module):
    """A stem and a LIF layer that cannot fire at step 0 (so the first window of one step holds no spike),
    then a conv of its spikes (AC) read by a conv (its input: zeros in that window, analog later), and a
    BatchNorm of the spikes themselves (spikes later, nothing in that window)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 1, bias=False)
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.act2 = nn.ReLU()
        self.bn_spikes = nn.BatchNorm2d(2)
        self.head = nn.Linear(5 * 8 * 8, 5)

    def forward(self, x):
        s = self.act(self.stem(x))
        y = self.act2(self.bn(self.conv2(self.conv(s))))
        return self.head(torch.cat([y, self.bn_spikes(s)], 1).flatten(1))


def test_a_call_is_counted_as_a_whole_even_when_one_window_looks_like_spikes():
    torch.manual_seed(0)
    cnn = _Late().double().eval()
    with torch.no_grad():
        cnn.stem.weight.fill_(1.0)
    x = 0.7 + 0.4 * torch.rand(3, 1, 8, 8, dtype=torch.float64)  # LIF (τ=2, θ=0.6): H_0 = x/2 < 0.6, H_1 = 0.75x
    net = spikify(cnn, T=5, neuron={"kind": "lif", "v_threshold": 0.6})
    one_pass, _ = _report(net, x, None)
    by_name = {row["name"]: row for row in one_pass["layers"]}
    assert by_name["conv"]["op"] == "AC" and by_name["conv"]["acs"] > 0
    assert by_name["conv2"]["op"] == "MAC" and by_name["conv2"]["macs"] > 0  # a conv's output: analog
    assert by_name["bn"]["op"] == "folded"
    assert by_name["bn_spikes"]["op"] == "MAC"  # spikes to normalise: nothing to fold into
    chunked, windows = _report(net, x, 1)  # the first window: no spike yet, conv2's input all zeros
    assert windows == 5
    _same(one_pass, chunked)
