"""SqueezeNet's pool defaults to avg (issue #28), so the default SNN exports to NIR; specs recorded before the
change rebuild exactly as they were trained: with their recorded pool, or max-pools when they record none."""

from pathlib import Path

import pytest
import torch
from torch import nn

from spikelite import checkpoint as C
from spikelite.models import create_model, recorded_spec
from spikelite.snn import neuron

REPO = Path(__file__).resolve().parents[2]


def _pools(model) -> list[type]:
    return [type(m) for m in model.modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]


def test_a_spec_recorded_without_pool_rebuilds_with_max_pools():
    spec = create_model("squeezenet1_1", num_classes=10, image_size=16).spikelite_spec
    assert spec["pool"] == "avg" and _pools(create_model(**spec)) == [nn.AvgPool2d] * 2
    old = {k: v for k, v in spec.items() if k != "pool"}  # what a spec written before `pool` was recorded holds
    assert recorded_spec(old)["pool"] == "max"
    assert _pools(C.rebuild_model({"kind": "cnn", "model_spec": old})) == [nn.MaxPool2d] * 2
    assert _pools(C.rebuild_model({"kind": "cnn", "model_spec": {**old, "pool": "avg"}})) == [nn.AvgPool2d] * 2
    other = create_model("shufflenetv2_x0_3", image_size=8, width=0.25).spikelite_spec
    assert recorded_spec(other) == other  # families whose defaults never changed: untouched


@pytest.mark.parametrize("path", [f"results/cifar10/squeezenet1_1/{v}/best.pt" for v in ("cnn", "snn", "snn-p")])
def test_the_committed_squeezenet_checkpoints_rebuild_as_recorded(path, monkeypatch):
    monkeypatch.setattr(neuron._KERNELS, "broken", True)
    ckpt = REPO / path
    if not ckpt.is_file():
        pytest.skip(f"{path} is not in this checkout")
    recorded = C.read_checkpoint(ckpt)["model_spec"]["pool"]
    model, meta = C.load_model(ckpt)
    want = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}[recorded]
    assert _pools(model) == [want] * 2
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(1, 3, 32, 32))).all()
