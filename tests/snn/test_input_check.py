"""A SpikingNet refuses NaN and ±inf input (issue #28, item 1): a neuron's threshold comparison is false for
NaN, so without the check a NaN image gives silent layers and a confident class."""

import inspect
import warnings

import pytest
import torch

from spikelite import SpikeliteError, convert
from spikelite.models import create_model
from spikelite.snn import inference_model, spikify
from spikelite.snn import net as net_module


def _cnn():
    torch.manual_seed(0)
    return create_model("shufflenetv2_x0_3", num_classes=10, image_size=8, width=0.25).eval()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_spiking_net_refuses_non_finite_input(bad):
    cnn = _cnn()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert not torch.isfinite(cnn(torch.full_like(x, bad))).all()  # the CNN says NaN
    for net in (spikify(cnn, T=2).eval(), convert(cnn, T=2, calibration=x).eval()):
        with torch.no_grad():
            assert torch.isfinite(net(x)).all()
        y = x.clone()
        y[1, 0, 2, 3] = bad  # one bad pixel in one image is enough
        for run in (net, net.forward_steps, inference_model(net)):
            with pytest.raises(SpikeliteError, match=r"input holds 1 non-finite value\(s\) .* of 576"):
                with torch.no_grad():
                    run(y)
        with pytest.raises(SpikeliteError, match="non-finite"):
            net(torch.full_like(x, bad))
    train_net = spikify(cnn, T=2).train()
    with pytest.raises(SpikeliteError, match="non-finite"):
        train_net(torch.full_like(x, bad))


def test_tracing_skips_the_check():
    # bool(tensor) while tracing would be baked into the graph as a constant, with a TracerWarning
    net = spikify(_cnn(), T=2).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        traced = torch.jit.trace(net, (x,), check_trace=False)
    lines, first = inspect.getsourcelines(net_module._check_finite_input)
    ours = [w for w in seen if w.filename == net_module.__file__ and first <= w.lineno < first + len(lines)]
    assert not ours, [str(w.message) for w in ours]
    with torch.no_grad():
        assert torch.equal(traced(x), net(x))
