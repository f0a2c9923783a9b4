"""ShuffleNetV2 from torchvision in a small-image form.

Built from ``torchvision.models.ShuffleNetV2`` (stage repeats 4, 8, 4). Changes:

* stem (the image-size rule of :mod:`spikelite.models._common`): below 64 px ``conv1.0`` runs with
  stride 1 and ``maxpool`` becomes ``nn.Identity``; from 64 px stride 2 and no max-pool; from 128 px
  torchvision's stem.
* width: torchvision's channel tables for x0_5, x1_0, x1_5, x2_0; ``shufflenetv2_x0_3`` is x1_0's
  table times 0.3. ``width=w`` multiplies the named model's three stage widths (rounded to a multiple
  of 4 with timm's ``make_divisible``); the stem (24) and ``conv5`` (1024, 2048 for x2_0) stay, as in
  torchvision, where they do not change between x0_5 and x1_5 either.
"""

from __future__ import annotations

import dataclasses

from timm.layers import make_divisible
from torch import nn
from torchvision.models.shufflenetv2 import ShuffleNetV2

from ._common import check_size, replace_first_conv, resolve_stem_reduction, set_stride
from .registry import register_model

__all__ = ["ShuffleNetV2Options", "build_shufflenetv2", "shufflenetv2_macro_modules", "STAGE_TABLES", "REPEATS"]

REPEATS = (4, 8, 4)
# torchvision's stages_out_channels for each published width (stem, stage2, stage3, stage4, conv5)
STAGE_TABLES = {
    "x0_5": (24, 48, 96, 192, 1024),
    "x1_0": (24, 116, 232, 464, 1024),
    "x1_5": (24, 176, 352, 704, 1024),
    "x2_0": (24, 244, 488, 976, 2048),
}


@dataclasses.dataclass
class ShuffleNetV2Options:
    """Options of the ShuffleNetV2 family."""

    stem_reduction: int | None = None

    def check(self, name: str) -> None:
        pass


def stage_channels(table: str, width: float) -> list[int]:
    stem, *stages, head = STAGE_TABLES[table]
    if width != 1.0:
        stages = [int(make_divisible(c * width, 4)) for c in stages]
    return [stem, *stages, head]


def build_shufflenetv2(name: str, table: str, base_width: float, num_classes: int, image_size: int, in_chans: int,
                       width: float, opts: ShuffleNetV2Options) -> tuple[nn.Module, dict]:
    opts.check(name)
    stem_reduction = resolve_stem_reduction(name, opts.stem_reduction, image_size, 4)
    check_size(name, image_size, stem_reduction * 2 ** len(REPEATS), stem_reduction)

    model = ShuffleNetV2(list(REPEATS), stage_channels(table, base_width * width), num_classes=num_classes)
    # torchvision leaves ShuffleNetV2 at PyTorch's default init, so a replaced stem conv does too
    model.conv1[0] = replace_first_conv(model.conv1[0], in_chans)
    if stem_reduction < 4:
        set_stride(model.conv1[0], stem_reduction)
        model.maxpool = nn.Identity()
    resolved = dataclasses.asdict(opts)
    resolved["stem_reduction"] = stem_reduction
    return model, resolved


def shufflenetv2_macro_modules() -> list[tuple[str, str]]:
    return [
        (f"stage{s}_unit{u + 1}", f"stage{s}.{u}")
        for s, repeats in zip((2, 3, 4), REPEATS)
        for u in range(repeats)
    ]


@register_model("shufflenetv2_x0_3", family="shufflenetv2",
                description="torchvision ShuffleNetV2, 0.3 x the x1.0 stage widths", options=ShuffleNetV2Options,
                macro=shufflenetv2_macro_modules)
def shufflenetv2_x0_3(name, num_classes, image_size, in_chans, width, opts):
    return build_shufflenetv2(name, "x1_0", 0.3, num_classes, image_size, in_chans, width, opts)


@register_model("shufflenetv2_x0_5", family="shufflenetv2", description="torchvision ShuffleNetV2 x0.5",
                options=ShuffleNetV2Options, macro=shufflenetv2_macro_modules)
def shufflenetv2_x0_5(name, num_classes, image_size, in_chans, width, opts):
    return build_shufflenetv2(name, "x0_5", 1.0, num_classes, image_size, in_chans, width, opts)


@register_model("shufflenetv2_x1_0", family="shufflenetv2", description="torchvision ShuffleNetV2 x1.0",
                options=ShuffleNetV2Options, macro=shufflenetv2_macro_modules)
def shufflenetv2_x1_0(name, num_classes, image_size, in_chans, width, opts):
    return build_shufflenetv2(name, "x1_0", 1.0, num_classes, image_size, in_chans, width, opts)
