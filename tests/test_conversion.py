"""Conversion that converges: ConversionIF, spikelite.convert, QCFS with a learned λ, spikelite convert.

The property under test is the one a correct rate-coded conversion must have: as T grows, every neuron
layer's time-averaged output (rate × amplitude) and the network's logits approach the CNN's, for every
zoo family's topology (concatenation, channel shuffle, residual additions, depthwise convolutions,
average pooling), with nothing re-estimated after conversion.
"""

import json

import pytest
import torch
from torch import nn

from spikelite import SpikeliteError
from spikelite import data as D
from spikelite import neuron
from spikelite import train as T
from spikelite.cli import main as cli_main
from spikelite.convert import SpikingNet, convert, layer_errors, spikify
from spikelite.energy import measure
from spikelite.models import create_model
from spikelite.neuron import QCFS, ConversionIF


@pytest.fixture(autouse=True)
def _one_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKELITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(neuron._KERNELS, "broken", True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reference_if(x_seq, th, v_init, signed):
    """The neuron's update written out one element at a time (floats, no tensors)."""
    out = []
    for seq in x_seq.reshape(x_seq.shape[0], -1).t().tolist():
        v, count, row = v_init * th, 0, []
        for x in seq:
            v += x
            s = 1 if v >= th else (-1 if signed and v < 0 and count > 0 else 0)
            v -= s * th
            count += s
            row.append(s * th)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64).t().reshape(x_seq.shape)


@pytest.mark.parametrize("signed", [False, True])
def test_conversion_if_matches_its_update_rule_and_rounds_a_constant_input(signed):
    torch.manual_seed(0)
    th = 0.7
    x = torch.randn(6, 3, 5, dtype=torch.float64) * 0.6
    n = ConversionIF(v_threshold=th, signed=signed).double()
    th = float(n.v_threshold)  # 0.7 as a float32, then widened
    assert torch.equal(n(x), _reference_if(x, th, 0.5, signed))
    # a constant input c for T steps: count = clamp(floor(T·c/θ + 1/2), 0, T) (the QCFS rounding)
    T_ = 8
    c = torch.linspace(-0.5, 1.2, 41, dtype=torch.float64)
    counts = n(c.expand(T_, -1).contiguous()).sum(0) / th
    expected = torch.clamp(torch.floor(T_ * c / th + 0.5), 0, T_)
    assert torch.allclose(counts, expected)


def test_signed_spikes_take_back_an_excess_spike_and_the_count_never_goes_negative():
    th = 1.0
    x = torch.tensor([[1.0], [-1.0], [0.0], [0.0]])
    plain = ConversionIF(th, signed=False)(x).sum(0)
    signed = ConversionIF(th, signed=True)(x).sum(0)
    assert plain.item() == 1.0 and signed.item() == 0.0  # Σx = 0: only the signed neuron says so
    torch.manual_seed(1)
    x = torch.randn(16, 200) * 0.8
    s = ConversionIF(th, signed=True)(x)
    assert (s.cumsum(0) >= 0).all() and ((s == 0) | (s.abs() == th)).all()
    # the count tracks clamp(round(Σx/θ), 0, T) closer than the unsigned neuron's does
    target = torch.clamp(torch.floor(x.sum(0) / th + 0.5), 0, x.shape[0])
    err_signed = (s.sum(0) / th - target).abs().mean()
    err_plain = (ConversionIF(th, signed=False)(x).sum(0) / th - target).abs().mean()
    assert err_signed < 0.5 * err_plain, (err_signed, err_plain)


def test_fast_and_autograd_paths_give_the_same_spikes_and_finite_surrogate_gradients():
    torch.manual_seed(2)
    n = ConversionIF(v_threshold=0.9, signed=True, learn_threshold=True)
    x = torch.randn(5, 4, 6) * 0.7
    with torch.no_grad():
        fast = n(x)
    xg = x.clone().requires_grad_(True)
    slow = n(xg)
    assert torch.equal(fast, slow.detach())
    slow.square().sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    assert n.v_threshold.grad is not None and torch.isfinite(n.v_threshold.grad)


def _settle_bn(model, x):
    """Give BatchNorm running statistics of real activations (cumulative average over a few passes)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
    return model.eval()


FAMILIES = {  # every zoo topology: fire modules (concat), channel shuffle, inverted residuals (adds,
    # depthwise convs), MixNet's mixed depthwise kernels (ReLU variant, SE gates), Xception's separable blocks
    "squeezenet1_1": dict(options={"pool": "avg"}),
    "shufflenetv2_x0_5": dict(width=0.25),
    "mnasnet_b1": dict(width=0.12),
    "xception_mini": dict(width=0.25),
    "mixnet_s": dict(width=0.05, options={"act": "relu"}),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_converges_to_its_cnn_as_T_grows(name):
    spec = FAMILIES[name]
    torch.manual_seed(0)
    cnn = create_model(name, num_classes=10, image_size=32, width=spec.get("width", 1.0), **spec.get("options", {}))
    x = torch.randn(6, 3, 32, 32)
    _settle_bn(cnn, x)
    with torch.no_grad():
        ref = cnn(x)
    # percentile 100 on the images it runs on: no activation is clipped, so the SNN's limit is the CNN itself
    snn = convert(cnn, T=4, calibration=x, percentile=100).eval()
    errs, out_errs = {}, {}
    for t in (16, 256):
        snn.T = t
        with torch.no_grad():
            out = snn(x)
        out_errs[t] = float((out - ref).norm() / ref.norm())
        errs[t] = max(r["error"] for r in layer_errors(cnn, snn, x))
    # 16x the steps: the logits' error and the worst layer's error at least halve. Measured (untrained nets,
    # BatchNorm statistics of these images, so every layer's gain is large): logits 0.53 -> 0.066
    # (SqueezeNet), 0.64 -> 0.15 (ShuffleNetV2), 0.46 -> 0.10 (Xception), 0.67 -> 0.31 (MnasNet: ~35 neuron
    # layers, the error of a chain falls like depth/T; 0.084 at T = 1024).
    if name == "mixnet_s":
        # squeeze-excitation multiplies each step's spikes by a gate computed from that step's spikes: the
        # time average of a product is not the product of the averages. MixNet converges more slowly
        # (measured 1.31 -> 0.63); docs/conversion.md
        assert out_errs[256] < 0.6 * out_errs[16] and errs[256] < 0.6 * errs[16], (out_errs, errs)
    else:
        assert out_errs[256] < 0.5 * out_errs[16] and errs[256] < 0.5 * errs[16], (out_errs, errs)


def test_max_pooling_after_the_first_neuron_is_refused_by_name():
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=32, pool="max").eval()
    with pytest.raises(SpikeliteError, match="max-pool.*features.5.*pool=avg"):
        convert(cnn, T=4, calibration=torch.randn(2, 3, 32, 32))


def test_qcfs_thresholds_become_the_snn_thresholds_and_the_first_layer_is_exact_at_T_equal_L():
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=32, pool="avg", act_levels=4, act_threshold=2.0)
    qcfs = [(p, m) for p, m in cnn.named_modules() if isinstance(m, QCFS)]
    for k, (_, m) in enumerate(qcfs):
        m.set_threshold(0.5 + 0.1 * k)
    x = torch.randn(4, 3, 32, 32)
    _settle_bn(cnn, x)
    snn = convert(cnn, T=4)  # no calibration needed: every threshold is a learned λ
    got = {p: float(a.neuron.v_threshold) for p, a in snn.spiking_layers()}
    assert got == pytest.approx({p: m.threshold for p, m in qcfs})
    first = layer_errors(cnn, snn, x)[0]
    assert first["layer"] == "features.1" and first["error"] < 1e-6
    # λ learns: its gradient flows
    cnn.train()
    cnn(x).square().mean().backward()
    assert all(m.lam.grad is not None and torch.isfinite(m.lam.grad) for _, m in qcfs)


def test_converted_snn_trains_with_compact_spikes_off_for_its_non_binary_spikes():
    """ConversionIF spikes are ±θ, not 0/1: packing them as booleans would corrupt the gradients."""
    torch.manual_seed(0)
    cnn = create_model("shufflenetv2_x0_5", num_classes=10, image_size=32, width=0.25)
    x = torch.randn(4, 3, 32, 32)
    _settle_bn(cnn, x)
    snn = convert(cnn, T=3, calibration=x).train()
    grads = []
    for compact in (True, False):
        snn.zero_grad()
        snn.compact_spikes = compact
        snn(x).square().sum().backward()
        grads.append([p.grad.clone() for p in snn.parameters() if p.grad is not None])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_energy_counts_scaled_and_signed_spikes_as_accumulates():
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=32, pool="avg")
    x = torch.randn(4, 3, 32, 32)
    _settle_bn(cnn, x)
    snn = convert(cnn, T=4, calibration=x)
    report = measure(snn, x)
    by_name = {row.name: row for row in report.layers}
    assert by_name["features.3.expand3x3"].op == "AC" and by_name["features.0.conv"].op == "MAC"
    assert report.acs > 0


def test_spikify_with_a_conversion_neuron_is_rebuilt_from_its_checkpoint(tmp_path):
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=32, pool="avg")
    x = torch.randn(3, 3, 32, 32)
    _settle_bn(cnn, x)
    snn = convert(cnn, T=4, calibration=x).eval()
    T.save_checkpoint(tmp_path / "s.pt", snn)
    back, meta = T.load_checkpoint(tmp_path / "s.pt")
    assert meta["snn"]["neuron"]["kind"] == "conversion_if" and isinstance(back, SpikingNet)
    with torch.no_grad():
        assert torch.equal(back(x), snn(x))


def test_spikelite_convert_on_a_trained_digits_cnn(tmp_path, capsys):
    """Train a small CNN on real digits, convert it from the command line, check the accuracy converges."""
    D.clear_memory_cache()
    cfg = T.load_config(None, {"model.name": "squeezenet1_1", "model.options.pool": "avg",
                               "data.dataset": "digits", "data.image_size": 8, "threads": 1, "quiet": True,
                               "tensorboard": False, "batch_size": 32, "optim.lr": 0.05, "epochs": 3,
                               "optim.warmup_epochs": 0.5, "out": str(tmp_path / "cnn")})
    T.train(cfg)
    ckpt = tmp_path / "cnn" / "best.pt"
    capsys.readouterr()
    args = ["convert", str(ckpt), "--out", str(tmp_path / "snn.pt"), "--T", "4", "--check", "200",
            "--check-T", "4,32", "--threads", "1", "--calibration-size", "128", "--json"]
    assert cli_main(args) == 0
    res = json.loads(capsys.readouterr().out)["check"]
    assert res["cnn"] > 0.5  # it learned (10 classes)
    assert res["snn"]["32"] >= res["cnn"] - 0.05, res  # within 5 points at T = 32, 200 images
    assert res["snn"]["32"] >= res["snn"]["4"] - 0.02, res
    model, meta = T.load_checkpoint(tmp_path / "snn.pt")
    assert isinstance(model, SpikingNet) and model.T == 4 and meta["source_checkpoint"]["kind"] == "cnn"
    assert meta["conversion"]["percentile"] == 99.9 and len(meta["conversion"]["thresholds"]) == 25
    # the output checkpoint is an ordinary SNN checkpoint: eval reads it
    assert cli_main(["eval", str(tmp_path / "snn.pt"), "--split", "test", "--threads", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "snn"
    # an existing output is not replaced without --force; an SNN input is refused
    assert cli_main(args[:-1]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli_main(["convert", str(tmp_path / "snn.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "convert takes a CNN checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
