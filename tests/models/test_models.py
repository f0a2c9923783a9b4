"""The model zoo: every model builds at 32 and 64 px, trains one step as CNN and as SNN, rebuilds from
its spec, keeps the libraries' module names and weights layout, and lists its macro modules."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
import torchvision
from torch import nn

from spikelite import cli
from spikelite.errors import SpikeliteError
from spikelite.models import (
    PAPER_PARAMS,
    create_model,
    fit_width,
    list_models,
    macro_module_info,
    macro_modules,
    model_info,
)
from spikelite.models._info import count_macs
from spikelite.models.squeezenet import BNFire

NAMES = list_models()
REQUIRED = [
    "squeezenet1_0", "squeezenet1_1", "shufflenetv2_x0_3", "shufflenetv2_x0_5", "shufflenetv2_x1_0",
    "mnasnet_b1", "mnasnet0_5", "mixnet_s", "mixnet_m", "xception_mini",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the test machine has 2 cores shared with other jobs; intra-op threads then oversubscribe badly
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stem_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_registry_has_the_study_models():
    assert set(REQUIRED) <= set(NAMES)


def test_unknown_name_lists_valid_names():
    with pytest.raises(SpikeliteError) as err:
        create_model("resnet18")
    assert "resnet18" in str(err.value)
    for name in REQUIRED:
        assert name in str(err.value)


# ----------------------------------------------------------------------------------------------
# every model: build at 32 and 64, one training step as CNN and as SNN (T=2, batch 2)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("name", NAMES)
def test_build_train_cnn_and_snn(name, image_size):
    from spikelite.snn import spikify

    torch.manual_seed(0)
    num_classes = 7
    model = create_model(name, num_classes=num_classes, image_size=image_size)
    assert model.spikelite_spec["stem_reduction"] == (1 if image_size == 32 else 2)
    x = torch.randn(2, 3, image_size, image_size)
    y = torch.tensor([1, 5])

    # CNN step
    model.train()
    before = _snapshot(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    out = model(x)
    assert out.shape == (2, num_classes)
    loss = nn.functional.cross_entropy(out, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert _stem_conv(model).weight.grad.abs().sum() > 0
    opt.step()
    assert any(not torch.equal(before[k], p) for k, p in model.named_parameters())

    # SNN step: the surrogate gradient reaches the stem conv
    net = spikify(model, T=2)
    assert len(net.spiking_layers()) > 0
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    out = net(x)
    assert out.shape == (2, num_classes)
    loss = nn.functional.cross_entropy(out, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert _stem_conv(net.body).weight.grad.abs().sum() > 0
    opt.step()
    # macro-module paths are valid inside the SNN body (spikify keeps module names)
    for _, path in macro_modules(name):
        net.body.get_submodule(path)


@pytest.mark.parametrize("name", NAMES)
def test_spec_rebuilds_the_same_architecture(name):
    model = create_model(name, num_classes=13, image_size=48, in_chans=1)
    spec = model.spikelite_spec
    assert json.loads(json.dumps(spec)) == spec  # checkpoints can store it as JSON
    assert {"name", "num_classes", "image_size", "in_chans", "width", "stem_reduction"} <= set(spec)
    again = create_model(**spec)
    assert again.spikelite_spec == spec
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in again.state_dict().items()}
    again.load_state_dict(model.state_dict())
    model.eval(), again.eval()
    x = torch.randn(1, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_spec_pins_defaults():
    spec = create_model("squeezenet1_1").spikelite_spec
    assert spec == {
        "name": "squeezenet1_1", "num_classes": 10, "image_size": 32, "in_chans": 3, "width": 1.0,
        "batch_norm": True, "final_relu": False, "pool": "avg", "dropout": 0.5, "stem_reduction": 1,
    }


# ----------------------------------------------------------------------------------------------
# the small-image rule and fidelity to the libraries
# ----------------------------------------------------------------------------------------------

def test_stem_rule_per_image_size():
    for size, stride in [(32, 1), (63, 1), (64, 2), (127, 2)]:
        m = create_model("shufflenetv2_x0_5", image_size=size)
        assert m.conv1[0].stride == (stride, stride) and isinstance(m.maxpool, nn.Identity)
        m = create_model("squeezenet1_1", image_size=size)
        assert m.features[0].conv.stride == (stride, stride) and isinstance(m.features[2], nn.Identity)
        assert create_model("mnasnet0_5", image_size=size).layers[0].stride == (stride, stride)
        assert create_model("mixnet_s", image_size=size).conv_stem.stride == (stride, stride)
        assert create_model("xception_mini", image_size=size).stem[0].conv.stride == (stride, stride)
    m = create_model("squeezenet1_1", image_size=128)
    assert m.spikelite_spec["stem_reduction"] == 4 and isinstance(m.features[2], nn.AvgPool2d)  # pool="avg"
    assert isinstance(create_model("squeezenet1_1", image_size=128, pool="max").features[2], nn.MaxPool2d)
    m = create_model("squeezenet1_1", image_size=32, stem_reduction=2)
    assert m.features[0].conv.stride == (2, 2)


@pytest.mark.parametrize("name", NAMES)
def test_blocks_see_the_same_maps_at_32_and_64(name):
    last32 = macro_module_info(create_model(name, image_size=32))[-1]
    last64 = macro_module_info(create_model(name, image_size=64))[-1]
    assert last32.out_shape == last64.out_shape


def _library_model(name: str) -> nn.Module:
    return {
        "squeezenet1_1": lambda: torchvision.models.squeezenet1_1(num_classes=10),
        "squeezenet1_0": lambda: torchvision.models.squeezenet1_0(num_classes=10),
        "shufflenetv2_x1_0": lambda: torchvision.models.shufflenet_v2_x1_0(num_classes=10),
        "shufflenetv2_x0_5": lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10),
        "mnasnet_b1": lambda: torchvision.models.mnasnet1_0(num_classes=10),
        "mnasnet0_5": lambda: torchvision.models.mnasnet0_5(num_classes=10),
        "mixnet_s": lambda: timm.create_model("mixnet_s", pretrained=False, num_classes=10),
        "mixnet_m": lambda: timm.create_model("mixnet_m", pretrained=False, num_classes=10),
    }[name]()


@pytest.mark.parametrize("name", ["squeezenet1_1", "shufflenetv2_x1_0", "mnasnet_b1", "mixnet_s"])
def test_imagenet_size_is_the_library_model(name):
    """From 128 px (with SqueezeNet's BN, final ReLU and pools set as torchvision has them) the model is the
    library's: same state_dict keys, and the library's weights give the same outputs."""
    torch.manual_seed(0)
    kw = dict(batch_norm=False, final_relu=True, pool="max") if name.startswith("squeezenet") else {}
    ours = create_model(name, image_size=128, **kw).eval()
    ref = _library_model(name).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("name", ["squeezenet1_0", "shufflenetv2_x0_5", "mnasnet0_5", "mixnet_m"])
def test_small_form_keeps_library_names_and_weights(name):
    kw = dict(batch_norm=False) if name.startswith("squeezenet") else {}
    ours = create_model(name, image_size=32, **kw)
    ours.load_state_dict(_library_model(name).state_dict(), strict=True)


# ----------------------------------------------------------------------------------------------
# SqueezeNet options
# ----------------------------------------------------------------------------------------------

def test_squeezenet_batchnorm_default_and_team_figure():
    model = create_model("squeezenet1_1", num_classes=10)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 8 * 3  # stem + three per Fire; none after the logit conv
    tv = torchvision.models.squeezenet1_1(num_classes=10)
    tv_params = sum(p.numel() for p in tv.parameters())
    bn_params = sum(p.numel() for m in bns for p in m.parameters())
    assert model_info(model).params == tv_params + bn_params == 733_514  # the team's 733.5k
    fire = model.get_submodule("features.3")
    assert isinstance(fire, BNFire)
    for attr in ("squeeze", "squeeze_activation", "squeeze_bn", "expand1x1", "expand1x1_activation",
                 "expand1x1_bn", "expand3x3", "expand3x3_activation", "expand3x3_bn"):
        assert hasattr(fire, attr)
    plain = create_model("squeezenet1_1", batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert model_info(plain).params == tv_params


def test_squeezenet_final_relu_and_pool_options():
    m = create_model("squeezenet1_1")
    assert isinstance(m.classifier[2], nn.Identity)
    assert isinstance(create_model("squeezenet1_1", final_relu=True).classifier[2], nn.ReLU)
    pools = [type(x) for x in m.features]  # avg by default (issue #28)
    assert pools.count(nn.AvgPool2d) == 2 and nn.MaxPool2d not in pools
    maxed = [type(x) for x in create_model("squeezenet1_1", pool="max").features]
    assert maxed.count(nn.MaxPool2d) == 2  # the stem pool is gone at 32 px
    torch.manual_seed(0)
    out = create_model("squeezenet1_1").eval()(torch.randn(4, 3, 32, 32))
    assert (out < 0).any()  # without the final ReLU logits can be negative


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------

MIN_SIZES = {"squeezenet": 4, "shufflenetv2": 8, "mnasnet": 16, "mixnet": 16, "xception": 16}


@pytest.mark.parametrize("name", ["squeezenet1_1", "shufflenetv2_x0_3", "mnasnet0_5", "mixnet_s", "xception_mini"])
def test_too_small_images_are_refused_clearly(name):
    family = next(f for f in MIN_SIZES if name.startswith(f))
    smallest = MIN_SIZES[family]
    m = create_model(name, image_size=smallest).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, smallest, smallest)).shape == (1, 10)
    with pytest.raises(SpikeliteError, match="too small"):
        create_model(name, image_size=smallest - 1)
    with pytest.raises(SpikeliteError, match="too small"):
        create_model(name, image_size=2 * smallest - 1, stem_reduction=2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="squeezenet1_1", colour=True), "no option"),
    (dict(name="squeezenet1_1", width=0.5), "no width multiplier"),
    (dict(name="squeezenet1_1", pool="sum"), "pool"),
    (dict(name="squeezenet1_1", batch_norm="yes"), "batch_norm"),
    (dict(name="squeezenet1_1", dropout=1.5), "dropout"),
    (dict(name="mnasnet0_5", stem_reduction=4), "stem_reduction"),
    (dict(name="mnasnet_b1", bn_momentum=0), "bn_momentum"),
    (dict(name="mixnet_s", width=0), "width"),
    (dict(name="mixnet_s", num_classes=0), "num_classes"),
    (dict(name="xception_mini", image_size="32"), "image_size"),
    (dict(name="shufflenetv2_x0_5", in_chans=1.5), "in_chans"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(SpikeliteError, match=match):
        create_model(**kwargs)


def test_mnasnet_batchnorm_statistics_follow_the_data_at_cifar_scale():
    # torchvision's MnasNet BatchNorm momentum (0.0003) leaves the running statistics near their
    # initial values after a CIFAR-scale run (evaluation at chance); ours uses PyTorch's 0.1.
    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32) * 3 + 2
    m = create_model("mnasnet_b1", width=0.12).train()
    tv = create_model("mnasnet_b1", width=0.12, bn_momentum=1 - 0.9997).train()
    assert {b.momentum for b in tv.modules() if isinstance(b, torch.nn.BatchNorm2d)} == {
        b.momentum for b in torchvision.models.mnasnet1_0().modules() if isinstance(b, torch.nn.BatchNorm2d)}
    with torch.no_grad():
        for _ in range(40):
            m(x)
            tv(x)
    stem_out = m.layers[0](x)
    batch_mean = stem_out.mean(dim=(0, 2, 3))
    assert torch.allclose(m.layers[1].running_mean, batch_mean, atol=0.02 * batch_mean.abs().max().item())
    assert not torch.allclose(tv.layers[1].running_mean, tv.layers[0](x).mean(dim=(0, 2, 3)), atol=0.5)


@pytest.mark.parametrize("name, width", [("mnasnet_b1", 0.12), ("mixnet_s", 0.05)])
def test_starts_near_chance_loss_with_few_classes(name, width):
    # torchvision's MnasNet and timm's MixNet scale the classifier by its fan-out (10 here): initial
    # logits with std 3-5 and a step-0 loss of 5-8; ours start at ln(10).
    torch.manual_seed(0)
    m = create_model(name, width=width).train()
    logits = m(torch.randn(64, 3, 32, 32))
    assert logits.std() < 0.5
    loss = nn.functional.cross_entropy(logits, torch.randint(0, 10, (64,)))
    assert abs(loss.item() - math.log(10)) < 0.3


# ----------------------------------------------------------------------------------------------
# widths
# ----------------------------------------------------------------------------------------------

def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_width_multipliers_match_the_named_models():
    assert _params(create_model("shufflenetv2_x1_0", width=0.3)) == _params(create_model("shufflenetv2_x0_3"))
    assert _params(create_model("mnasnet_b1", width=0.5)) == _params(create_model("mnasnet0_5"))
    mixnet_l = timm.create_model("mixnet_l", pretrained=False, num_classes=10)  # timm: mixnet_m x 1.3
    assert _params(create_model("mixnet_m", width=1.3)) == _params(mixnet_l)
    assert _params(create_model("xception_mini", width=0.5)) < _params(create_model("xception_mini"))


def test_fit_width_finds_a_known_width():
    target = _params(create_model("shufflenetv2_x0_3"))
    width, params = fit_width("shufflenetv2_x1_0", target)
    assert (width, params) == (0.3, target)
    with pytest.raises(SpikeliteError, match="no width"):
        fit_width("squeezenet1_1", 700_000)
    assert set(PAPER_PARAMS) == {"squeezenet", "shufflenetv2", "mnasnet", "mixnet", "xception"}


# ----------------------------------------------------------------------------------------------
# macro modules
# ----------------------------------------------------------------------------------------------

def test_squeezenet_macro_modules_exact():
    fires = [f"fire{i}" for i in range(2, 10)]
    assert macro_modules(create_model("squeezenet1_1")) == list(zip(fires, [
        "features.3", "features.4", "features.6", "features.7", "features.9", "features.10", "features.11",
        "features.12"]))
    assert macro_modules(create_model("squeezenet1_0", batch_norm=False)) == list(zip(fires, [
        "features.3", "features.4", "features.5", "features.7", "features.8", "features.9", "features.10",
        "features.12"]))


_BLOCK_TYPES = {
    "squeezenet": torchvision.models.squeezenet.Fire,
    "shufflenetv2": torchvision.models.shufflenetv2.InvertedResidual,
    "mnasnet": torchvision.models.mnasnet._InvertedResidual,
    "xception": timm.models.xception_aligned.XceptionModule,
}
EXPECTED_COUNTS = {"squeezenet1_0": 8, "squeezenet1_1": 8, "shufflenetv2_x0_3": 16, "shufflenetv2_x0_5": 16,
                   "shufflenetv2_x1_0": 16, "mnasnet_b1": 16, "mnasnet0_5": 16, "mixnet_s": 16, "mixnet_m": 19,
                   "xception_mini": 8}


@pytest.mark.parametrize("name", NAMES)
def test_macro_modules_complete_and_stable(name):
    model = create_model(name)
    pairs = macro_modules(model)
    assert len(pairs) == EXPECTED_COUNTS[name]
    assert len({s for s, _ in pairs}) == len(pairs)
    # the same list for any size, width, options, and for the bare name
    other = create_model(name, image_size=64, num_classes=100,
                         **({} if name.startswith("squeezenet") else {"width": 0.5}))
    assert macro_modules(other) == pairs == macro_modules(name) == macro_modules(model.spikelite_spec)
    # complete: exactly the library's block modules, in forward order
    family = next(f for f in ("squeezenet", "shufflenetv2", "mnasnet", "mixnet", "xception") if name.startswith(f))
    if family == "mixnet":
        blocks = [f"blocks.{i}.{j}" for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    else:
        blocks = [n for n, m in model.named_modules() if isinstance(m, _BLOCK_TYPES[family])]
    assert [p for _, p in pairs] == blocks
    order = []
    hooks = [model.get_submodule(p).register_forward_pre_hook(lambda m, i, p=p: order.append(p)) for _, p in pairs]
    model.eval()(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert order == [p for _, p in pairs]


def test_macro_module_info_shapes():
    info = macro_module_info(create_model("squeezenet1_1"))
    assert [i.name for i in info][:2] == ["fire2", "fire3"]
    assert info[0].in_shape == (64, 32, 32) and info[0].out_shape == (128, 32, 32)
    assert not info[0].shape_preserving and info[1].shape_preserving
    assert info[-1].out_shape == (512, 8, 8)
    assert sum(i.params for i in info) < model_info(create_model("squeezenet1_1")).params


def test_macro_modules_of_foreign_model_is_an_error():
    with pytest.raises(SpikeliteError, match="create_model"):
        macro_modules(torchvision.models.squeezenet1_1())
    broken = create_model("xception_mini")
    del broken.blocks[7]
    with pytest.raises(SpikeliteError, match="exit2"):
        macro_modules(broken)


# ----------------------------------------------------------------------------------------------
# counting and the CLI
# ----------------------------------------------------------------------------------------------

def test_mac_count_by_hand():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    macs, out = count_macs(net, (1, 3, 8, 8))
    assert out.shape == (1, 5)
    assert macs == 8 * 8 * 8 * 3 * 9 + 4 * 4 * 8 * 2 * 9 + 128 * 5


def test_model_info_and_mac_scaling():
    i32 = model_info(create_model("shufflenetv2_x0_5", image_size=32, stem_reduction=1))
    i64 = model_info(create_model("shufflenetv2_x0_5", image_size=64, stem_reduction=1))
    assert i32.params == i64.params and i32.output_shape == (10,)
    assert i64.macs == pytest.approx(4 * i32.macs, rel=0.01)  # everything but the classifier scales with area
    with pytest.raises(SpikeliteError, match="image_size"):
        model_info(nn.Linear(3, 3))


def test_cli_json(capsys):
    rc = cli.main(["models", "--image-size", "64", "--num-classes", "200", "--format", "json",
                   "--names", "squeezenet1_1,mnasnet0_5"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["squeezenet1_1", "mnasnet0_5"]
    for r in rows:
        info = model_info(create_model(r["name"], num_classes=200, image_size=64))
        assert (r["params"], r["macs"]) == (info.params, info.macs)
        assert r["stem_reduction"] == 2


def test_cli_markdown_and_errors(capsys):
    assert cli.main(["models", "--format", "markdown", "--names", "xception_mini"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| model |") and out[2].startswith("| xception_mini |")
    assert cli.main(["models", "--names", "vgg16"]) == 2
    assert "vgg16" in capsys.readouterr().err
    assert cli.main(["models", "--image-size", "4", "--names", "mnasnet0_5"]) == 2
    assert "too small" in capsys.readouterr().err


def test_cli_paper_columns(capsys):
    assert cli.main(["models", "--paper", "--format", "json", "--names", "squeezenet1_1,shufflenetv2_x1_0"]) == 0
    sq, sh = json.loads(capsys.readouterr().out)
    assert sq["paper_params"] == PAPER_PARAMS["squeezenet"] and sq["closest_width"] is None
    assert sh["paper_params"] == PAPER_PARAMS["shufflenetv2"]
    assert sh["params_at_width"] == _params(create_model("shufflenetv2_x1_0", width=sh["closest_width"]))
    assert abs(sh["params_at_width"] - sh["paper_params"]) < 0.03 * sh["paper_params"]


def test_register_model_adds_a_family_the_rest_of_spikelite_takes_by_name(tmp_path):
    # a user's own family, registered with the decorator: create_model, checkpoints and spikify take it by name
    import dataclasses

    from torch import nn

    from spikelite.checkpoint import load_model, save_checkpoint
    from spikelite.models import get_entry, register_model
    from spikelite.models.registry import _REGISTRY
    from spikelite.snn import spikify

    @dataclasses.dataclass
    class TinyOptions:
        hidden: int = 8

    name = "tiny_test_net"
    try:
        @register_model(name, family="custom", description="two convs", options=TinyOptions,
                        macro=lambda: [("block1", "features.2")])
        def tiny(name, num_classes, image_size, in_chans, width, opts):
            h = max(1, round(opts.hidden * width))
            net = nn.Sequential()
            net.features = nn.Sequential(nn.Conv2d(in_chans, h, 3, padding=1), nn.ReLU(),
                                         nn.Sequential(nn.Conv2d(h, h, 3, padding=1), nn.ReLU()))
            net.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(h, num_classes))
            return net, dataclasses.asdict(opts)

        assert name in list_models() and get_entry(name).family == "custom"
        cnn = create_model(name, num_classes=3, image_size=8, hidden=4)
        assert cnn.spikelite_spec["hidden"] == 4 and cnn(torch.randn(2, 3, 8, 8)).shape == (2, 3)
        save_checkpoint(tmp_path / "t.pt", cnn)
        back, meta = load_model(tmp_path / "t.pt")
        assert meta["model_spec"]["name"] == name
        x = torch.randn(2, 3, 8, 8)
        assert torch.equal(back(x), cnn.eval()(x))
        assert spikify(cnn, T=2)(x).shape == (2, 3)
        with pytest.raises(SpikeliteError, match="already registered"):
            register_model(name, family="custom", description="again", options=TinyOptions,
                           macro=lambda: [])(tiny)
        with pytest.raises(SpikeliteError, match="has no option"):
            create_model(name, num_classes=3, image_size=8, depth=2)
    finally:
        _REGISTRY.pop(name, None)
    assert name not in list_models()
