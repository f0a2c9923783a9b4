"""MnasNet-B1 from torchvision in a small-image form.

Built from ``torchvision.models.MNASNet`` (the B1 variant; ``mnasnet_b1`` is torchvision's
``mnasnet1_0``). Changes:

* stem (the image-size rule of :mod:`spikelite.models._common`): below 64 px ``layers.0`` runs with
  stride 1; from 64 px torchvision's stride 2 (MnasNet has no stem max-pool).
* width: torchvision's ``alpha`` (depth multiplier): ``alpha = base * width`` where base is 1.0 for
  ``mnasnet_b1`` and 0.5 for ``mnasnet0_5``. As in torchvision, the 1280-channel head conv
  (``layers.14``) does not scale with alpha.
* BatchNorm momentum: torchvision's MnasNet uses 0.0003 (``1 - 0.9997``, tuned for ImageNet's
  hundreds of thousands of steps); at CIFAR scale (352 steps an epoch) the running statistics then
  stay near their initial values and evaluation falls to chance. ``bn_momentum`` (default 0.1,
  PyTorch's) replaces it; ``bn_momentum=0.0003`` restores torchvision's.
* classifier init: torchvision draws the last Linear with Kaiming-uniform over its fan-out, sized for
  1,000 classes; with 10 outputs the initial logits have a standard deviation of about 5 (loss ~8 at
  step 0, against ln 10 = 2.3) and SGD at lr 0.1 stalls near 15 % train accuracy. It is drawn from
  N(0, 0.01) with a zero bias instead (loading a state_dict replaces it, as for every weight).
"""

from __future__ import annotations

import dataclasses

from torch import nn
from torchvision.models.mnasnet import MNASNet

from ..errors import SpikeliteError
from ._common import (check_rate, check_size, init_small_classifier, replace_first_conv, resolve_stem_reduction,
                      set_stride)
from .registry import register_model

__all__ = ["MnasNetOptions", "build_mnasnet", "mnasnet_macro_modules", "STACK_REPEATS", "STACK_STRIDES"]

# the six stacks of inverted residuals at layers.8 ... layers.13
STACK_REPEATS = (3, 3, 3, 2, 4, 1)
STACK_STRIDES = (2, 2, 2, 1, 2, 1)
_FIRST_STACK = 8


@dataclasses.dataclass
class MnasNetOptions:
    """Options of the MnasNet family."""

    dropout: float = 0.2
    stem_reduction: int | None = None
    bn_momentum: float = 0.1

    def check(self, name: str) -> None:
        self.dropout = check_rate(name, "dropout", self.dropout)
        m = self.bn_momentum
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 < m <= 1.0:
            raise SpikeliteError(f"{name}: bn_momentum must be a number in (0, 1], got {m!r}")
        self.bn_momentum = float(m)


def _tv_init(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


def build_mnasnet(name: str, base_alpha: float, num_classes: int, image_size: int, in_chans: int, width: float,
                  opts: MnasNetOptions) -> tuple[nn.Module, dict]:
    opts.check(name)
    stem_reduction = resolve_stem_reduction(name, opts.stem_reduction, image_size, 2)
    total = stem_reduction
    for s in STACK_STRIDES:
        total *= s
    check_size(name, image_size, total, stem_reduction)

    model = MNASNet(base_alpha * width, num_classes=num_classes, dropout=opts.dropout)
    model.layers[0] = replace_first_conv(model.layers[0], in_chans, _tv_init)
    set_stride(model.layers[0], stem_reduction)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = opts.bn_momentum
    init_small_classifier(model.classifier[-1])
    resolved = dataclasses.asdict(opts)
    resolved["stem_reduction"] = stem_reduction
    return model, resolved


def mnasnet_macro_modules() -> list[tuple[str, str]]:
    out, k = [], 0
    for s, repeats in enumerate(STACK_REPEATS):
        for b in range(repeats):
            k += 1
            out.append((f"block{k}", f"layers.{_FIRST_STACK + s}.{b}"))
    return out


@register_model("mnasnet_b1", family="mnasnet", description="torchvision MnasNet-B1 (mnasnet1_0, alpha 1.0)",
                options=MnasNetOptions, macro=mnasnet_macro_modules)
def mnasnet_b1(name, num_classes, image_size, in_chans, width, opts):
    return build_mnasnet(name, 1.0, num_classes, image_size, in_chans, width, opts)


@register_model("mnasnet0_5", family="mnasnet", description="torchvision MnasNet-B1, alpha 0.5",
                options=MnasNetOptions, macro=mnasnet_macro_modules)
def mnasnet0_5(name, num_classes, image_size, in_chans, width, opts):
    return build_mnasnet(name, 0.5, num_classes, image_size, in_chans, width, opts)
