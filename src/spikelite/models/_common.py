"""Pieces every model family shares: the small-image stem rule, option checking, size checks.

The small-image rule (one rule, every family)
---------------------------------------------
ImageNet networks reduce a 224x224 image by 4 (SqueezeNet, ShuffleNetV2: stride-2 conv + max-pool)
or by 2 (MnasNet, MixNet, Xception: stride-2 conv) in their stem. At 32x32 that throws away most of
the image before the first block, so the stem's total reduction is chosen from the image size:

=====================  =================================================================
image_size             stem reduction
=====================  =================================================================
< 64 (CIFAR, 32x32)    1: stem conv stride 1, stem max-pool replaced by ``nn.Identity``
64 ... 127 (Tiny IN)   2: stem conv stride 2, stem max-pool replaced by ``nn.Identity``
>= 128 (ImageNet)      the library's own stem, unchanged (4 or 2)
=====================  =================================================================

so the blocks after the stem see 32x32 feature maps for both CIFAR and Tiny ImageNet. Nothing after
the stem changes, and replaced modules become ``nn.Identity`` at the same path so every other
module keeps its library name. ``stem_reduction=`` overrides the rule for one model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from torch import nn

from ..errors import SpikeliteError

__all__ = ["auto_stem_reduction", "resolve_stem_reduction", "check_size", "check_options", "set_stride"]


def auto_stem_reduction(image_size: int, imagenet_reduction: int) -> int:
    """The stem's total downsampling for ``image_size`` (see the module docstring)."""
    if image_size < 64:
        return 1
    if image_size < 128:
        return 2
    return imagenet_reduction


def resolve_stem_reduction(name: str, value, image_size: int, imagenet_reduction: int) -> int:
    """``value`` (None = the rule) checked against what this family's stem can do."""
    allowed = sorted({1, 2, imagenet_reduction})
    if value is None:
        return auto_stem_reduction(image_size, imagenet_reduction)
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise SpikeliteError(
            f"{name}: stem_reduction must be one of {allowed} (or None for the image-size rule), got {value!r}"
        )
    return value


def check_size(name: str, image_size: int, total_stride: int, stem_reduction: int) -> None:
    """Refuse images smaller than the network's total downsampling (the last stage would be < 1 pixel)."""
    if image_size < total_stride:
        raise SpikeliteError(
            f"image_size {image_size} is too small for {name}: with stem_reduction={stem_reduction} the network "
            f"downsamples by {total_stride} in total, so it needs images of at least {total_stride}x{total_stride}"
        )


def check_options(name: str, options_cls, kw: dict) -> Any:
    """Build the family's options dataclass from ``kw``; unknown keys and wrong types are SpikeliteErrors."""
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(kw) - set(fields))
    if unknown:
        raise SpikeliteError(
            f"{name} has no option(s) {', '.join(unknown)}; its options are: {', '.join(sorted(fields))}"
        )
    return options_cls(**kw)


def check_bool(name: str, key: str, value) -> None:
    if not isinstance(value, bool):
        raise SpikeliteError(f"{name}: {key} must be True or False, got {value!r}")


def check_rate(name: str, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) < 1.0) \
            or math.isnan(float(value)):
        raise SpikeliteError(f"{name}: {key} must be a number in [0, 1), got {value!r}")
    return float(value)


def set_stride(conv: nn.Conv2d, stride: int, padding: int | None = None) -> None:
    """Change a stem conv's stride (and padding) in place; the weights do not depend on either."""
    if not isinstance(conv, nn.Conv2d):  # pragma: no cover - guards against library changes
        raise TypeError(f"expected an nn.Conv2d stem, got {type(conv).__name__}")
    if getattr(conv, "padding_mode", "zeros") != "zeros" or isinstance(conv.padding, str):  # pragma: no cover
        raise TypeError("stem conv with dynamic padding cannot be restrided")
    conv.stride = (stride, stride)
    if padding is not None:
        conv.padding = (padding, padding)


def replace_first_conv(conv: nn.Conv2d, in_chans: int, init=None) -> nn.Conv2d:
    """``conv`` itself, or a conv like it that takes ``in_chans`` input channels.

    ``init(conv)`` re-initialises the new conv the way the library initialises its own convs.
    """
    if conv.in_channels == in_chans:
        return conv
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    if init is not None:
        init(new)
    return new


def init_small_classifier(linear: nn.Linear, std: float = 0.01) -> None:
    """Draw a classifier from N(0, std) with a zero bias.

    torchvision's MnasNet and timm's MixNet scale their last Linear by its fan-out (sized for 1,000
    ImageNet classes); with 10 classes behind a 1280/1536-wide head that gives initial logits with a
    standard deviation of 3-5 and a step-0 loss of 5-8 (chance: ln 10 = 2.30), and SGD at lr 0.1
    then stalls (docs/models.md has the measurements).
    """
    nn.init.normal_(linear.weight, 0.0, std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
