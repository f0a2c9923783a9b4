"""spikify: any CNN in, a working time-folded SNN out."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from spikelite import SpikeliteError
from spikelite.snn import SpikingActivation, TimeBroadcast, spikify
from spikelite.snn import LIF


def _timm_mixnet():
    timm = pytest.importorskip("timm")
    return timm.create_model("mixnet_s", num_classes=10)


PEER_MODELS = {
    "squeezenet1_1": lambda: torchvision.models.squeezenet1_1(num_classes=10),
    "shufflenet_v2_x0_5": lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10),
    "mnasnet1_0": lambda: torchvision.models.mnasnet1_0(num_classes=10),
    "timm_mixnet_s": _timm_mixnet,
}


@pytest.mark.parametrize("name", sorted(PEER_MODELS))
def test_library_models_convert_train_and_do_not_leak_state(name):
    torch.manual_seed(0)
    cnn = PEER_MODELS[name]()
    n_acts = sum(isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish)) for m in cnn.modules())
    net = spikify(cnn, T=2)
    x = torch.randn(2, 3, 32, 32)
    net.train()
    y = net(x)
    assert y.shape == (2, 10)
    y.square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a, b)
    assert len(net.spiking_layers()) >= n_acts > 0
    # nothing analog left behind (activation modules all replaced)
    assert not any(type(m) in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish) for m in net.modules())
    # caller's model untouched
    assert not any(isinstance(m, SpikingActivation) for m in cnn.modules())


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.c1(x))
        y = self.c2(x).relu()
        x = torch.relu(x + y)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_functional_activations_are_converted_and_named():
    net = spikify(FunctionalNet(), T=3)
    names = [p for p, _ in net.spiking_layers()]
    assert names == ["act_fn0", "act_fn1", "act_fn2"]
    sources = [m.source for _, m in net.spiking_layers()]
    assert sources == ["F.relu", "Tensor.relu", "F.relu"] or sources[1] == "Tensor.relu"
    code = net.body.code
    assert "relu" not in code.replace("act_fn", "")


def test_time_folding_and_direct_encoding_run_stem_once():
    cnn = torchvision.models.squeezenet1_1(num_classes=10)
    net = spikify(cnn, T=4)
    seen = {}
    for path in ("features.0", "features.3.squeeze", "classifier.1"):
        net.body.get_submodule(path).register_forward_hook(lambda m, i, o, p=path: seen.__setitem__(p, o.shape[0]))
    net(torch.randn(3, 3, 32, 32))
    assert seen == {"features.0": 3, "features.3.squeeze": 12, "classifier.1": 12}
    first = net.spiking_layers()[0][1]
    assert first.broadcast and not net.spiking_layers()[1][1].broadcast


def test_folded_equals_explicit_time_loop():
    """The folded network equals running the CNN step by step with stateful neurons by hand."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    net = spikify(cnn, T=5).eval()
    x = torch.randn(2, 3, 9, 9) * 3
    with torch.no_grad():
        steps = net.forward_steps(x)
        a1 = cnn[1](cnn[0](x))
        s1 = LIF()(a1.unsqueeze(0).expand(5, *a1.shape))
        a2 = torch.stack([cnn[3](s) for s in s1])
        s2 = LIF()(a2)
        ref = torch.stack([cnn[7](cnn[6](cnn[5](s))) for s in s2])
    assert torch.allclose(steps, ref, atol=1e-6)
    assert torch.allclose(net(x), ref.mean(0), atol=1e-6)


def test_residual_mixing_static_and_temporal_is_broadcast():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 1)
            self.c = nn.Conv2d(4, 4, 1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            s = self.stem(x)  # static: no neuron before it
            y = F.relu(self.c(s)) + s  # temporal + static
            return self.head(y.mean((2, 3)))

    net = spikify(Res(), T=3)
    assert any(isinstance(m, TimeBroadcast) for m in net.modules())
    assert net(torch.randn(2, 3, 4, 4)).shape == (2, 2)


def test_state_dict_roundtrip_deepcopy_pickle_and_T_change():
    torch.manual_seed(0)
    cnn = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    net = spikify(cnn, T=2).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = net(x)
    other = spikify(torchvision.models.shufflenet_v2_x0_5(num_classes=10), T=2).eval()
    other.load_state_dict(net.state_dict())
    assert torch.equal(other(x), ref)
    assert torch.equal(copy.deepcopy(net)(x), ref)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), ref)
    net.T = 6
    assert net.forward_steps(x).shape == (6, 2, 10)
    assert all(m.T == 6 for _, m in net.spiking_layers())


def test_train_and_eval_graphs_differ_and_both_work():
    class DropBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = F.relu(self.c(x))
            if self.training:  # branch on training: traced twice
                x = F.dropout(x, 0.5, True)
            return self.fc(x.mean((2, 3)))

    net = spikify(DropBlock(), T=2)
    assert net._eval_graph is not None
    x = torch.randn(2, 3, 6, 6)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    net(x).sum().backward()
    # .to() keeps the eval graph on the moved modules
    net.to(torch.float64).eval()
    assert net(x.double()).dtype == torch.float64


def test_threshold_balancing_keeps_deep_layers_firing():
    torch.manual_seed(0)
    cnn = torchvision.models.squeezenet1_1(num_classes=10)
    x = torch.randn(8, 3, 32, 32)
    rates = {}
    for mode in ("snn", "cnn"):
        net = spikify(cnn, T=4, balance=99.0, calibration=x, balance_mode=mode).eval()
        out = []
        hooks = [a.register_forward_hook(lambda m, i, o: out.append(float(o.mean()))) for _, a in net.spiking_layers()]
        with torch.no_grad():
            net(x)
        for h in hooks:
            h.remove()
        rates[mode] = out
        thr = [float(a.neuron.v_threshold) for _, a in net.spiking_layers()]
        assert len(set(thr)) > 5  # per-layer thresholds were set
    assert min(rates["snn"]) > 0.001  # every layer fires
    assert rates["snn"][-1] > 10 * max(rates["cnn"][-1], 1e-6)


def test_neuron_spec_dict_and_if_kind():
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    cnn(torch.randn(1, 1, 5, 5))
    net = spikify(cnn, T=2, neuron={"kind": "if", "v_threshold": 0.5, "surrogate": "atan"})
    neuron = net.spiking_layers()[0][1].neuron
    assert float(neuron.v_threshold) == 0.5 and neuron.surrogate.name == "atan"
    assert net.config()["neuron"]["kind"] == "if"


def test_rate_encoding_shapes_and_randomness():
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    net = spikify(cnn, T=4, encoding="rate").eval()
    x = torch.rand(2, 3, 8, 8)
    enc = net.encode(x)
    assert enc.shape == (8, 3, 8, 8) and set(enc.unique().tolist()) <= {0.0, 1.0}
    assert net(x).shape == (2, 2)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda net: net(torch.randn(3, 32, 32)), "rank"),
        (lambda net: net(torch.randn(2, 1, 32, 32)), "channels"),
        (lambda net: setattr(net, "T", 0), "T must be"),
    ],
)
def test_bad_input_to_spiking_net(call, match):
    net = spikify(torchvision.models.squeezenet1_1(num_classes=10), T=2)
    with pytest.raises(SpikeliteError, match=match):
        call(net)


def test_bad_arguments_to_spikify_leave_model_untouched():
    cnn = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Conv2d(3, 3, 1), nn.Tanh())
    before = copy.deepcopy(cnn.state_dict())
    with pytest.raises(SpikeliteError, match=r"3 \(Tanh\)"):
        spikify(cnn)
    assert isinstance(cnn[1], nn.ReLU) and all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())
    with pytest.raises(SpikeliteError, match="T must be"):
        spikify(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), T=0)
    with pytest.raises(SpikeliteError, match="no activation"):
        spikify(nn.Sequential(nn.Conv2d(3, 3, 1)))
    with pytest.raises(SpikeliteError, match="encoding"):
        spikify(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), encoding="latency")
    with pytest.raises(SpikeliteError, match="calibration"):
        spikify(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), balance=99.9)
    with pytest.raises(SpikeliteError, match="unknown neuron option"):
        spikify(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), neuron={"taux": 2})


def test_untraceable_model_gives_clear_error():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return F.relu(self.c(x))
            return x

    with pytest.raises(SpikeliteError, match="could not trace"):
        spikify(Dynamic())


@pytest.mark.slow
def test_compiles_with_torch_compile():
    net = spikify(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)), T=2)
    x = torch.randn(2, 3, 6, 6)
    net(x)
    eager = net(x)
    compiled = torch.compile(net)
    out = compiled(x)
    assert torch.allclose(out, eager, atol=1e-5)
    out.sum().backward()


def test_compact_spike_storage_saves_memory_and_keeps_gradients():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    net = spikify(cnn, T=3)
    from spikelite.snn import mark_spikes

    tagged = [n.args[0].target for n in net.body.graph.nodes if n.target is mark_spikes]
    assert tagged == ["2", "3", "7"]  # the pool (it keeps its input), the conv after it, the linear after the flatten
    x = torch.randn(4, 3, 8, 8)
    grads, stored = [], []
    for compact in (False, True):
        net.compact_spikes = compact
        net.zero_grad()
        kinds = []

        def pack(t, kinds=kinds):
            from spikelite.snn.layers import _pack_saved

            p = _pack_saved(t) if compact else t
            kinds.append((p[0] if isinstance(p, tuple) else p).dtype)
            return t

        net.compact_spikes = False  # count with our own hook (the innermost hook wins)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(x).sum().backward()
        net.compact_spikes = compact
        net.zero_grad()
        net(x).sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
        stored.append(kinds)
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert torch.bool not in stored[0] and stored[1].count(torch.bool) >= 3


def test_recalibrate_bn_fits_statistics_to_spikes():
    from spikelite.snn import recalibrate_bn

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(16, 3, 9, 9)
    cnn.train()
    for _ in range(20):  # running statistics fitted to the CNN's ReLU activations
        cnn(x)
    net = spikify(cnn.eval(), T=4)
    bn2 = net.body.get_submodule("4")
    before = bn2.running_mean.clone()
    assert recalibrate_bn(net, [(x, None)]) == 2
    # now the running statistics are exactly the batch statistics of the spike-driven conv output
    feats = {}
    net.body.get_submodule("3").register_forward_hook(lambda m, i, o: feats.__setitem__("c", o))
    net.eval()
    net(x)
    c = feats["c"]
    # (eval uses the unbiased running variance upstream, so spikes differ very slightly)
    assert torch.allclose(bn2.running_mean, c.mean((0, 2, 3)), atol=2e-3)
    assert not torch.allclose(bn2.running_mean, before)
    assert not net.training and bn2.momentum == 0.1
    with pytest.raises(SpikeliteError, match="empty"):
        recalibrate_bn(net, [])


def test_qcfs_forward_and_straight_through_gradient():
    from spikelite.snn import QCFS

    x = torch.tensor([-0.3, 0.0, 0.1, 0.124, 0.126, 0.5, 0.9, 1.0, 1.7], requires_grad=True)
    y = QCFS(4)(x)
    assert y.tolist() == [0.0, 0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    with pytest.raises(SpikeliteError, match="levels"):
        QCFS(0)


@pytest.mark.parametrize("T", [2, 4, 8])
def test_qcfs_network_converts_exactly_to_soft_reset_if_at_T_equal_levels(T):
    from spikelite.snn import QCFS

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), QCFS(T), nn.Flatten(),
                        nn.Linear(8 * 6 * 6, 5)).double()
    with torch.no_grad():
        cnn[1].running_mean.uniform_(-0.2, 0.2)
        cnn[1].running_var.uniform_(0.5, 2.0)
    cnn.eval()
    x = torch.randn(16, 3, 6, 6, dtype=torch.float64)
    snn = spikify(cnn, T=T, neuron={"kind": "if", "v_reset": None}).eval()
    (act,) = [a for _, a in snn.spiking_layers()]
    assert act.charge_offset == 0.5 and act.source == "QCFS"
    with torch.no_grad():
        assert torch.allclose(snn(x), cnn(x), atol=1e-9)
        # a hard reset (or no shift) is not the same function: the check above can fail
        act.charge_offset = 0.0
        assert not torch.allclose(snn(x), cnn(x), atol=1e-3)


def test_create_model_act_levels_swaps_every_relu_and_rebuilds():
    from spikelite.models import create_model
    from spikelite.snn import QCFS

    m = create_model("squeezenet1_1", image_size=32, act_levels=4)
    assert m.spikelite_spec["act_levels"] == 4
    assert not any(isinstance(x, nn.ReLU) for x in m.modules())
    assert sum(isinstance(x, QCFS) for x in m.modules()) == 25  # stem + 3 per fire module
    again = create_model(**m.spikelite_spec)
    assert [type(x) for x in again.modules()] == [type(x) for x in m.modules()]
    with pytest.raises(SpikeliteError, match="other activation"):
        create_model("mixnet_s", act_levels=4)  # SiLU
    relu_mix = create_model("mixnet_s", width=0.05, act="relu", act_levels=4)  # its SE gates stay analog sigmoids
    assert not any(isinstance(x, nn.ReLU) for x in relu_mix.modules())
    assert any(isinstance(x, nn.Sigmoid) for x in relu_mix.modules())
    with pytest.raises(SpikeliteError, match="act_levels"):
        create_model("squeezenet1_1", act_levels=0)


# ----------------------------------------------------------------------------------------------
# time-aware BatchNorm (time_bn="per-step")
# ----------------------------------------------------------------------------------------------


def _tiny_squeezenet():
    from spikelite.models import create_model

    torch.manual_seed(0)
    return create_model("squeezenet1_1", width=1.0, stem_reduction=4).eval()


def test_per_step_batchnorm_normalises_each_step_on_its_own():
    from spikelite.snn import StepBatchNorm

    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    step = StepBatchNorm.from_batchnorm(bn, steps=2, T=2)
    assert step.weight.shape == step.running_mean.shape == (2, 3)
    x = torch.randn(2 * 5, 3, 4, 4) * torch.tensor([1.0, 3.0]).repeat_interleave(5).view(-1, 1, 1, 1)
    step.eval(), bn.eval()
    assert torch.allclose(step(x), bn(x), atol=1e-6)  # a fresh copy: every step has bn's parameters

    step.train()
    with torch.no_grad():
        step.weight[1].mul_(2.0)
    y = step(x)
    ref0 = F.batch_norm(x[:5], None, None, step.weight[0], step.bias[0], True, 0.0, step.eps)
    ref1 = F.batch_norm(x[5:], None, None, step.weight[1], step.bias[1], True, 0.0, step.eps)
    assert torch.allclose(y, torch.cat([ref0, ref1]), atol=1e-5)
    # each step's running statistics follow its own samples (momentum 0.1 from bn's values)
    expect_var1 = 0.9 * bn.running_var + 0.1 * x[5:].var(dim=(0, 2, 3), unbiased=True)
    assert torch.allclose(step.running_var[1], expect_var1, atol=1e-5)
    assert not torch.allclose(step.running_var[0], step.running_var[1])
    y.square().sum().backward()
    assert step.weight.grad.shape == (2, 3) and (step.weight.grad.abs().sum(1) > 0).all()
    # evaluating longer than the layer was built for: the later steps use the last step's parameters
    step.eval()
    step.T = 3
    x3 = torch.randn(3 * 4, 3, 4, 4)
    y3 = step(x3)
    step.T = 2
    assert torch.allclose(y3[8:], step(torch.cat([x3[:4], x3[8:]]))[4:], atol=1e-6)
    with pytest.raises(SpikeliteError, match="not a multiple of T=2"):
        step(torch.randn(3, 3, 4, 4))
    with pytest.raises(SpikeliteError, match="BatchNorm1d/2d/3d"):
        StepBatchNorm.from_batchnorm(nn.GroupNorm(1, 3), 2)


def test_spikify_time_bn_per_step_replaces_the_spiking_part_only_and_round_trips():
    from spikelite.snn import StepBatchNorm, per_step_batchnorm, recalibrate_bn
    from spikelite.checkpoint import describe_model, rebuild_model

    cnn = _tiny_squeezenet()
    shared = spikify(cnn, T=3)
    net = spikify(cnn, T=3, time_bn="per-step")
    steps = [n for n, m in net.body.named_modules() if isinstance(m, StepBatchNorm)]
    assert steps and sorted(steps) == sorted(shared._temporal_bns)
    assert type(net.body.get_submodule("features.0.bn")) is nn.BatchNorm2d  # the stem runs once: shared
    x = torch.randn(6, 3, 32, 32)
    shared.eval(), net.eval()
    assert torch.allclose(shared(x), net(x), atol=1e-5)  # per-step copies of the CNN's statistics
    assert net.config()["time_bn"] == "per-step" and net.config()["time_bn_steps"] == 3
    assert "time_bn" not in shared.config()

    assert recalibrate_bn(net, x) == len(steps) + 1
    layer = net.body.get_submodule(steps[0])
    assert not torch.allclose(layer.running_mean[0], layer.running_mean[2])  # step 0 starts from rest
    net.T = 5  # evaluate longer than built: fine, the layers follow T
    net.eval()
    assert layer.T == 5 and net(x).shape == (6, 10)
    net.T = 3
    fast = net.inference()  # BatchNorm folding leaves the per-step layers as they are
    assert sum(isinstance(m, StepBatchNorm) for m in fast.modules()) == len(steps)
    assert fast.config() == net.config()
    assert torch.allclose(fast(x), net(x), atol=1e-4)

    meta = describe_model(net)
    again = rebuild_model(meta)
    again.load_state_dict(net.state_dict())
    again.eval()
    assert torch.equal(again(x), net(x))

    # a shared SNN (e.g. a fine-tuned checkpoint) made per-step afterwards
    assert per_step_batchnorm(shared, 2) == len(steps) and shared.time_bn_steps == 2
    with pytest.raises(SpikeliteError, match="already per-step"):
        per_step_batchnorm(shared)
    with pytest.raises(SpikeliteError, match="time_bn must be one of shared, per-step"):
        spikify(cnn, T=2, time_bn="bntt")
    with pytest.raises(SpikeliteError, match="time_bn_steps is only meaningful"):
        spikify(cnn, T=2, time_bn_steps=2)


def test_time_bn_per_step_on_timm_blocks_and_clear_errors():
    from spikelite.snn import StepBatchNorm
    from spikelite.models import create_model

    torch.manual_seed(0)
    mix = create_model("mixnet_s", width=0.05)  # timm blocks: BatchNormAct2d holds the activation
    shared = spikify(mix, T=2)
    net = spikify(mix, T=2, time_bn="per-step")
    layer = net.body.get_submodule("blocks.1.0.bn1")
    assert isinstance(layer, StepBatchNorm) and isinstance(layer.act, SpikingActivation)
    assert [p for p, _ in net.spiking_layers()] == [p for p, _ in shared.spiking_layers()]  # same neuron names
    x = torch.randn(4, 3, 32, 32)
    shared.eval(), net.eval()
    assert torch.allclose(shared(x), net(x), atol=1e-5)
    net.train()
    net(x).sum().backward()
    assert layer.weight.grad is not None

    class MyNorm(nn.BatchNorm2d):
        pass

    odd = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), MyNorm(4), nn.ReLU(),
                        nn.Flatten(), nn.LazyLinear(2))
    odd(torch.randn(1, 3, 8, 8))
    with pytest.raises(SpikeliteError, match=r"1 are not: 4 \(MyNorm\)"):
        spikify(odd, T=2, time_bn="per-step")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(SpikeliteError, match="no BatchNorm in its spiking part"):
        spikify(mlp, T=2, time_bn="per-step")


# ----------------------------------------------------------------------------------------------
# spike_inputs: every conv but the stem reads spikes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,width", [("mnasnet_b1", 0.12), ("mixnet_s", 0.05), ("shufflenetv2_x1_0", 0.3)])
def test_spike_inputs_make_every_conv_but_the_stem_read_spikes(name, width):
    from spikelite.energy import measure
    from spikelite.models import create_model
    from spikelite.checkpoint import describe_model, rebuild_model

    torch.manual_seed(0)
    cnn = create_model(name, width=width).eval()
    x = torch.rand(2, 3, 32, 32)
    lively = {"v_threshold": 0.05}  # an untrained net: a low threshold so that every layer spikes
    plain = spikify(cnn, T=2, neuron=lively).eval()
    net = spikify(cnn, T=2, neuron=lively, spike_inputs=True).eval()
    added = [p for p, _ in net.spiking_layers() if p.endswith("_input_spike")]
    assert added and len(net.spiking_layers()) == len(plain.spiking_layers()) + len(added)
    assert net.config()["spike_inputs"] is True and "spike_inputs" not in plain.config()
    assert net.inference().config() == net.config()  # read off the modules: copies report it too

    def conv_ops(model):
        report = measure(model, x, profiles=["45nm-fp32"])
        return {row.name: row.op for row in report.layers if row.type == "Conv2d" and row.op != "-"}

    before, after = conv_ops(plain), conv_ops(net)
    stem = next(n for n, m in cnn.named_modules() if isinstance(m, nn.Conv2d))
    assert before.pop(stem) == after.pop(stem) == "MAC"  # the stem reads the image
    assert "MAC" in before.values() or "AC+MAC" in before.values()  # real-valued streams without the option
    assert set(after.values()) == {"AC"}, {k: v for k, v in after.items() if v != "AC"}

    again = rebuild_model(describe_model(net))
    again.load_state_dict(net.state_dict())
    assert torch.equal(again.eval()(x), net(x))


def test_spike_inputs_train_and_eval_graphs_agree_through_dropout():
    from spikelite.models import create_model

    cnn = create_model("squeezenet1_1", stem_reduction=4, pool="avg")  # dropout before the classifier conv
    net = spikify(cnn, T=2, spike_inputs=True)
    added = sorted(p for p, _ in net.spiking_layers() if p.endswith("_input_spike"))
    assert added == [f"features.{i}.squeeze_input_spike" for i in (3, 6, 9)]  # after the three avg pools
    called = {graph: {n.target for n in graph.nodes if n.op == "call_module" and n.target.endswith("_input_spike")}
              for graph in (net.body.graph, net._eval_graph or net.body.graph)}
    assert all(sorted(v) == added for v in called.values())
    with pytest.raises(SpikeliteError, match="spike_inputs must be True or False"):
        spikify(cnn, T=2, spike_inputs="yes")
