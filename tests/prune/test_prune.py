"""Module-level structured pruning: every family prunes (CNN and SNN), the spec round-trips, the
paper's schedules, Taylor vs exact ablation and the bad-input errors (greedy budgets and the CLI:
test_prune_pipeline.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikelite import prune as P
from spikelite import checkpoint as C
from spikelite.snn import SpikingNet, spikify
from spikelite.errors import SpikeliteError
from spikelite.models import create_model, macro_module_info, macro_modules, model_info

# (name, width, image size): the smallest each family allows, tiny widths (fast on 2 shared cores)
FAMILIES = [
    ("squeezenet1_1", 1.0, 8),
    ("squeezenet1_0", 1.0, 8),
    ("shufflenetv2_x0_3", 0.25, 8),
    ("mnasnet0_5", 0.1, 16),
    ("mixnet_s", 0.05, 16),
    ("xception_mini", 0.1, 16),
]


def _batch(size, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def _lively(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine terms, so a fresh model is not near-degenerate."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
    return model


def _sgd_step(model, x, y):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert math.isfinite(float(loss.detach()))
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params))


# ----------------------------------------------------------------------------------------------
# removal on every family
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,width,size", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_prunes_runs_as_cnn_and_snn_and_rebuilds_from_its_spec(name, width, size):
    base = _lively(create_model(name, width=width, image_size=size)).eval()
    names = [n for n, _ in macro_modules(base)]
    x, y = _batch(size)
    full_params = model_info(base).params
    mid = len(names) // 2
    removals = [[names[0]], [names[mid]], [names[-1]], [names[0], names[2], names[mid], names[-1]]]
    for remove in removals:
        pruned = P.prune_model(base, remove=remove, calibration=(x, y))
        kept = [n for n in names if n not in remove]
        assert pruned.spikelite_spec["keep"] == kept
        assert [n for n, _ in P.removable_modules(pruned)] == kept
        assert model_info(pruned).params < full_params
        assert pruned(x).shape == (16, 10)
        # the spec alone rebuilds the architecture; the weights load strictly and give the same outputs
        again = create_model(**pruned.spikelite_spec)
        again.load_state_dict(pruned.state_dict())
        again.eval()
        torch.testing.assert_close(again(x), pruned(x))
        for stable in remove:  # the removed blocks are gone from the module tree (identity or projection)
            m = pruned.get_submodule(dict(macro_modules(pruned))[stable])
            assert isinstance(m, (nn.Identity, nn.ChannelShuffle, P.Projection))
    # the last pruned model runs after spikify (T=2) and trains one step, as CNN and as SNN
    snn = spikify(pruned, T=2)
    assert snn.spikelite_spec["keep"] == pruned.spikelite_spec["keep"]
    _sgd_step(snn, x, y)
    _sgd_step(pruned, x, y)


@pytest.mark.parametrize("name,width,size", [FAMILIES[0], FAMILIES[2], FAMILIES[5]],
                         ids=["squeezenet1_1", "shufflenetv2_x0_3", "xception_mini"])
def test_a_spiking_net_prunes_as_a_spiking_net(name, width, size):
    cnn = _lively(create_model(name, width=width, image_size=size))
    snn = spikify(cnn, T=2).eval()
    x, y = _batch(size)
    names = [n for n, _ in macro_modules(cnn)]
    pruned = P.prune_model(snn, remove=[names[0], names[-2]], calibration=(x, y)).eval()
    assert isinstance(pruned, SpikingNet) and pruned.T == 2
    assert pruned.spikelite_spec["keep"] == [n for n in names if n not in (names[0], names[-2])]
    # the same network as spikify(create_model(**spec)) with the weights loaded
    again = spikify(create_model(**pruned.spikelite_spec), T=2).eval()
    again.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(again(x), pruned(x))
    # a kept block whose input did not change keeps its (spiking) weights
    kept_path = dict(macro_modules(cnn))[names[3]]
    for k, v in snn.state_dict().items():
        if k.startswith(f"body.{kept_path}."):
            torch.testing.assert_close(pruned.state_dict()[k], v)
    _sgd_step(pruned, x, y)


def test_shufflenet_units_are_removed_across_the_channel_shuffle():
    base = _lively(create_model("shufflenetv2_x0_3", width=0.25, image_size=8)).eval()
    x, y = _batch(8, n=32)
    info = {m.name: m for m in macro_module_info(base)}
    # a downsampling unit (stride 2, channels change) and stride-1 units around the shuffle
    pruned = P.prune_model(base, remove=["stage3_unit1", "stage3_unit2", "stage4_unit4"], calibration=(x, y)).eval()
    proj = pruned.get_submodule("stage3.0")
    assert isinstance(proj, P.Projection)
    assert proj.conv.in_channels == info["stage3_unit1"].in_shape[0]
    assert proj.conv.out_channels == info["stage3_unit1"].out_shape[0]
    assert proj.conv.stride == (2, 2) and isinstance(proj.act, nn.ReLU)  # units end in ReLU
    # a stride-1 unit becomes its skip path: exactly the unit with its convolution branch made an identity
    skip = pruned.get_submodule("stage3.1")
    assert isinstance(skip, nn.ChannelShuffle) and skip.groups == 2
    unit = base.get_submodule("stage3.1")
    z = torch.randn(4, unit.branch2[0].in_channels * 2, 4, 4)
    branch2, unit.branch2 = unit.branch2, nn.Identity()
    torch.testing.assert_close(skip(z), unit(z))
    unit.branch2 = branch2
    # the kept units still split, convolve, concatenate and shuffle their channels, as CNN and as SNN
    assert pruned(x).shape == (32, 10)
    net = spikify(pruned, T=2)
    _sgd_step(net, x, y)

    # the least-squares fit: the projection reproduces the unit's output far better than a fresh one
    feats = {}
    h = base.get_submodule("stage3.0").register_forward_hook(lambda m, a, o: feats.update(i=a[0], o=o))
    base(x)
    h.remove()
    fresh = create_model(**pruned.spikelite_spec).eval().get_submodule("stage3.0")
    with torch.no_grad():
        err_fit = (proj(feats["i"]) - feats["o"]).pow(2).mean()
        err_fresh = (fresh(feats["i"]) - feats["o"]).pow(2).mean()
    assert err_fit < 0.5 * err_fresh


def test_the_rule_for_shape_changing_modules_per_family():
    # SqueezeNet: the removed fire is an identity, the next kept fire's squeeze conv is rebuilt with the
    # overlapping input-channel weights; after fire9 the classifier conv is rebuilt the same way
    sq = create_model("squeezenet1_1", image_size=8)
    pruned = P.prune_model(sq, remove=["fire2", "fire8", "fire9"])
    assert isinstance(pruned.features[3], nn.Identity)
    old, new = sq.features[4].squeeze.weight, pruned.features[4].squeeze.weight  # fire3 now sees the 64-ch stem
    assert new.shape == (16, 64, 1, 1) and torch.equal(new, old[:, :64])
    assert pruned.features[4].inplanes == 64
    assert pruned.classifier[1].in_channels == 384  # fire7's output reaches the classifier
    torch.testing.assert_close(pruned.classifier[1].weight, sq.classifier[1].weight[:, :384])
    # projection families: stride, channels and the ReLU exactly where the block's output is rectified
    for name, width, size, expect_act in [("mnasnet0_5", 0.1, 16, {}), ("mixnet_s", 0.05, 16, {}),
                                          ("xception_mini", 0.1, 16, {"exit2": True, "exit1": False})]:
        model = create_model(name, width=width, image_size=size)
        infos = [m for m in macro_module_info(model) if not m.shape_preserving]
        pruned = create_model(**model.spikelite_spec, keep=["middle1"] if name == "xception_mini" else [infos[0].name])
        checked = 0
        for m in infos:
            rep = pruned.get_submodule(m.path)
            if m.name not in pruned.spikelite_spec["keep"]:
                assert isinstance(rep, P.Projection), (name, m.name)
                assert rep.conv.stride[0] == m.in_shape[1] // m.out_shape[1]
                assert (rep.conv.in_channels, rep.conv.out_channels) == (m.in_shape[0], m.out_shape[0])
                assert hasattr(rep, "act") == expect_act.get(m.name, False), (name, m.name)
                checked += 1
        assert checked == len(infos) - (0 if name == "xception_mini" else 1)


def test_spec_round_trips_through_a_checkpoint(tmp_path):
    base = _lively(create_model("xception_mini", width=0.1, image_size=16))
    x, y = _batch(16)
    pruned = P.prune_model(base, keep=["entry2", "middle2", "exit2"], calibration=(x, y)).eval()
    path = C.save_checkpoint(tmp_path / "p.pt", pruned, meta={"prune": {"keep": pruned.spikelite_spec["keep"]}})
    again, meta = C.load_model(path)
    assert meta["model_spec"]["keep"] == ["entry2", "middle2", "exit2"]
    torch.testing.assert_close(again(x), pruned(x))
    # the training module's rebuild hook passes prune["keep"] on when an older spec lacks it
    spec = {k: v for k, v in meta["model_spec"].items() if k != "keep"}
    rebuilt = C.rebuild_model({"kind": "cnn", "model_spec": spec, "prune": {"keep": meta["model_spec"]["keep"]}})
    rebuilt.load_state_dict(again.state_dict())
    # an SNN checkpoint of a pruned model rebuilds too
    snn = spikify(pruned, T=2).eval()
    spath = C.save_checkpoint(tmp_path / "s.pt", snn)
    snn2, smeta = C.load_model(spath)
    assert smeta["kind"] == "snn" and smeta["model_spec"]["keep"] == pruned.spikelite_spec["keep"]
    torch.testing.assert_close(snn2(x), snn(x))


def test_paper_schedules_keep_the_expected_fires_and_shrink_the_model():
    full = create_model("squeezenet1_1")
    info = {m.name: m for m in macro_module_info(full)}
    full_params = model_info(full).params
    assert set(P.PAPER_SCHEDULES) == {"head-1", "head-2", "tail-1", "tail-2", "alt-1", "alt-2", "ref-1", "ref-2"}
    for name, keep in P.PAPER_SCHEDULES.items():
        m = create_model("squeezenet1_1", keep=list(keep))
        assert m.spikelite_spec["keep"] == list(keep)
        assert model_info(m).params < full_params, name
        assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    # Ref-1 keeps F4, F6, F8, F9: fire2, 3, 5, 7 go, and fire4's squeeze conv (32 outputs) now reads the
    # 64-channel stem instead of fire3's 128 channels
    ref1 = create_model("squeezenet1_1", keep=["F4", "f6", "fire8", "features.12"])
    assert ref1.spikelite_spec["keep"] == ["fire4", "fire6", "fire8", "fire9"]
    removed = sum(info[f].params for f in ("fire2", "fire3", "fire5", "fire7"))
    assert model_info(ref1).params == full_params - removed - (128 - 64) * 32


# ----------------------------------------------------------------------------------------------
# importance
# ----------------------------------------------------------------------------------------------


def test_spearman_matches_scipy_including_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(3)
    for n in (4, 7, 17):
        a = torch.randn(n, generator=g).tolist()
        b = (torch.randn(n, generator=g) + torch.tensor(a)).tolist()
        b[0] = b[-1]  # a tie
        assert P.spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic)
    assert P.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert P.spearman([1, 2, 3], [5, 5, 5]) is None and P.spearman([1], [2]) is None
    with pytest.raises(SpikeliteError, match="different length"):
        P.spearman([1, 2], [1])


class _Residual(nn.Module):
    def __init__(self, c, gain):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.gain = gain

    def forward(self, x):
        return x + self.gain * torch.relu(self.conv(x))


class _Tiny(nn.Module):
    """A user model (no zoo spec): residual blocks of different strength, a downsampling block."""

    def __init__(self, gains=(0.02, 0.05, 0.1, 0.2, 0.4)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(*[_Residual(8, g) for g in gains])
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.down(self.blocks(self.stem(x)))
        return self.head(x.mean((2, 3)))


def _record(model, paths):
    """Forward hooks keeping each module's input and output (with its gradient after backward)."""
    acts = {}

    def hook_for(p):
        def hook(m, args, out):
            out.retain_grad()
            acts[p] = (args[0], out)
        return hook

    acts["hooks"] = [model.get_submodule(p).register_forward_hook(hook_for(p)) for p in paths]
    return acts


def test_taylor_is_the_first_order_term_and_agrees_with_ablation_on_a_tiny_model():
    torch.manual_seed(0)
    model = _Tiny()
    x, y = _batch(8, n=64, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    blocks = [f"blocks.{i}" for i in range(5)]
    rep = P.module_importance(model, (x, y), modules=blocks, input_shape=(3, 8, 8))
    # Taylor = <dL/d(out), in - out> for each shape-preserving block, from hooks on the plain model
    acts = _record(model, blocks)
    F.cross_entropy(model(x), y).backward()
    for h in acts.pop("hooks"):
        h.remove()
    for m in rep.modules:
        i, o = acts[m.path]
        assert m.replacement == "identity"
        assert m.taylor == pytest.approx(float((o.grad * (i - o)).sum().detach()), rel=1e-4, abs=1e-7)
    # ablation is the loss of the model with the block removed (the pruned model)
    for m in rep.modules:
        pruned = P.prune_model(model, remove=[m.path], input_shape=(3, 8, 8)).eval()
        with torch.no_grad():
            loss = F.cross_entropy(pruned(x), y)
        assert m.ablation_loss == pytest.approx(float(loss) - rep.base_loss, abs=1e-5)
    # weak residual blocks: the first-order estimate ranks them as the ablation does
    assert rep.spearman == pytest.approx(P.spearman([m.taylor for m in rep.modules],
                                                    [m.ablation_loss for m in rep.modules]))
    assert rep.spearman > 0.8
    assert rep.ranking("taylor")[-1] == rep.ranking("ablation")[-1] == "blocks.4"
    assert "Spearman" in rep.table()


def test_importance_of_shape_changing_modules_and_of_spiking_nets():
    # SqueezeNet's channel rule: Taylor = <dL/d(out), pad(in) - out> for fire2 (64 -> 128 channels)
    model = _lively(create_model("squeezenet1_1", image_size=8)).eval()
    x, y = _batch(8, n=32)
    rep = P.module_importance(model, (x, y), modules=["fire2", "fire3"], method="taylor")
    acts = _record(model, ["features.3"])
    F.cross_entropy(model(x), y).backward()
    for h in acts.pop("hooks"):
        h.remove()
    i, o = acts["features.3"]
    expected = float((o.grad * (F.pad(i, (0, 0, 0, 0, 0, 64)) - o)).sum().detach())
    assert rep.modules[0].name == "fire2" and rep.modules[0].taylor == pytest.approx(expected, rel=1e-4)
    assert rep.ablation_seconds is None and rep.spearman is None
    # projection families and SNNs: exact ablation equals the pruned (fitted) model's loss
    for net in (_lively(create_model("xception_mini", width=0.1, image_size=16)).eval(),
                spikify(_lively(create_model("shufflenetv2_x0_3", width=0.25, image_size=16)), T=2).eval()):
        xs, ys = _batch(16, n=32)
        rep = P.module_importance(net, (xs, ys))
        assert rep.kind == ("snn" if isinstance(net, SpikingNet) else "cnn")
        changing = [m for m in rep.modules if m.replacement.startswith("projection")]
        assert changing and set(rep.fitted_projections) == {m.name for m in changing}
        for m in changing[:2] + rep.modules[-1:]:
            pruned = P.prune_model(net, remove=[m.name], calibration=(xs, ys)).eval()
            with torch.no_grad():
                loss = F.cross_entropy(pruned(xs), ys)
            assert m.ablation_loss == pytest.approx(float(loss) - rep.base_loss, abs=1e-5), m.name


# ----------------------------------------------------------------------------------------------
# user models
# ----------------------------------------------------------------------------------------------


def test_user_models_prune_by_module_name():
    model = _Tiny().eval()
    x, y = _batch(8, n=16)
    pruned = P.prune_model(model, remove=["blocks.1", "down"], input_shape=(3, 8, 8), calibration=(x, y))
    assert isinstance(pruned.blocks[1], nn.Identity)
    assert isinstance(pruned.down, P.Projection) and pruned.down.conv.stride == (2, 2)
    assert not hasattr(pruned.down, "act")  # down ends in BatchNorm: no ReLU
    assert model.blocks[1].__class__ is _Residual  # the caller's model is untouched
    assert pruned(x).shape == (16, 10)
    _sgd_step(spikify(pruned, T=2), x, y)
    # keep= with an explicit module list
    kept = P.prune_model(model, keep=["blocks.0"], modules=["blocks.0", "blocks.2"], input_shape=(3, 8, 8))
    assert isinstance(kept.blocks[2], nn.Identity) and isinstance(kept.blocks[0], _Residual)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


def test_bad_input_gives_one_clear_error():
    sq = create_model("squeezenet1_1", image_size=8)
    with pytest.raises(SpikeliteError, match=r"unknown module\(s\) 'fire10', 'blockX' in squeezenet1_1; valid names: "
                                             r"fire2, fire3, fire4, fire5, fire6, fire7, fire8, fire9"):
        P.prune_model(sq, remove=["fire10", "blockX"])
    with pytest.raises(SpikeliteError, match="unknown module.*valid names: fire2"):
        create_model("squeezenet1_1", keep=["fire1"])
    with pytest.raises(SpikeliteError, match="remove every macro module"):
        P.prune_model(sq, remove=[f"fire{i}" for i in range(2, 10)])
    with pytest.raises(SpikeliteError, match="removing every macro module"):
        create_model("squeezenet1_1", keep=[])
    with pytest.raises(SpikeliteError, match="exactly one of keep"):
        P.prune_model(sq)
    pruned = P.prune_model(sq, keep=["fire9"])
    with pytest.raises(SpikeliteError, match="fire2 already removed; present: fire9"):
        P.prune_model(pruned, remove=["fire2"])
    with pytest.raises(SpikeliteError, match="no removable modules"):
        P.prune_model(_Tiny(), keep=["x"], input_shape=(3, 8, 8))
    with pytest.raises(SpikeliteError, match="input_shape"):
        P.prune_model(_Tiny(), remove=["blocks.0"])
    with pytest.raises(SpikeliteError, match="_Tiny has no module.*top-level modules are: stem, blocks, down, head"):
        P.prune_model(_Tiny(), remove=["blocks.9"], input_shape=(3, 8, 8))
    with pytest.raises(SpikeliteError, match="not made from a spikelite zoo model"):
        P.prune_model(spikify(_Tiny(), T=2), remove=["blocks.0"])
    for bad in ("2", "0", "fast", "-1mJ"):
        with pytest.raises(SpikeliteError, match="energy budget"):
            P.parse_energy_budget(bad)
    assert P.parse_energy_budget("60%") == ("fraction", 0.6)
    assert P.parse_energy_budget("120uJ") == ("mj", pytest.approx(0.12))
    with pytest.raises(SpikeliteError, match="greedy needs a stopping rule"):
        P.PruneConfig(strategy="greedy")
    with pytest.raises(SpikeliteError, match="unknown strategy"):
        P.PruneConfig(strategy="ref-3")
