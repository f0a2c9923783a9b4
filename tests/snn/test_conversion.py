"""Conversion that converges: ConversionIF, spikelite.snn, QCFS with a learned λ, spikelite convert.

The property under test is the one a correct rate-coded conversion must have: as T grows, every neuron
layer's time-averaged output (rate × amplitude) and the network's logits approach the CNN's, for every
zoo family's topology (concatenation, channel shuffle, residual additions, depthwise convolutions,
average pooling), with nothing re-estimated after conversion.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikelite import SpikeliteError
from spikelite import data as D
from spikelite.snn import neuron
from spikelite import checkpoint as C
from spikelite import train as T
from spikelite.cli import main as cli_main
from spikelite.snn import SpikingNet, convert, layer_errors
from spikelite.energy import measure
from spikelite.models import create_model
from spikelite.snn import QCFS, ConversionIF


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


@pytest.mark.parametrize("burst", [1, 3])
def test_fast_and_autograd_paths_give_the_same_spikes_and_the_rate_codes_gradient(burst):
    torch.manual_seed(2)
    n = ConversionIF(v_threshold=0.9, signed=True, learn_threshold=True, burst=burst)
    x = torch.randn(5, 4, 6) * 0.7
    with torch.no_grad():
        fast = n(x)
    xg = x.clone().requires_grad_(True)
    slow = n(xg)
    assert torch.equal(fast, slow.detach())
    slow.sum().backward()
    # d(Σ_t out_t)/dx_t is 1 while the running input keeps the count unclipped, else 0: never T-fold
    total = x.cumsum(0)
    inside = (total >= 0) & (total <= 0.9 * torch.arange(1, 6).view(5, 1, 1))
    assert torch.equal(xg.grad, inside.float())
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
    C.save_checkpoint(tmp_path / "s.pt", snn)
    back, meta = C.load_model(tmp_path / "s.pt")
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
    model, meta = C.load_model(tmp_path / "snn.pt")
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


def test_rate_r_carries_r_times_T_levels_a_qcfs_cnn_with_L_levels_converts_exactly_at_T_L_over_r():
    """``rate=r``: up to r spikes per step on average, thresholds divided by r; a QCFS CNN with L = 8 levels is
    computed exactly at T = 4 (r = 2) as at T = 8 (r = 1), and not at T = 4 with r = 1."""
    torch.manual_seed(0)
    cnn = create_model("mnasnet_b1", num_classes=10, image_size=32, width=0.2, act_levels=8, act_threshold=1.0)
    x = torch.randn(6, 3, 32, 32)
    _settle_bn(cnn, x)
    for m in cnn.modules():
        if isinstance(m, QCFS):
            m.set_threshold(0.5 + 1.5 * float(torch.rand(())))
    with torch.no_grad():
        cnn.classifier[-1].weight.normal_(0, 0.1)
        want = cnn(x)
    errs = {}
    for steps, rate, burst in ((4, 2, 8), (8, 1, 8), (4, 1, 4)):
        snn = convert(cnn, T=steps, burst=burst, rate=rate).eval()
        with torch.no_grad():
            errs[(steps, rate)] = float((snn(x) - want).abs().max())
        if rate == 2:
            lam = sorted(float(m.threshold) for m in cnn.modules() if isinstance(m, QCFS))
            got = sorted(float(a.neuron.v_threshold) for _, a in snn.spiking_layers())
            assert got == pytest.approx([v / 2 for v in lam])  # thresholds (and amplitudes) halved
            assert snn.spiking_layers()[0][1].neuron.config()["rate"] == 2
    assert errs[(4, 2)] < 1e-5 and errs[(8, 1)] < 1e-5 and errs[(4, 1)] > 1e-2, errs
    # a step cannot carry more spikes than its burst
    with pytest.raises(SpikeliteError, match="needs burst >= 2"):
        ConversionIF(rate=2)
    with pytest.raises(SpikeliteError, match="rate"):
        ConversionIF(burst=2, rate=0)


def test_bursts_make_the_snn_at_T_equal_L_the_qcfs_cnn_and_count_as_that_many_events():
    """With bursts (up to ``burst`` spikes per step, the count never above t) every layer's count after T
    steps is exactly clamp(round(Σx/θ), 0, T): the SNN at T = L computes its QCFS CNN exactly."""
    torch.manual_seed(0)
    cnn = create_model("shufflenetv2_x0_5", num_classes=10, image_size=32, width=0.25, act_levels=4,
                       act_threshold=1.0)
    x = torch.randn(5, 3, 32, 32)
    _settle_bn(cnn, x)
    for m in cnn.modules():
        if isinstance(m, QCFS):
            m.set_threshold(0.8 + float(torch.rand(())))
    snn = convert(cnn, T=4, burst=4).eval()
    with torch.no_grad():
        assert torch.allclose(snn(x), cnn(x), atol=1e-4, rtol=1e-4)
    assert max(r["error"] for r in layer_errors(cnn, snn, x)) < 1e-4
    # the fine-tuning path gives the same spikes and a straight-through gradient
    n = snn.spiking_layers()[3][1].neuron
    seq = torch.randn(4, 2, 8, 4, 4) * 2
    with torch.no_grad():
        fast = n(seq)
    seq.requires_grad_(True)
    slow = n(seq)
    assert torch.equal(fast, slow.detach())
    slow.sum().backward()
    assert seq.grad.abs().sum() > 0
    # energy: a burst of k spikes into a conv is k events, each one AC per synapse
    spikes = {}
    reader = snn.body.get_submodule("stage2.0.branch2.3")  # the depthwise conv reading branch2.2's spikes
    h = reader.register_forward_pre_hook(lambda m, a: spikes.__setitem__("x", a[0].detach().clone()))
    report = measure(snn, x)
    h.remove()
    th = {float(a.neuron.v_threshold) for _, a in snn.spiking_layers()}
    xin = spikes["x"]
    events = None
    for t in th:  # the producing layer's amplitude
        k = xin.abs() / t
        if torch.allclose(k, k.round(), atol=1e-4) and (k.round() > 1).any():
            events = k.round()
    assert events is not None, "expected bursts (events > 1) at this layer"
    ones = torch.ones(reader.out_channels, 1, *reader.kernel_size)
    expect = F.conv2d(events, ones, stride=reader.stride, padding=reader.padding, groups=reader.groups).sum()
    row = {r.name: r for r in report.layers}["stage2.0.branch2.3"]
    assert row.op == "AC" and row.acs * x.shape[0] == pytest.approx(float(expect))


def test_train_converts_with_convert_and_fine_tunes_a_conversion_if_snn(tmp_path, capsys):
    """spikelite train --init-from CNN.pt --neuron kind=conversion_if: convert() (no BatchNorm
    re-estimation), then surrogate-gradient fine-tuning; and a ReLU CNN fine-tuned into a QCFS CNN."""
    D.clear_memory_cache()
    # (SqueezeNet: ShuffleNetV2 at width 0.25 has 4-channel branches whose quantised activations leave
    # BatchNorm channels with zero variance on 8x8 digits, and its gradients explode)
    base = {"model.name": "squeezenet1_1", "model.options.pool": "avg", "data.dataset": "digits",
            "data.image_size": 8, "threads": 1, "quiet": True, "tensorboard": False, "batch_size": 32,
            "optim.lr": 0.05, "data.val_subset": 96, "data.train_subset": 320}
    T.train(T.load_config(None, {**base, "epochs": 2, "out": str(tmp_path / "cnn")}))
    cnn_ckpt = str(tmp_path / "cnn" / "best.pt")
    # ReLU CNN -> QCFS CNN with learned λ, started at the ReLU outputs' 99.9th percentiles
    q = T.train(T.load_config(None, {**base, "epochs": 1, "init_from": cnn_ckpt, "model.options.act_levels": 4,
                                     "model.options.act_threshold": 1.0, "snn.calibration_size": 64,
                                     "optim.lr": 0.01, "out": str(tmp_path / "q")}))
    qnet, qmeta = C.load_model(tmp_path / "q" / "best.pt")
    assert qmeta["model_spec"]["act_levels"] == 4 and q["kind"] == "cnn"
    lams = [m.threshold for m in qnet.modules() if isinstance(m, QCFS)]
    assert lams and all(v > 0 for v in lams) and len(set(lams)) > 1  # per layer, from the calibration
    # a QCFS CNN given other levels: its λ re-estimated from its own (clipped) outputs, and the log says so
    T.train(T.load_config(None, {**base, "epochs": 1, "init_from": str(tmp_path / "q" / "best.pt"),
                                 "model.options.act_levels": 8, "snn.calibration_size": 64, "optim.lr": 0.001,
                                 "quiet": False, "out": str(tmp_path / "q8")}))
    log = capsys.readouterr().out
    assert "QCFS activations re-levelled (L=4 -> 8" in log and "learned λ not kept" in log
    assert C.load_model(tmp_path / "q8" / "best.pt")[1]["model_spec"]["act_levels"] == 8
    # the QCFS CNN converted with bursts, then fine-tuned one epoch with surrogate gradients
    cfg = T.load_config(None, {**base, "mode": "snn", "epochs": 1, "init_from": str(tmp_path / "q" / "best.pt"),
                               "snn.T": 4, "snn.neuron": {"kind": "conversion_if", "burst": 4},
                               "snn.calibration_size": 64, "optim.lr": 0.005, "out": str(tmp_path / "snn")})
    ft = T.train(cfg)
    snn, meta = C.load_model(tmp_path / "snn" / "last.pt")
    assert meta["snn"]["neuron"]["kind"] == "conversion_if" and meta["snn"]["neuron"]["burst"] == 4
    hist = meta["history"]
    assert hist[0]["epoch"] == 0 and hist[-1]["epoch"] == 1 and ft["final"]["train_loss"] > 0
    # epoch 0 is the converted network before fine-tuning: at T = L it is the QCFS CNN itself
    assert hist[0]["val_acc"] == q["best"]["val_acc"]
    ths = {float(a.neuron.v_threshold) for _, a in snn.spiking_layers()}
    assert len(ths) > 1


def test_calibration_never_updates_batchnorm_statistics_even_from_a_model_in_train_mode():
    """Found by the train pipeline (which converts a model in train mode): the calibration pass ran the
    CNN's BatchNorm layers in train mode and moved their running statistics."""
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=32, pool="avg")
    x = torch.randn(4, 3, 32, 32)
    _settle_bn(cnn, x)
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    cnn.train()
    a = convert(cnn, T=4, calibration=torch.randn(8, 3, 32, 32) * 3).eval()
    cnn.eval()
    b = convert(cnn, T=4, calibration=torch.randn(8, 3, 32, 32) * 3).eval()
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if "running" in k)


def test_a_converted_snn_exports_to_onnx_and_torchscript_and_nir_refuses_it_by_name(tmp_path):
    pytest.importorskip("onnxruntime")
    from spikelite.export import export

    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=16, pool="avg")
    x = torch.randn(4, 3, 16, 16)
    _settle_bn(cnn, x)
    snn = convert(cnn, T=3, calibration=x, burst=2).eval()
    for fmt in ("onnx", "torchscript"):  # each read back and checked against PyTorch by export itself
        res = export(snn, tmp_path / f"s.{fmt}", format=fmt)
        assert (tmp_path / f"s.{fmt}").stat().st_size > 0, res
    with pytest.raises(SpikeliteError, match="ConversionIF; NIR export knows spikelite's LIF and IF"):
        export(snn, tmp_path / "s.nir", format="nir")
    assert not (tmp_path / "s.nir").exists()


def test_bias_correction_matches_each_layers_mean_output_to_the_cnns():
    from spikelite.snn import correct_bias

    torch.manual_seed(0)
    cnn = create_model("shufflenetv2_x0_5", num_classes=10, image_size=32, width=0.25)
    x = torch.randn(8, 3, 32, 32)
    _settle_bn(cnn, x)
    snn = convert(cnn, T=4, calibration=x).eval()

    def mean_gap(net):  # per layer: |mean SNN output - mean CNN activation| averaged over channels
        rows = layer_errors(cnn, net, x)
        return [abs(r["snn_mean"] - r["cnn_mean"]) for r in rows]

    before = mean_gap(snn)
    with torch.no_grad():
        ref, out0 = cnn(x), snn(x)
    n = correct_bias(snn, cnn, x)
    after = mean_gap(snn)
    assert n == len(snn.spiking_layers())  # every neuron here is fed by a BatchNorm of its own
    assert sum(after) < 0.5 * sum(before), (sum(before), sum(after))
    with torch.no_grad():
        out1 = snn(x)
    assert (out1 - ref).norm() < (out0 - ref).norm()
