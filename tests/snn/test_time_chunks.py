"""Inference in windows of time steps (``time_chunk``): memory bounded in T, the one-pass forward's answer.

A chunked run hands every neuron's state (LIF/IF membrane, ConversionIF membrane and spike count) from one
window to the next and keeps nothing after the call. The property under test: for every neuron kind, direct
and rate encoding, and the zoo's topologies (concatenation, residual additions, depthwise convolutions,
channel shuffle, average pooling), the spikes of every layer and the per-step outputs equal the one-pass
forward's, with a window length that does not divide T. The models run in float64: a convolution over
fewer rows may round differently in the last bit in float32 (oneDNN picks its kernel by batch size), which
float64 makes irrelevant to the spikes.
"""

import itertools

import pytest
import torch
from torch import nn

from spikelite import SpikeliteError
from spikelite.models import create_model
from spikelite.snn import (IF, LIF, ConversionIF, StepBatchNorm, balance_thresholds, chunk_aware, convert, correct_bias,
                           inference_model, layer_errors, spikify, time_window)
from spikelite.snn import net as snn_net
from spikelite import native as _native
from spikelite.snn.neuron import lif_steps_from
from spikelite.snn.window import windows
from spikelite.snn.net import recalibrate_bn

T = 7
CHUNK = 3  # 7 = 3 + 3 + 1: a window of one step at the end


@pytest.fixture(autouse=True)
def _isolated(isolated_run):  # tests/conftest.py: eager kernels (the native operator), one thread
    yield


def _settle_bn(model, x):
    """BatchNorm running statistics of real activations (one cumulative pass), then eval mode."""
    recalibrate_bn(model, x)
    return model.eval()


MODELS = {  # the zoo at tiny widths: what each one brings
    "squeezenet1_1": dict(),                   # concatenation, average pooling
    "mnasnet_b1": dict(width=0.12),            # residual additions, depthwise convolutions
    "shufflenetv2_x0_5": dict(width=0.25),     # concatenation, channel shuffle, depthwise convolutions
}

NEURONS = {
    "lif": lambda cnn, x, enc: spikify(cnn, T=T, encoding=enc, neuron={"kind": "lif", "v_threshold": 0.3}),
    "lif-soft": lambda cnn, x, enc: spikify(cnn, T=T, encoding=enc,
                                            neuron={"kind": "lif", "tau": 3.0, "v_threshold": 0.4, "v_reset": None}),
    "if": lambda cnn, x, enc: spikify(cnn, T=T, encoding=enc, neuron={"kind": "if", "v_threshold": 0.6}),
    "conversion-if": lambda cnn, x, enc: convert(cnn, T=T, calibration=x, encoding=enc, v_init=0.3),
    "conversion-if-burst": lambda cnn, x, enc: convert(cnn, T=T, calibration=x, encoding=enc, burst=3, rate=2),
}


def _recorded(net, x, **kw):
    """Per-step outputs, and every neuron layer's spikes over all T steps ([T·N, ...], time-major), as the
    network gives them; the random state is reset first (rate encoding)."""
    spikes = {}

    @chunk_aware
    def keep(m, args, out):
        spikes.setdefault(m, []).append(out.detach())

    handles = [m.register_forward_hook(keep) for _, m in net.spiking_layers()]
    try:
        torch.manual_seed(7)
        with torch.no_grad():
            out = net.forward_steps(x, **kw)
    finally:
        for h in handles:
            h.remove()
    return out, {m: torch.cat(v) for m, v in spikes.items()}


def _windows_seen(net, x, **kw) -> int:
    """How many windows the call ran in (0: one pass)."""
    seen = set()

    @chunk_aware
    def count(m, args, out):
        win = time_window()
        if win is not None:
            seen.add(win.index)

    layer = net.spiking_layers()[-1][1]
    h = layer.register_forward_hook(count)
    try:
        with torch.no_grad():
            net.forward_steps(x, **kw) if kw else net(x)
    finally:
        h.remove()
    return len(seen)


def _check_same(net, x, chunk=CHUNK):
    ref, ref_spikes = _recorded(net, x, time_chunk=None)
    out, spikes = _recorded(net, x, time_chunk=chunk)
    assert out.shape == ref.shape == (net.T, x.shape[0], 10)
    assert torch.equal(out, ref), float((out - ref).abs().max())
    assert spikes.keys() == ref_spikes.keys()
    for m, s in ref_spikes.items():
        assert torch.equal(spikes[m], s), m
    return ref, ref_spikes


@pytest.mark.parametrize("model,kind", list(itertools.product(sorted(MODELS), sorted(NEURONS))))
def test_chunked_inference_gives_the_one_pass_spikes_and_outputs(model, kind):
    torch.manual_seed(0)
    cnn = create_model(model, num_classes=10, image_size=32, **MODELS[model]).double()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    _settle_bn(cnn, x)
    net = NEURONS[kind](cnn, x, "direct").eval()
    ref, spikes = _check_same(net, x)
    # the test means something only if the network is alive: most layers fire, the output moves over time
    firing = [float((s != 0).double().mean()) for s in spikes.values()]
    assert sum(f > 0 for f in firing) >= 0.6 * len(firing), firing
    assert float(ref.std(0).abs().max()) > 0


@pytest.mark.parametrize("kind", ["lif", "conversion-if-burst"])
def test_rate_encoding_draws_the_same_spikes_window_by_window(kind):
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=32).double()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    _settle_bn(cnn, x)
    net = NEURONS[kind](cnn, x, "rate").eval()
    _, spikes = _check_same(net, x, chunk=2)
    assert sum(bool((s != 0).any()) for s in spikes.values()) >= len(spikes) // 2


def test_per_step_batchnorm_and_the_qcfs_charge_offset_see_absolute_steps():
    # StepBatchNorm normalises step t with its own statistics (window w starts at step w.start), and a LIF
    # replacing QCFS gets its constant charge spread over all T steps, not over one window
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=32, act_levels=4, act_threshold=1.0).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    _settle_bn(cnn, x)
    net = spikify(cnn, T=T, neuron={"kind": "lif", "v_threshold": 0.3}, time_bn="per-step", time_bn_steps=5).eval()
    assert any(a.charge_offset for _, a in net.spiking_layers())
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, StepBatchNorm):  # every step its own statistics, so a wrong step index shows
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g, dtype=torch.float64) * 0.3)
    _check_same(net, x)
    _check_same(net, x, chunk=1)


def test_an_inference_copy_takes_time_chunk_and_gives_the_same_answer():
    torch.manual_seed(0)
    cnn = create_model("shufflenetv2_x0_5", num_classes=10, image_size=32, width=0.25).double()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    _settle_bn(cnn, x)
    net = spikify(cnn, T=T, neuron={"kind": "lif", "v_threshold": 0.3}).eval()
    fast = inference_model(net, time_chunk=2)
    assert fast.time_chunk == 2 and inference_model(net).time_chunk == "auto"
    with torch.no_grad():
        ref = net.forward_steps(x, time_chunk=None)
    out = fast.forward_steps(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)  # BatchNorm folded: rounding only
    assert torch.equal(fast(x), out.mean(0))
    assert _windows_seen(fast, x) == 4 and _windows_seen(fast, x, time_chunk=None) == 0


def test_no_state_survives_a_chunked_call_not_even_a_failed_one():
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=32).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    _settle_bn(cnn, x)
    net = convert(cnn, T=T, calibration=x).eval()
    before = {name: set(vars(m)) for name, m in net.named_modules()}
    with torch.no_grad():
        first = net.forward_steps(x, time_chunk=CHUNK)
        # a call that fails in its second window leaves nothing behind either
        layer = net.spiking_layers()[3][1]

        @chunk_aware
        def fail(m, args, out):
            if time_window().index == 1:
                raise RuntimeError("stop here")

        h = layer.register_forward_hook(fail)
        with pytest.raises(RuntimeError, match="stop here"):
            net.forward_steps(x, time_chunk=CHUNK)
        h.remove()
        assert time_window() is None
        second = net.forward_steps(x, time_chunk=CHUNK)
    assert torch.equal(first, second)
    assert {name: set(vars(m)) for name, m in net.named_modules()} == before
    # the next call on another batch size starts from rest, not from the last call's membranes
    with torch.no_grad():
        assert torch.equal(net.forward_steps(x[:1], time_chunk=CHUNK), net.forward_steps(x[:1], time_chunk=None))


def test_a_bad_time_chunk_is_one_clear_error():
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=32)
    net = spikify(cnn, T=4).eval()
    x = torch.randn(2, 3, 32, 32)
    for bad in (0, -2, 2.5, "16", True):
        with pytest.raises(SpikeliteError, match="time_chunk"), torch.no_grad():
            net.forward_steps(x, time_chunk=bad)
        with pytest.raises(SpikeliteError, match="time_chunk"):
            net.time_chunk = bad
        with pytest.raises(SpikeliteError, match="time_chunk"):
            inference_model(net, time_chunk=bad)
    with pytest.raises(SpikeliteError, match="time_chunk=2.*no_grad"):
        net.forward_steps(x, time_chunk=2)  # autograd on: no gradient crosses windows
    net.train()
    with pytest.raises(SpikeliteError, match="time_chunk=2.*eval"), torch.no_grad():
        net.forward_steps(x, time_chunk=2)
    with pytest.raises(SpikeliteError, match="CNN has no time steps"):
        inference_model(cnn, time_chunk=2)

    class Odd(nn.Module):  # a neuron of one's own cannot hand its state over
        def forward(self, x_seq):
            return (x_seq > 0).to(x_seq.dtype)

    odd = spikify(cnn, T=4, neuron=Odd).eval()
    with pytest.raises(SpikeliteError, match="Odd cannot hand their state"), torch.no_grad():
        odd.forward_steps(x, time_chunk=2)


def test_auto_chunks_large_inference_calls_only(monkeypatch):
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=32).double()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    _settle_bn(cnn, x)
    net = spikify(cnn, T=T, neuron={"kind": "lif", "v_threshold": 0.3}).eval()
    assert net.time_chunk == "auto" and _windows_seen(net, x) == 0  # 7 x 3 rows: far below the limit
    # 7 steps x 3 images > 6 steps x images at 3x32x32: windows of 6 // 3 = 2 steps
    monkeypatch.setattr(snn_net, "AUTO_CHUNK_VALUES", 6 * 3 * 32 * 32)
    assert _windows_seen(net, x) == 4
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.forward_steps(x, time_chunk=None).mean(0), rtol=0, atol=0)
    # a hook that was not written for windows keeps seeing all T steps in one call
    h = net.spiking_layers()[0][1].register_forward_hook(lambda m, a, out: None)
    assert _windows_seen(net, x) == 0
    h.remove()
    net.time_chunk = None
    assert _windows_seen(net, x) == 0
    net.time_chunk = "auto"
    net.train()  # training mode (BatchNorm statistics of the whole batch) and autograd: one pass
    assert _windows_seen(net, x) == 0
    net.eval()
    seen = []
    layer = net.spiking_layers()[-1][1]
    h = layer.register_forward_hook(chunk_aware(lambda m, a, out: seen.append(time_window())))
    net(x)  # autograd on
    h.remove()
    assert seen == [None]
    odd = spikify(cnn, T=T, neuron=lambda: _Odd()).eval()  # auto leaves a neuron of one's own alone
    assert _windows_seen(odd, x) == 0


class _Odd(nn.Module):
    def forward(self, x_seq):
        return (x_seq > 0).to(x_seq.dtype)


def test_lif_steps_from_a_membrane_continue_every_lif_variant_exactly():
    g = torch.Generator().manual_seed(0)
    variants = [LIF(), LIF(v_reset=None, tau=3.7), LIF(decay_input=False, v_reset=-0.5), IF(v_threshold=0.8),
                IF(v_reset=None), LIF(tau=2.0, v_threshold=0.6, learn_tau=True)]
    for n, dtype in itertools.product(variants, (torch.float32, torch.float64)):
        n = n.to(dtype)
        x = torch.randn(9, 4, 5, 6, generator=g, dtype=dtype) * 1.5 + 0.4
        with torch.no_grad():
            ref = n(x)
            tau, th = n.tau.detach().to(dtype), n.v_threshold.detach().to(dtype)
            v, parts = None, []
            for a, b in ((0, 4), (4, 5), (5, 9)):
                s, v = lif_steps_from(x[a:b], v, tau, th, n.v_reset, n.decay_input)
                parts.append(s)
        assert 0.05 < float(ref.mean()) < 0.9
        assert torch.equal(torch.cat(parts), ref), n


def test_every_neuron_continues_exactly_from_window_to_window():
    # the neurons on their own, in windows of 4 of 10 steps: LIF/IF on the native operator (lif_steps, from a
    # given membrane) where it applies, else the Python hand-over; ConversionIF's membrane, count and step
    g = torch.Generator().manual_seed(0)
    makers = [LIF, lambda: LIF(v_reset=None), lambda: LIF(tau=3.7, v_reset=-0.5), lambda: LIF(decay_input=False),
              IF, lambda: IF(v_reset=None), lambda: LIF(backend="torch"), lambda: LIF(learn_tau=True),
              lambda: ConversionIF(v_threshold=0.8), lambda: ConversionIF(burst=3, rate=2, v_init=0.2),
              lambda: ConversionIF(signed=False)]
    for make, dtype in itertools.product(makers, (torch.float32, torch.float64)):
        n = make().to(dtype)
        base = torch.randn(10, 3, 4, 5, 5, generator=g, dtype=dtype) * 1.2 + 0.3
        for x in (base, base.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3),  # channels_last steps
                  base[0].expand(10, 3, 4, 5, 5)):  # one input broadcast over time (a direct-encoded stem)
            with torch.no_grad():
                ref = n(x)
                parts = []
                ws = windows(10, 4)
                for win in ws:
                    with win:
                        parts.append(n(x[win.start:win.start + win.steps]))
            assert bool((ref != 0).any()) and bool((ref == 0).any())
            assert torch.equal(torch.cat(parts), ref), (n, dtype, x.stride())
            assert not ws[0].states and time_window() is None  # the state went with the last window
    if _native.ops() is not None:  # the native path really ran: lif_steps against its Python twin
        x = torch.randn(6, 2, 8, generator=g)
        s, v = _native.ops().lif_steps(x, None, 2.0, 1.0, 0.0, True, False)
        s2, v2 = lif_steps_from(x, None, torch.tensor(2.0), torch.tensor(1.0), 0.0, True)
        assert torch.equal(s, s2) and torch.equal(v, v2)


def test_layer_errors_bias_correction_and_balancing_are_the_same_in_windows():
    torch.manual_seed(0)
    cnn = create_model("shufflenetv2_x0_5", num_classes=10, image_size=32, width=0.25).double()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    _settle_bn(cnn, x)
    results = {}
    for chunk in (None, CHUNK):
        net = convert(cnn, T=T, calibration=x)
        net.time_chunk = chunk
        errors = layer_errors(cnn, net, x)
        n = correct_bias(net, cnn, x)
        biases = [m.bias.detach().clone() for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        results[chunk] = (errors, n, biases)
    (e0, n0, b0), (e1, n1, b1) = results[None], results[CHUNK]
    assert n0 == n1 > 0 and len(e0) == len(e1) > 5
    for r0, r1 in zip(e0, e1):  # a sum over windows against one mean over T: float64 rounding only
        assert r0["layer"] == r1["layer"] and r0["error"] == pytest.approx(r1["error"], rel=1e-9, abs=1e-12)
    for a, b in zip(b0, b1):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # spike-domain balancing reads every step's charge: concatenated window by window, the same thresholds
    lif = spikify(cnn, T=T).eval()
    other = spikify(cnn, T=T).eval()
    other.time_chunk = 2
    assert balance_thresholds(lif, x) == balance_thresholds(other, x)


def test_spikelite_convert_checks_in_windows_of_time_steps(tmp_path, capsys):
    import json

    from spikelite.checkpoint import save_checkpoint
    from spikelite.cli import main as cli_main
    from spikelite.data import load_split

    val = load_split("digits", None, "val", cache_dir="off")
    info = {"dataset": "digits", "root": None, "classes": list(val.classes), "num_classes": 10,
            "mean": list(val.mean), "std": list(val.std), "image_size": 8, "in_chans": 3, "val_size": None,
            "split_seed": 0}
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=8, pool="avg").eval()
    save_checkpoint(tmp_path / "cnn.pt", cnn, meta={"data": info})
    base = ["convert", str(tmp_path / "cnn.pt"), "--T", "5", "--calibration-size", "16", "--check", "12",
            "--check-T", "5,9", "--bias-correction", "--threads", "1", "--json", "--force"]
    runs = {}
    for chunk in ("off", "2"):
        assert cli_main(base + ["--out", str(tmp_path / f"snn-{chunk}.pt"), "--time-chunk", chunk]) == 0
        runs[chunk] = json.loads(capsys.readouterr().out)
    one, windowed = runs["off"], runs["2"]
    assert windowed["thresholds"] == one["thresholds"]
    assert windowed["check"]["snn"] == one["check"]["snn"] and windowed["check"]["cnn"] == one["check"]["cnn"]
    for a, b in zip(one["check"]["layers"], windowed["check"]["layers"]):
        assert a["layer"] == b["layer"] and a["error"] == pytest.approx(b["error"], rel=1e-5, abs=1e-7)
    for bad in ("0", "-3", "some"):
        assert cli_main(base + ["--out", str(tmp_path / "x.pt"), "--time-chunk", bad]) == 2
        assert "--time-chunk must be auto, off or a positive number" in capsys.readouterr().err


def test_evaluate_runs_a_large_T_snn_in_windows_by_default(monkeypatch):
    # spikelite eval / validation: evaluate() runs the model under no_grad in eval mode, so "auto" applies
    from spikelite.data import BatchLoader, load_split
    from spikelite.train import evaluate

    val = load_split("digits", None, "val", cache_dir="off")
    val = val.subset(torch.arange(24))
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=val.image_size, pool="avg").eval()
    net = convert(cnn, T=T, calibration=next(iter(BatchLoader(val, 16, shuffle=False, augment=None)))[0])
    monkeypatch.setattr(snn_net, "AUTO_CHUNK_VALUES", 8 * 3 * val.image_size ** 2 * 3)  # 8 images x 3 steps
    seen = set()
    h = net.spiking_layers()[-1][1].register_forward_hook(
        chunk_aware(lambda m, a, out: seen.add(None if time_window() is None else time_window().index)))
    auto = evaluate(net, val, batch_size=8)
    assert seen == {0, 1, 2}  # 7 steps in windows of 3
    seen.clear()
    net.time_chunk = None
    one = evaluate(net, val, batch_size=8)
    h.remove()
    assert seen == {None}
    assert auto["accuracy"] == one["accuracy"] and torch.equal(auto["confusion"], one["confusion"])
    assert auto["loss"] == pytest.approx(one["loss"], rel=1e-6)
