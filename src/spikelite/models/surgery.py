"""Structure surgery on zoo models: remove whole macro modules (fire modules, blocks, units).

``create_model(..., keep=[...])`` builds a pruned architecture through :func:`apply_keep`: every macro
module it does not name is replaced by what one rule per family leaves in its place
(:func:`replacement_plan`: an identity where the shape is kept, ShuffleNetV2's channel shuffle, a 1x1
:class:`Projection` where it changes, SqueezeNet's next squeeze conv rebuilt for the new channel
count). :mod:`spikelite.prune` decides *which* modules to remove; this module knows *how*.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpikeliteError

__all__ = ["apply_keep", "replacement_plan", "Replacement", "Projection", "ChannelAdapt", "FAMILY_RULES",
           "probe_modules", "resolve_modules", "set_submodule"]

# One rule per family for modules that change shape (shape-preserving ones become identities, ShuffleNetV2's
# stride-1 units their channel shuffle).
FAMILY_RULES: dict[str, str] = {
    "squeezenet": "rebuild the next kept fire's squeeze conv (or the classifier conv) for the new channel "
                  "count, keeping the overlapping input-channel weights",
    "shufflenetv2": "1x1 projection with the unit's stride + BatchNorm + ReLU (units end in ReLU); a stride-1 unit "
                    "becomes its skip path, a 2-group channel shuffle",
    "mnasnet": "1x1 projection with the block's stride + BatchNorm (linear bottleneck output)",
    "mixnet": "1x1 projection with the block's stride + BatchNorm (linear bottleneck output)",
    "xception": "1x1 projection with the block's stride + BatchNorm (+ ReLU for exit2, which ends in ReLU)",
    "custom": "1x1 projection with the block's stride + BatchNorm (+ ReLU when the block's output is rectified)",
}


# ----------------------------------------------------------------------------------------------
# Replacement modules
# ----------------------------------------------------------------------------------------------


class Projection(nn.Sequential):
    """The minimal stand-in for a removed block that changes shape: ``conv`` (1x1, ``stride``, no
    bias, c_in -> c_out), ``bn`` (BatchNorm2d) and, when the block's output was rectified, ``act``
    (ReLU; a spiking layer after ``spikify``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, act: bool = False):
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            bn=nn.BatchNorm2d(out_channels),
        )
        if act:
            layers["act"] = nn.ReLU()
        super().__init__(layers)


class ChannelAdapt(nn.Module):
    """Zero-pads (or truncates) the channel dimension to ``out_channels``: what the next layer of a
    SqueezeNet whose fire was removed sees once its input conv keeps only the overlapping weights.
    Used inside importance gates; a pruned SqueezeNet holds an ``nn.Identity`` in its place."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_channels >= self.in_channels:
            return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))
        return x[:, : self.out_channels]

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}"


@dataclasses.dataclass(frozen=True)
class Replacement:
    """What removing one module leaves in its place.

    ``kind``: ``identity`` (shape kept), ``shuffle`` (a ShuffleNetV2 stride-1 unit: its skip path,
    ``nn.ChannelShuffle(2)``), ``channels`` (SqueezeNet: identity here, the next input conv rebuilt)
    or ``projection`` (:class:`Projection` with ``stride`` and ``act``).
    """

    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    stride: int = 1
    act: bool = False

    def describe(self) -> str:
        if self.kind == "identity":
            return "identity"
        if self.kind == "shuffle":
            return "channel shuffle (the unit's skip path)"
        if self.kind == "channels":
            return f"identity, next input conv {self.out_shape[0]} -> {self.in_shape[0]} channels"
        s = f", stride {self.stride}" if self.stride != 1 else ""
        return f"projection {self.in_shape[0]} -> {self.out_shape[0]}{s}" + (" + ReLU" if self.act else "")

    def structural(self) -> nn.Module:
        """The module the pruned network holds at the removed module's path."""
        if self.kind == "projection":
            return Projection(self.in_shape[0], self.out_shape[0], self.stride, self.act)
        if self.kind == "shuffle":
            return nn.ChannelShuffle(2)
        return nn.Identity()

    def functional(self) -> nn.Module:
        """The module that computes the replacement's output from the block's input (for gates)."""
        if self.kind == "channels":
            return ChannelAdapt(self.in_shape[0], self.out_shape[0])
        return self.structural()


def resolve_modules(tokens, macro: list[tuple[str, str]], family: str, label: str) -> list[str]:
    """Stable names for user tokens: names, module paths, any case; SqueezeNet also takes F2 ... F9."""
    if isinstance(tokens, str):
        tokens = [t for t in re.split(r"[,\s]+", tokens) if t]
    names = [n for n, _ in macro]
    by_key = {n.lower(): n for n in names}
    by_key.update({p.lower(): n for n, p in macro})
    out, bad = [], []
    for t in tokens:
        if not isinstance(t, str):
            raise SpikeliteError(f"module names must be strings, got {t!r}")
        key = t.strip().lower()
        m = re.fullmatch(r"f(\d+)", key)
        if family == "squeezenet" and m:
            key = f"fire{m.group(1)}"
        if key in by_key:
            out.append(by_key[key])
        else:
            bad.append(t)
    if bad:
        raise SpikeliteError(f"unknown module(s) {', '.join(repr(b) for b in bad)} in {label}; valid names: "
                             f"{', '.join(names)}")
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------------------------
# Shapes and the replacement rule
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Probe:
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    nonneg: bool
    order: int


def probe_modules(cnn: nn.Module, paths: Sequence[str], input_shape: tuple[int, ...]) -> dict[str, Probe]:
    """In/out shapes (batch left out), whether the output is >= 0 everywhere, and call order of each
    module, from one eval-mode forward pass on a fixed random batch of 2."""
    try:
        param = next(cnn.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *input_shape), generator=gen).to(device=device, dtype=dtype)
    found: dict[str, list] = {}

    def hook_for(path):
        def hook(m, args, out):
            if not args or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
                raise SpikeliteError(f"module {path!r} does not map one tensor to one tensor; it cannot be replaced")
            found.setdefault(path, []).append((tuple(args[0].shape[1:]), tuple(out.shape[1:]),
                                               bool((out >= 0).all()), len(found)))
        return hook

    handles = [cnn.get_submodule(p).register_forward_hook(hook_for(p)) for p in paths]
    modes = {m: m.training for m in cnn.modules()}
    cnn.eval()
    try:
        with torch.no_grad():
            cnn(x)
    except SpikeliteError:
        raise
    except Exception as exc:
        raise SpikeliteError(f"{type(cnn).__name__} failed on an input of shape {(2, *input_shape)}: "
                             f"{type(exc).__name__}: {exc}") from None
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    out = {}
    for p in paths:
        calls = found.get(p, [])
        if len(calls) != 1:
            what = "never called" if not calls else f"called {len(calls)} times"
            raise SpikeliteError(f"module {p!r} is {what} in one forward pass; only a block that runs once can be "
                                 "removed")
        i, o, nonneg, order = calls[0]
        out[p] = Probe(i, o, nonneg, order)
    return out


def replacement_plan(family: str, probe: Probe, name: str = "") -> Replacement:
    """The rule: identity for shape-preserving blocks; SqueezeNet's channel rule or a projection."""
    i, o = probe.in_shape, probe.out_shape
    if i == o:
        # A ShuffleNetV2 stride-1 unit passes half its channels through untouched but interleaves them
        # with the branch's output (channel_shuffle, 2 groups): its skip path is that permutation, and
        # an identity would hand every later unit its channels in the wrong places.
        return Replacement("shuffle" if family == "shufflenetv2" else "identity", i, o)
    if family == "squeezenet":
        if i[1:] != o[1:]:  # pragma: no cover - fire modules never change resolution
            raise SpikeliteError(f"{name}: a fire module that changes resolution ({i} -> {o}) has no rule")
        return Replacement("channels", i, o)
    if len(i) != 3 or len(o) != 3:
        raise SpikeliteError(f"{name or 'module'} changes its shape {i} -> {o}; only convolutional blocks "
                             "([C, H, W] in and out) can be replaced by a projection")
    stride = max(1, math.ceil(i[1] / o[1]))
    if math.ceil(i[1] / stride) != o[1] or math.ceil(i[2] / stride) != o[2]:
        raise SpikeliteError(f"{name or 'module'} maps {i} -> {o}: the resolution change is not a stride of a 1x1 "
                             "convolution, so no projection can replace it")
    return Replacement("projection", i, o, stride, probe.nonneg)


# ----------------------------------------------------------------------------------------------
# Structure surgery
# ----------------------------------------------------------------------------------------------


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    *parents, leaf = path.split(".")
    owner = root.get_submodule(".".join(parents)) if parents else root
    setattr(owner, leaf, module)


def _resize_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A conv like ``conv`` for ``in_channels`` inputs, with the weights of the channels both have
    (the first ``min(old, new)``) and zeros for any new ones."""
    if conv.groups != 1:  # pragma: no cover - SqueezeNet's convs are dense
        raise SpikeliteError("cannot resize a grouped convolution's input")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    1, conv.bias is not None, conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        k = min(in_channels, conv.in_channels)
        new.weight[:, :k] = conv.weight[:, :k]
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def squeezenet_consumers(model: nn.Module) -> None:
    """Give every kept fire's squeeze conv, and the classifier conv, the channel count that reaches it."""
    from torchvision.models.squeezenet import Fire

    c = None
    for m in model.features:
        conv = m if isinstance(m, nn.Conv2d) else getattr(m, "conv", None) if isinstance(m, nn.Sequential) else None
        if isinstance(conv, nn.Conv2d):
            c = conv.out_channels
        elif isinstance(m, Fire):
            if m.squeeze.in_channels != c:
                m.squeeze = _resize_in_channels(m.squeeze, c)
                m.inplanes = c
            c = m.expand1x1.out_channels + m.expand3x3.out_channels
    cls = model.classifier[1]
    if cls.in_channels != c:
        model.classifier[1] = _resize_in_channels(cls, c)


def apply_keep(model: nn.Module, keep) -> nn.Module:
    """Remove, in place, every macro module of a fresh zoo CNN that ``keep`` does not name.

    ``create_model(..., keep=[...])`` calls this; it records the kept names (forward order) as
    ``spikelite_spec["keep"]`` so the spec rebuilds the pruned architecture. Weights of new layers
    are freshly initialised (a rebuilt SqueezeNet input conv keeps its overlapping weights).
    """
    from . import get_entry, macro_modules

    spec = getattr(model, "spikelite_spec", None)
    if not isinstance(spec, dict) or not spec.get("name"):
        raise SpikeliteError("apply_keep works on zoo models (create_model); use prune_model for other models")
    if spec.get("keep") is not None:
        raise SpikeliteError(f"{spec['name']} is already pruned (keeps {spec['keep']}); prune with prune_model")
    if isinstance(keep, str) or not isinstance(keep, (list, tuple)):
        raise SpikeliteError(f"keep must be a list of macro-module names, got {keep!r}")
    family, macro = get_entry(spec["name"]).family, macro_modules(spec["name"])
    paths = dict(macro)
    kept_set = set(resolve_modules(list(keep), macro, family, spec["name"]))
    kept = [n for n, _ in macro if n in kept_set]
    if not kept:
        raise SpikeliteError(f"{spec['name']}: keep names no module; removing every macro module leaves no network "
                             f"(modules: {', '.join(n for n, _ in macro)})")
    removed = [n for n, _ in macro if n not in kept_set]
    if removed:
        input_shape = (int(spec["in_chans"]), int(spec["image_size"]), int(spec["image_size"]))
        probes = probe_modules(model, [paths[n] for n in removed], input_shape)
        for n in removed:
            plan = replacement_plan(family, probes[paths[n]], n)
            set_submodule(model, paths[n], plan.structural())
        if family == "squeezenet":
            squeezenet_consumers(model)
        model.spikelite_spec["keep"] = kept
    return model
