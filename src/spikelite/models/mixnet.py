"""MixNet-S / MixNet-M from timm in a small-image form.

Built with ``timm.create_model("mixnet_s" | "mixnet_m", pretrained=False)``. Changes:

* stem (the image-size rule of :mod:`spikelite.models._common`): below 64 px ``conv_stem`` runs
  with stride 1 (its padding stays 1); from 64 px timm's stride 2.
* width: timm's ``channel_multiplier``. timm's registered ``mixnet_s``/``mixnet_m`` fix it at 1.0, so
  another width is built with timm's own generator (``timm.models.efficientnet._gen_mixnet_s`` /
  ``_gen_mixnet_m``) and ``channel_multiplier=width``, which is how timm builds ``mixnet_l``
  (mixnet_m at 1.3). As in timm, the stem and block channels scale and the 1536-channel head
  (``conv_head``) does not.
* classifier init: timm scales ``classifier`` by its fan-out (sized for 1,000 classes); with 10
  classes behind the 1536-wide head the initial logits have a standard deviation of ~3 (step-0 loss
  ~5.4, chance 2.30) and SGD at lr 0.1 stalls. It is drawn from N(0, 0.01), zero bias
  (:func:`~spikelite.models._common.init_small_classifier`); loaded weights replace it.
"""

from __future__ import annotations

import dataclasses

import timm
from torch import nn

from ..errors import SpikeliteError
from ._common import (check_rate, check_size, init_small_classifier, replace_first_conv, resolve_stem_reduction,
                      set_stride)
from .registry import register_model

__all__ = ["MixNetOptions", "build_mixnet", "mixnet_macro_modules", "STAGE_DEPTHS"]

# blocks per stage (timm's ``blocks.<stage>.<i>``); stage 0 is one depthwise-separable block,
# the others are inverted residuals
STAGE_DEPTHS = {"mixnet_s": (1, 2, 4, 3, 3, 3), "mixnet_m": (1, 2, 4, 4, 4, 4)}
_BLOCK_STRIDES = (1, 2, 2, 2, 1, 2)


@dataclasses.dataclass
class MixNetOptions:
    """Options of the MixNet family (timm's ``drop_rate`` before the classifier, ``drop_path_rate``)."""

    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    stem_reduction: int | None = None
    # "silu": timm's MixNet (SiLU/Swish everywhere); "relu": every SiLU replaced by ReLU, squeeze-excitation
    # gates kept as sigmoids: the variant that converts to an SNN exactly (spikelite convert)
    act: str = "silu"

    def check(self, name: str) -> None:
        if self.act not in ("silu", "relu"):
            raise SpikeliteError(f"{name}: act must be 'silu' or 'relu', got {self.act!r}")
        self.drop_rate = check_rate(name, "drop_rate", self.drop_rate)
        self.drop_path_rate = check_rate(name, "drop_path_rate", self.drop_path_rate)


def build_mixnet(name: str, variant: str, num_classes: int, image_size: int, in_chans: int, width: float,
                 opts: MixNetOptions) -> tuple[nn.Module, dict]:
    opts.check(name)
    stem_reduction = resolve_stem_reduction(name, opts.stem_reduction, image_size, 2)
    total = stem_reduction
    for s in _BLOCK_STRIDES:
        total *= s
    check_size(name, image_size, total, stem_reduction)

    kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=opts.drop_rate,
                  drop_path_rate=opts.drop_path_rate)
    if width == 1.0:
        model = timm.create_model(variant, pretrained=False, **kwargs)
    else:
        from timm.models import efficientnet

        gen = getattr(efficientnet, f"_gen_{variant}", None)
        if gen is None:  # pragma: no cover - depends on the installed timm
            raise SpikeliteError(f"{name}: this timm version has no _gen_{variant}; use width=1.0")
        model = gen(variant, channel_multiplier=width, pretrained=False, **kwargs)
    set_stride(model.conv_stem, stem_reduction)
    # timm handles in_chans itself; replace_first_conv is a no-op check here
    model.conv_stem = replace_first_conv(model.conv_stem, in_chans)
    init_small_classifier(model.classifier)
    if opts.act == "relu":
        _silu_to_relu(model)
    resolved = dataclasses.asdict(opts)
    resolved["stem_reduction"] = stem_reduction
    return model, resolved


def _silu_to_relu(model: nn.Module) -> None:
    """Every SiLU/Swish module (timm's own classes included) becomes a ReLU, in place."""
    for path, m in list(model.named_modules()):
        if isinstance(m, nn.SiLU) or type(m).__name__ in ("Swish", "SwishMe"):
            parent, _, leaf = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, nn.ReLU(inplace=True))


def mixnet_macro_modules(variant: str) -> list[tuple[str, str]]:
    out, k = [], 0
    for s, depth in enumerate(STAGE_DEPTHS[variant]):
        for b in range(depth):
            k += 1
            out.append((f"block{k}", f"blocks.{s}.{b}"))
    return out


@register_model("mixnet_s", family="mixnet", description="timm MixNet-S", options=MixNetOptions,
                macro=lambda: mixnet_macro_modules("mixnet_s"))
def mixnet_s(name, num_classes, image_size, in_chans, width, opts):
    return build_mixnet(name, "mixnet_s", num_classes, image_size, in_chans, width, opts)


@register_model("mixnet_m", family="mixnet", description="timm MixNet-M", options=MixNetOptions,
                macro=lambda: mixnet_macro_modules("mixnet_m"))
def mixnet_m(name, num_classes, image_size, in_chans, width, opts):
    return build_mixnet(name, "mixnet_m", num_classes, image_size, in_chans, width, opts)
