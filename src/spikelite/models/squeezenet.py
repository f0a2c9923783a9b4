"""SqueezeNet 1.0 / 1.1 from torchvision, in a small-image form with optional BatchNorm.

Built from ``torchvision.models.SqueezeNet``; what changes (all documented in docs/models.md):

* stem (the image-size rule of :mod:`spikelite.models._common`): below 64 px ``features.0`` runs with
  stride 1 and ``features.2`` (the stem max-pool) becomes ``nn.Identity``; from 64 px stride 2 and no
  stem pool; from 128 px torchvision's stem as is. A strided-down stem conv is padded to ``k // 2``
  so a 32x32 image stays 32x32 (torchvision's ImageNet stem has no padding).
* ``batch_norm=True`` (default): a BatchNorm2d after every conv except the final (logit) conv. The stem
  becomes ``features.0 = Sequential(conv, bn)``; each Fire module is a :class:`BNFire`, a subclass of
  torchvision's Fire that keeps ``squeeze``, ``expand1x1``, ``expand3x3`` and their ``*_activation``
  names and adds ``squeeze_bn``, ``expand1x1_bn``, ``expand3x3_bn``. Spiking SqueezeNet without BN
  trains poorly.
* ``final_relu=False`` (default): ``classifier.2`` (the ReLU after the logit conv) becomes
  ``nn.Identity``, so logits can be negative; in the SNN that ReLU would become a spiking layer and
  the logits would be firing rates in [0, 1].
* ``pool="avg"`` (default) | ``"max"``: the pools in ``features``. Average pooling by default: max-pooling
  binary spike maps is an OR, costs the SNN accuracy (docs/recipe.md) and has no NIR node, so a default
  SqueezeNet trains, converts and exports as it is. Until this default changed it was ``"max"``
  (torchvision's pools): a recorded spec without ``pool`` rebuilds with max-pools.
* Fire modules keep torchvision's ``features.N`` indices; :data:`FIRE_INDEX` maps the paper's
  fire2 ... fire9 onto them.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import init
from torchvision.models.squeezenet import Fire, SqueezeNet

from ..errors import SpikeliteError
from ._common import check_bool, check_rate, check_size, replace_first_conv, resolve_stem_reduction, set_stride
from .registry import register_model

__all__ = ["SqueezeNetOptions", "BNFire", "build_squeezenet", "squeezenet_macro_modules", "FIRE_INDEX"]

# The paper's fire2 ... fire9 -> torchvision's index in ``features`` (max-pools sit between them).
FIRE_INDEX = {
    "1_0": {"fire2": 3, "fire3": 4, "fire4": 5, "fire5": 7, "fire6": 8, "fire7": 9, "fire8": 10, "fire9": 12},
    "1_1": {"fire2": 3, "fire3": 4, "fire4": 6, "fire5": 7, "fire6": 9, "fire7": 10, "fire8": 11, "fire9": 12},
}
_STEM_POOL = 2  # features.2 is the stem max-pool in both versions
# the option defaults these models had before (a spec recorded then without the option was built with them)
EARLIER_DEFAULTS = {"pool": "max"}
_BODY_POOLS = 2  # max-pools after the stem (each halves the feature map)


@dataclasses.dataclass
class SqueezeNetOptions:
    """Options of the SqueezeNet family (``create_model("squeezenet1_1", **options)``)."""

    batch_norm: bool = True
    final_relu: bool = False
    pool: str = "avg"  # "max" until issue #28 (EARLIER_DEFAULTS)
    dropout: float = 0.5
    stem_reduction: int | None = None

    def check(self, name: str) -> None:
        check_bool(name, "batch_norm", self.batch_norm)
        check_bool(name, "final_relu", self.final_relu)
        if self.pool not in ("max", "avg"):
            raise SpikeliteError(f"{name}: pool must be 'max' or 'avg', got {self.pool!r}")
        self.dropout = check_rate(name, "dropout", self.dropout)


class BNFire(Fire):
    """torchvision's Fire with a BatchNorm2d after each of its three convs (module names kept)."""

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int) -> None:
        super().__init__(inplanes, squeeze_planes, expand1x1_planes, expand3x3_planes)
        self.squeeze_bn = nn.BatchNorm2d(squeeze_planes)
        self.expand1x1_bn = nn.BatchNorm2d(expand1x1_planes)
        self.expand3x3_bn = nn.BatchNorm2d(expand3x3_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze_bn(self.squeeze(x)))
        return torch.cat(
            [
                self.expand1x1_activation(self.expand1x1_bn(self.expand1x1(x))),
                self.expand3x3_activation(self.expand3x3_bn(self.expand3x3(x))),
            ],
            1,
        )


def _tv_conv_init(conv: nn.Conv2d) -> None:
    # torchvision's SqueezeNet init for every conv but the logit conv
    init.kaiming_uniform_(conv.weight)
    if conv.bias is not None:
        init.constant_(conv.bias, 0)


def build_squeezenet(name: str, version: str, num_classes: int, image_size: int, in_chans: int, width: float,
                     opts: SqueezeNetOptions) -> tuple[nn.Module, dict]:
    if width != 1.0:
        raise SpikeliteError(f"{name} has no width multiplier (torchvision defines none for SqueezeNet); "
                             f"width must be 1.0, got {width}")
    opts.check(name)
    stem_reduction = resolve_stem_reduction(name, opts.stem_reduction, image_size, 4)
    check_size(name, image_size, stem_reduction * 2 ** _BODY_POOLS, stem_reduction)

    model = SqueezeNet(version, num_classes=num_classes, dropout=opts.dropout)
    features = model.features

    stem = replace_first_conv(features[0], in_chans, _tv_conv_init)
    if stem_reduction < 4:
        set_stride(stem, stem_reduction, padding=stem.kernel_size[0] // 2)
        features[_STEM_POOL] = nn.Identity()

    for i, m in enumerate(features):
        if isinstance(m, nn.MaxPool2d) and opts.pool == "avg":
            features[i] = nn.AvgPool2d(kernel_size=m.kernel_size, stride=m.stride, ceil_mode=m.ceil_mode)
        if isinstance(m, Fire) and opts.batch_norm:
            fire = BNFire(m.inplanes, m.squeeze.out_channels, m.expand1x1.out_channels, m.expand3x3.out_channels)
            # keep torchvision's initialised conv weights; the new BNs start at identity
            missing, unexpected = fire.load_state_dict(m.state_dict(), strict=False)
            assert not unexpected and all("_bn." in k for k in missing)
            features[i] = fire

    if opts.batch_norm:
        features[0] = nn.Sequential(OrderedDict(conv=stem, bn=nn.BatchNorm2d(stem.out_channels)))
    else:
        features[0] = stem

    if not opts.final_relu:
        model.classifier[2] = nn.Identity()

    resolved = dataclasses.asdict(opts)
    resolved["stem_reduction"] = stem_reduction
    return model, resolved


def squeezenet_macro_modules(version: str) -> list[tuple[str, str]]:
    return [(fire, f"features.{idx}") for fire, idx in FIRE_INDEX[version].items()]


@register_model("squeezenet1_0", family="squeezenet", description="torchvision SqueezeNet 1.0 (+BN)",
                options=SqueezeNetOptions, macro=lambda: squeezenet_macro_modules("1_0"), has_width=False,
                earlier_defaults=EARLIER_DEFAULTS)
def squeezenet1_0(name, num_classes, image_size, in_chans, width, opts):
    return build_squeezenet(name, "1_0", num_classes, image_size, in_chans, width, opts)


@register_model("squeezenet1_1", family="squeezenet", description="torchvision SqueezeNet 1.1 (+BN)",
                options=SqueezeNetOptions, macro=lambda: squeezenet_macro_modules("1_1"), has_width=False,
                earlier_defaults=EARLIER_DEFAULTS)
def squeezenet1_1(name, num_classes, image_size, in_chans, width, opts):
    return build_squeezenet(name, "1_1", num_classes, image_size, in_chans, width, opts)
