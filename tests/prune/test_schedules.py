"""The one schedule grammar (spikelite.prune.schedules) of ``spikelite prune --strategy``,
:class:`PruneConfig` and the benchmark's ``prune.schedules``: parsing, canonical labels, bad text,
the problems of a schedule for a model, and the keep set a schedule gives."""

from __future__ import annotations

import pytest
import torch

from spikelite import prune as P
from spikelite.errors import SpikeliteError
from spikelite.models import create_model
from spikelite.prune.schedules import Schedule, check_schedule, keep_for_schedule, parse_schedule


@pytest.mark.parametrize("text, kind, label", [
    ("ref-1", "paper", "ref-1"),
    ("Head-2", "paper", "head-2"),
    (" alt-1 ", "paper", "alt-1"),
    ("keep:fire4+fire6", "keep", "keep:fire4+fire6"),
    ("keep:F4,F6", "keep", "keep:f4+f6"),
    ("KEEP: fire4 + fire6,fire8", "keep", "keep:fire4+fire6+fire8"),
    ("keep:fire4+fire4+fire6", "keep", "keep:fire4+fire6"),
    ("remove:features.3", "remove", "remove:features.3"),
    ("remove:block1,block2", "remove", "remove:block1+block2"),
    ("ablation-2", "ablation", "ablation-2"),
    ("ablation-25%", "ablation", "ablation-25%"),
    ("Taylor-3", "taylor", "taylor-3"),
    ("taylor-50%", "taylor", "taylor-50%"),
    ("ablation-007", "ablation", "ablation-7"),
])
def test_every_form_parses_to_its_canonical_label(text, kind, label):
    s = parse_schedule(text)
    assert s.kind == kind and s.label == label == str(s)
    assert parse_schedule(s.label) == s and parse_schedule(s) is s  # the label reads back as the same schedule


def test_the_parts_of_a_schedule():
    assert parse_schedule("ref-1") == Schedule("paper", name="ref-1")
    assert parse_schedule("keep:F4,fire6").names == ("f4", "fire6")
    a, p = parse_schedule("ablation-3"), parse_schedule("taylor-25%")
    assert (a.count, a.percent, a.ranked) == (3, None, True) and (p.count, p.percent) == (None, 25)
    assert not parse_schedule("remove:fire2").ranked and not parse_schedule("alt-2").ranked
    # how many a ranked schedule removes: K or round(P% x present), never all and at least one
    assert [p.n_remove(n) for n in (2, 4, 8, 16)] == [1, 1, 2, 4]
    assert parse_schedule("ablation-50%").n_remove(3) == 2 and parse_schedule("ablation-1%").n_remove(8) == 1
    assert parse_schedule("ablation-9").n_remove(4) == 3
    for name in P.PAPER_SCHEDULES:  # every paper name is a schedule and a named strategy
        assert parse_schedule(name).kind == "paper" and name in P.STRATEGIES


@pytest.mark.parametrize("text, why", [
    ("ref-9", ""), ("ablation", ""), ("ablation-", ""), ("ablation-x", ""), ("greedy", ""), ("keep", ""),
    ("taylor-3.5", ""), ("rank-3", ""), ("", ""), (None, ""), (3, ""),
    ("keep:", "names no module"), ("remove:+,", "names no module"),
    ("ablation-0", "remove at least one module"), ("taylor-0%", "between 1 and 99"),
    ("ablation-100%", "between 1 and 99"),
])
def test_bad_text_gives_one_error_naming_the_grammar(text, why):
    with pytest.raises(SpikeliteError) as info:
        parse_schedule(text)
    msg = str(info.value)
    assert msg.startswith(f"unknown prune schedule {text!r}") and why in msg
    for form in ("ref-1", "keep:a+b", "remove:a+b", "ablation-K", "ablation-P%", "taylor-K", "taylor-P%"):
        assert form in msg, (form, msg)


def test_problems_of_a_schedule_for_a_model():
    ok = ["ref-1", "keep:F4+F6", "keep:fire4+features.7", "KEEP:Fire9", "remove:F2,F3,F4,F5,F6,F7,F8",
          "ablation-7", "taylor-99%", "ablation-25%"]
    for text in ok:
        assert check_schedule(text, "squeezenet1_1") == [], text
    assert check_schedule("remove:stage2_unit1", "shufflenetv2_x0_5") == []
    [p] = check_schedule("keep:F4+fire99", "squeezenet1_1")
    assert "unknown module(s) 'fire99' in squeezenet1_1; valid names: fire2" in p
    [p] = check_schedule("keep:F4", "shufflenetv2_x0_5")  # F4 means fire4 on SqueezeNet only
    assert "unknown module(s) 'f4'" in p
    [p] = check_schedule("remove:F2,F3,F4,F5,F6,F7,F8,F9", "squeezenet1_1")
    assert "removes every macro module of squeezenet1_1" in p
    [p] = check_schedule("ablation-8", "squeezenet1_1")
    assert "removes 8 modules but squeezenet1_1 has only 8" in p
    [p] = check_schedule("ref-1", "mnasnet_b1")
    assert "keep SqueezeNet fire modules; mnasnet_b1 is a mnasnet" in p
    [p] = check_schedule("ref-9", "squeezenet1_1")
    assert p.startswith("unknown prune schedule 'ref-9'")
    assert "unknown model" in check_schedule("ref-1", "resnet9000")[0]


def test_prune_config_takes_any_schedule_as_its_strategy():
    assert P.PruneConfig(strategy="Ablation-25%").strategy == "ablation-25%"
    cfg = P.PruneConfig(strategy="keep:F4,F6")
    assert cfg.strategy == "keep:f4+f6" and cfg.schedule == parse_schedule("keep:f4+f6")
    assert P.PruneConfig(strategy="ref-1").schedule.kind == "paper"
    assert P.PruneConfig(strategy="keep", keep=["F4"]).schedule is None
    assert P.PruneConfig(strategy="importance").schedule is None
    with pytest.raises(SpikeliteError, match="unknown strategy 'taylor-0'; choose keep, paper, greedy, importance or a "
                                             "schedule: a paper schedule"):
        P.PruneConfig(strategy="taylor-0")
    with pytest.raises(SpikeliteError, match="--keep/--remove go with --strategy keep, not ablation-1"):
        P.PruneConfig(strategy="ablation-1", keep=["fire2"])
    with pytest.raises(SpikeliteError, match="--max-drop and --energy-budget apply to --strategy greedy"):
        P.PruneConfig(strategy="taylor-2", max_drop=1.0)


def _data(n=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_keep_for_schedule_names_paths_and_rankings():
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", image_size=8).eval()
    cal = _data()
    fires = [f"fire{i}" for i in range(2, 10)]
    assert keep_for_schedule(model, "ref-1", cal) == (["fire4", "fire6", "fire8", "fire9"], None)
    assert keep_for_schedule(model, "keep:F9,f4+features.7", cal) == (["fire4", "fire5", "fire9"], None)
    assert keep_for_schedule(model, "remove:F2+F3", cal) == (fires[2:], None)
    with pytest.raises(SpikeliteError, match="unknown module"):
        keep_for_schedule(model, "keep:fire99", cal)
    # ranked: rank once, remove the least important, record the ranking
    keep, info = keep_for_schedule(model, "ablation-25%", cal, seed=0)
    rep = P.module_importance(model, cal, method="both", seed=0)
    assert info["ranking_ablation"] == rep.ranking("ablation")
    assert keep == [n for n in fires if n not in rep.ranking("ablation")[:2]]
    assert set(info) == {"ranking_ablation", "taylor", "ablation_loss"}
    keep, info = keep_for_schedule(model, "taylor-3", cal, seed=0)
    assert keep == [n for n in fires if n not in rep.ranking("taylor")[:3]]
    assert set(info) == {"ranking_taylor", "taylor"}
    # a report already made on this model is used instead of ranking again (a Taylor-only one is not for ablation)
    assert keep_for_schedule(model, "ablation-2", None, importance=rep)[0] == keep_for_schedule(model, "ablation-2",
                                                                                                cal)[0]
    taylor_only = P.module_importance(model, cal, method="taylor")
    assert keep_for_schedule(model, "ablation-1", cal, importance=taylor_only)[1]["ranking_ablation"] == \
        rep.ranking("ablation")
    # other families: a paper schedule is refused; on a pruned model only the present modules are ranked
    shuf = create_model("shufflenetv2_x0_3", width=0.25, image_size=8)
    with pytest.raises(SpikeliteError, match="keeps SqueezeNet fire modules"):
        keep_for_schedule(shuf, "ref-1", cal)
    small = create_model("squeezenet1_1", image_size=8, keep=["fire2", "fire5", "fire9"]).eval()
    keep, info = keep_for_schedule(small, "taylor-9", cal)
    assert len(keep) == 1 and set(info["ranking_taylor"]) == {"fire2", "fire5", "fire9"}
    one = create_model("squeezenet1_1", image_size=8, keep=["fire9"])
    with pytest.raises(SpikeliteError, match="nothing to remove"):
        keep_for_schedule(one, "ablation-1", cal)
