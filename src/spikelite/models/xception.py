"""xception_mini: a ~1M-parameter Xception built with timm's ``XceptionAligned``.

There is no small Xception in torchvision or timm, but timm's ``XceptionAligned`` takes the block
list as an argument, so ``xception_mini`` is timm's class with a narrower, shallower block list of
the same shape as Xception-41's:

* stem: timm's (``stem.0`` conv 3x3 -> 32, ``stem.1`` conv 3x3 -> 64), with the small-image rule of
  :mod:`spikelite.models._common` on ``stem.0.conv``'s stride (1 below 64 px, 2 from 64 px);
* entry flow: 3 strided Xception blocks, 64 -> 64 -> 128 -> 192 channels (``blocks.0-2``);
* middle flow: 3 blocks at 192 channels (``blocks.3-5``);
* exit flow: a strided block 192 -> (192, 256, 256) and a block without skip 256 -> (256, 256, 320)
  (``blocks.6-7``), then timm's classifier head (``head.fc``).

Each Xception block is three depthwise-separable convs (depthwise 3x3 + BN + pointwise 1x1 + BN)
with ReLUs and a residual (a strided 1x1 conv + BN where the shape changes). ``width`` scales every
block's channels (rounded to a multiple of 8); the stem stays as timm builds it.
"""

from __future__ import annotations

import dataclasses
from functools import partial

from timm.layers import make_divisible
from timm.models.xception_aligned import XceptionAligned
from torch import nn

from ._common import check_rate, check_size, replace_first_conv, resolve_stem_reduction, set_stride
from .registry import register_model

__all__ = ["XceptionOptions", "build_xception_mini", "xception_macro_modules", "MINI_CHANNELS"]

# entry flow outputs, middle-flow channels (= entry's last), exit flow: (c3, c4, c4) then (c5, c5, c6)
MINI_CHANNELS = {"entry": (64, 128, 192), "middle_blocks": 3, "exit": (256, 256, 320)}


@dataclasses.dataclass
class XceptionOptions:
    """Options of xception_mini (timm's ``drop_rate`` before the classifier, ``drop_path_rate``)."""

    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    stem_reduction: int | None = None

    def check(self, name: str) -> None:
        self.drop_rate = check_rate(name, "drop_rate", self.drop_rate)
        self.drop_path_rate = check_rate(name, "drop_path_rate", self.drop_path_rate)


def _block_cfg(width: float) -> list[dict]:
    def ch(c: int) -> int:
        return c if width == 1.0 else int(make_divisible(c * width, 8))

    c1, c2, c3 = (ch(c) for c in MINI_CHANNELS["entry"])
    c4, c5, c6 = (ch(c) for c in MINI_CHANNELS["exit"])
    stem_out = 64
    return [
        dict(in_chs=stem_out, out_chs=c1, stride=2),
        dict(in_chs=c1, out_chs=c2, stride=2),
        dict(in_chs=c2, out_chs=c3, stride=2),
        *[dict(in_chs=c3, out_chs=c3, stride=1) for _ in range(MINI_CHANNELS["middle_blocks"])],
        dict(in_chs=c3, out_chs=(c3, c4, c4), stride=2),
        dict(in_chs=c4, out_chs=(c5, c5, c6), stride=1, no_skip=True, start_with_relu=False),
    ]


def build_xception_mini(name: str, num_classes: int, image_size: int, in_chans: int, width: float,
                        opts: XceptionOptions) -> tuple[nn.Module, dict]:
    opts.check(name)
    stem_reduction = resolve_stem_reduction(name, opts.stem_reduction, image_size, 2)
    cfg = _block_cfg(width)
    total = stem_reduction
    for b in cfg:
        total *= b["stride"]
    check_size(name, image_size, total, stem_reduction)

    # timm's Xception-41 uses these BatchNorm settings
    model = XceptionAligned(cfg, num_classes=num_classes, in_chans=in_chans, drop_rate=opts.drop_rate,
                            drop_path_rate=opts.drop_path_rate,
                            norm_layer=partial(nn.BatchNorm2d, eps=0.001, momentum=0.1))
    set_stride(model.stem[0].conv, stem_reduction)
    model.stem[0].conv = replace_first_conv(model.stem[0].conv, in_chans)
    resolved = dataclasses.asdict(opts)
    resolved["stem_reduction"] = stem_reduction
    return model, resolved


def xception_macro_modules() -> list[tuple[str, str]]:
    n_entry = len(MINI_CHANNELS["entry"])
    n_mid = MINI_CHANNELS["middle_blocks"]
    names = [f"entry{i + 1}" for i in range(n_entry)] + [f"middle{i + 1}" for i in range(n_mid)] + ["exit1", "exit2"]
    return [(n, f"blocks.{i}") for i, n in enumerate(names)]


register_model("xception_mini", family="xception", description="timm XceptionAligned with a ~1M-parameter block list",
               options=XceptionOptions, macro=xception_macro_modules)(build_xception_mini)
