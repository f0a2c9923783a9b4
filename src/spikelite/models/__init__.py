"""The spikelite model zoo: lightweight CNNs in a small-image form, one form for the CNN and its SNN.

``create_model(name, num_classes=10, image_size=32, in_chans=3, width=1.0, **options)`` builds a
plain PyTorch CNN from torchvision's or timm's definition (module names kept), adapted to small
images by one rule (see :mod:`spikelite.models._common`). ``spikelite.snn.spikify`` turns any of
them into a spiking network.

Every model records how it was built in ``model.spikelite_spec`` (all options resolved, JSON-safe),
so ``create_model(**model.spikelite_spec)`` rebuilds the same architecture; checkpoints store it.
``macro_modules`` lists each model's removable blocks in order under stable names (fire2 ... fire9,
stage2_unit1 ..., block1 ..., entry1 ...). ``model_info`` gives parameters and dense MACs.
``spikelite models`` prints the table (docs/models.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from ..errors import SpikeliteError
from ._common import auto_stem_reduction, check_options
from ._info import count_macs, count_params, dummy_forward
from .registry import ModelEntry, get_entry, list_models, register_model

# The families register their names (registry order: the order of these imports).
from . import squeezenet  # noqa: E402,I001  (this order is the registry's)
from . import shufflenet  # noqa: E402
from . import mnasnet  # noqa: E402
from . import mixnet  # noqa: E402
from . import xception  # noqa: E402

FAMILY_MODULES = (squeezenet, shufflenet, mnasnet, mixnet, xception)

__all__ = [
    "create_model",
    "recorded_spec",
    "list_models",
    "get_entry",
    "model_info",
    "macro_modules",
    "macro_module_info",
    "fit_width",
    "ModelEntry",
    "register_model",
    "ModelInfo",
    "MacroModule",
    "PAPER_PARAMS",
    "auto_stem_reduction",
]


# The study's CIFAR-10 parameter counts, per family (see docs/models.md for the comparison).
PAPER_PARAMS = {
    "shufflenetv2": 911_000,
    "xception": 1_025_000,
    "mnasnet": 151_800,
    "mixnet": 84_900,
    "squeezenet": 736_500,
}


def _check_int(key: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpikeliteError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_width(name: str, width) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise SpikeliteError(f"{name}: width must be a positive number, got {width!r}")
    return float(width)


def create_model(name: str, num_classes: int = 10, image_size: int = 32, in_chans: int = 3, width: float = 1.0,
                 **kw: Any) -> nn.Module:
    """Build a registered model in its small-image form.

    Args:
        name: one of :func:`list_models`.
        num_classes: classifier outputs.
        image_size: side of the (square) input images; picks the stem (see ``_common``) and is
            checked against the network's total downsampling.
        in_chans: input channels.
        width: multiplier on the named model's channel widths (SqueezeNet has none: 1.0 only).
        **kw: family options (``SqueezeNetOptions`` etc.), e.g. ``batch_norm=False``, ``pool="avg"``,
            ``stem_reduction=2``; and ``keep=[...]``: the macro modules to keep, the others removed
            as :func:`spikelite.models.surgery.apply_keep` does (a pruned architecture; docs/pruning.md);
            and ``act_levels=L``: every ReLU becomes :class:`spikelite.snn.QCFS` with ``L`` levels,
            a CNN that converts to an SNN at ``T = L`` with little loss (docs/recipe.md); with
            ``act_threshold=λ0`` each QCFS also learns its clipping threshold λ (from ``λ0``), the form
            :func:`spikelite.snn.convert` carries into the SNN's thresholds.

    The returned model has ``spikelite_spec``: every argument with defaults filled in, so that
    ``create_model(**model.spikelite_spec)`` rebuilds the same architecture even if defaults change.
    """
    entry = get_entry(name)
    num_classes = _check_int("num_classes", num_classes)
    image_size = _check_int("image_size", image_size)
    in_chans = _check_int("in_chans", in_chans)
    width = _check_width(name, width)
    keep = kw.pop("keep", None)
    act_levels = kw.pop("act_levels", None)
    act_threshold = kw.pop("act_threshold", None)
    if act_levels is not None:
        act_levels = _check_int("act_levels", act_levels)
    if act_threshold is not None:
        if act_levels is None:
            raise SpikeliteError(f"{name}: act_threshold is the learned threshold of QCFS activations; it needs "
                                 "act_levels")
        if isinstance(act_threshold, bool) or not isinstance(act_threshold, (int, float)) \
                or not math.isfinite(act_threshold) or act_threshold <= 0:
            raise SpikeliteError(f"{name}: act_threshold must be a positive number, got {act_threshold!r}")
        act_threshold = float(act_threshold)
    opts = check_options(name, entry.options, kw)
    model, resolved = entry.build(name, num_classes, image_size, in_chans, width, opts)
    model.spikelite_spec = {
        "name": name, "num_classes": num_classes, "image_size": image_size, "in_chans": in_chans, "width": width,
        **resolved,
    }
    if keep is not None:  # a pruned architecture: spec["keep"] records the kept macro modules
        from .surgery import apply_keep

        apply_keep(model, keep)
    if act_levels is not None:
        _use_qcfs(model, name, act_levels, act_threshold)
        model.spikelite_spec["act_levels"] = act_levels
        if act_threshold is not None:
            model.spikelite_spec["act_threshold"] = act_threshold
    return model


def recorded_spec(spec: dict) -> dict:
    """A model spec read back from a file (a checkpoint's ``model_spec``) as :func:`create_model` must take
    it today: an option the spec does not name whose default has changed since (the registry's
    ``earlier_defaults``, e.g. SqueezeNet's ``pool``, ``"max"`` before it became ``"avg"``) takes its
    earlier default. ``spikelite_spec`` names every option, so only a spec written before an option's
    default changed lacks it; old checkpoints thus rebuild exactly as they were trained."""
    try:
        entry = get_entry(spec.get("name"))
    except SpikeliteError:  # create_model reports the unknown name
        return spec
    return {**entry.earlier_defaults, **spec}


def _use_qcfs(model: nn.Module, name: str, levels: int, threshold: float | None = None) -> None:
    """Replace every ReLU/ReLU6 module by a QCFS activation (in place); other activations are an error, except
    the Sigmoid/Hardsigmoid gates of squeeze-excitation, which stay analog (as :func:`spikelite.snn.spikify`
    keeps them when it converts)."""
    from .qcfs import QCFS

    relus, others = [], []
    for path, m in model.named_modules():
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            relus.append(path)
        elif isinstance(m, (nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU)) or \
                type(m).__name__ in ("Swish", "SwishMe", "HardSwish", "HardSwishMe", "GELU"):
            others.append(f"{path} ({type(m).__name__})")
    if others:
        raise SpikeliteError(f"{name}: act_levels replaces ReLU activations by QCFS, but this model also has "
                             f"{len(others)} other activation(s), e.g. {', '.join(others[:3])}")
    if not relus:
        raise SpikeliteError(f"{name}: act_levels found no ReLU activation modules to replace")
    for path in relus:
        parent, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, QCFS(levels, threshold))


# ----------------------------------------------------------------------------------------------
# macro modules
# ----------------------------------------------------------------------------------------------

def _find_spec(model: nn.Module) -> tuple[dict | None, str]:
    """The spec of a create_model model (path prefix ""), or of a SpikingNet carrying one ("body.")."""
    spec = getattr(model, "spikelite_spec", None)
    body = getattr(model, "body", None)
    is_snn = type(model).__name__ == "SpikingNet" and isinstance(body, nn.Module)
    if is_snn and not isinstance(spec, dict):
        spec = getattr(body, "spikelite_spec", None)
    if not isinstance(spec, dict):
        return None, ""
    return spec, ("body." if is_snn else "")


def macro_modules(model) -> list[tuple[str, str]]:
    """The removable blocks of a model, in forward order, as ``(stable_name, module_path)``.

    ``model`` is a model from :func:`create_model` (paths are relative to it), a SpikingNet made
    from one that carries its ``spikelite_spec`` (paths then start with ``body.``), a spec dict,
    or a model name (paths relative to the CNN, which are also the paths inside ``SpikingNet.body``).
    Stable names: SqueezeNet ``fire2`` ... ``fire9``; ShuffleNetV2 ``stage2_unit1`` ...
    ``stage4_unit4``; MnasNet and MixNet ``block1`` ... (every block of the library's stacks);
    xception_mini ``entry1-3``, ``middle1-3``, ``exit1-2``.
    """
    prefix = ""
    if isinstance(model, str):
        name = model
    elif isinstance(model, dict):
        name = model.get("name")
    elif isinstance(model, nn.Module):
        spec, prefix = _find_spec(model)
        if spec is None:
            raise SpikeliteError(
                f"{type(model).__name__} was not built by spikelite.models.create_model (no spikelite_spec), "
                "so its macro modules are unknown; pass the model name instead"
            )
        name = spec.get("name")
    else:
        raise SpikeliteError(f"macro_modules expects a model, a spec dict or a model name, got {type(model).__name__}")
    out = [(stable, prefix + path) for stable, path in get_entry(name).macro()]
    if isinstance(model, nn.Module):
        for stable, path in out:
            try:
                model.get_submodule(path)
            except AttributeError:
                raise SpikeliteError(
                    f"{name}: macro module {stable} should be at {path!r} but the model has no such module "
                    "(was it modified after create_model?)"
                ) from None
    return out


@dataclasses.dataclass(frozen=True)
class MacroModule:
    """A macro module with the shapes it sees on a dummy image (batch dimension left out)."""

    name: str
    path: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: int

    @property
    def shape_preserving(self) -> bool:
        """True when the block can be replaced by an identity without touching its neighbours."""
        return self.in_shape == self.out_shape


def macro_module_info(model: nn.Module, image_size: int | None = None) -> list[MacroModule]:
    """:func:`macro_modules` plus each block's input/output shape and parameter count."""
    spec, _ = _find_spec(model)
    if spec is None:
        macro_modules(model)  # raises the explanatory error
    image_size = image_size or spec["image_size"]
    pairs = macro_modules(model)
    shapes: dict[str, tuple] = {}

    def make_hook(path):
        def hook(m, inputs, out):
            shapes[path] = (tuple(inputs[0].shape[1:]), tuple(out.shape[1:]))
        return hook

    modules = {path: model.get_submodule(path) for _, path in pairs}
    dummy_forward(model, (1, spec["in_chans"], image_size, image_size),
                  {m: make_hook(path) for path, m in modules.items()})
    return [MacroModule(stable, path, *shapes[path], count_params(modules[path])) for stable, path in pairs]


# ----------------------------------------------------------------------------------------------
# parameters and MACs
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Size of a model: parameters and dense MACs of one image at ``image_size``."""

    name: str | None
    params: int
    macs: int
    image_size: int
    in_chans: int
    output_shape: tuple[int, ...]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def model_info(model: nn.Module, image_size: int | None = None, in_chans: int | None = None) -> ModelInfo:
    """Parameters and dense MACs (Conv2d + Linear, hooks on one zero image) of a CNN.

    ``image_size`` and ``in_chans`` default to the model's ``spikelite_spec``; for other models
    pass them. For a :class:`~spikelite.snn.SpikingNet` (pass ``image_size``) the hooks see time
    folded into the batch, so the figure is the dense MACs of one time step, equal to the CNN's.
    """
    spec = getattr(model, "spikelite_spec", None) or {}
    image_size = image_size or spec.get("image_size")
    in_chans = in_chans or spec.get("in_chans", 3)
    if image_size is None:
        raise SpikeliteError("model_info needs image_size for a model not built by create_model")
    image_size = _check_int("image_size", image_size)
    macs, out = count_macs(model, (1, in_chans, image_size, image_size))
    return ModelInfo(spec.get("name"), count_params(model), macs, image_size, in_chans, tuple(out.shape[1:]))


def _count_params_fast(name: str, num_classes: int, in_chans: int, width: float, kw: dict) -> int:
    # parameter counts do not depend on the image size; building on the meta device skips allocation
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, image_size=224, in_chans=in_chans, width=width, **kw)
    return count_params(model)


def fit_width(name: str, target_params: int, num_classes: int = 10, in_chans: int = 3, step: float = 0.01,
              max_width: float = 4.0, **kw) -> tuple[float, int]:
    """The width (on a grid of ``step``) whose parameter count is closest to ``target_params``.

    Returns ``(width, params)``. Parameter counts grow with width (in steps, from channel rounding),
    so a bisection finds the crossing and its grid neighbours are compared.
    """
    entry = get_entry(name)
    if not entry.has_width:
        raise SpikeliteError(f"{name} has no width multiplier to fit")
    target = _check_int("target_params", target_params)
    n_max = int(round(max_width / step))
    cache: dict[int, int] = {}

    def params(i: int) -> int:
        if i not in cache:
            cache[i] = _count_params_fast(name, num_classes, in_chans, round(i * step, 6), kw)
        return cache[i]

    lo, hi = 1, n_max  # smallest grid index with params >= target lies in [lo, hi]
    if params(hi) < target:
        return round(hi * step, 6), params(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if params(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    candidates = [i for i in range(max(1, lo - 2), min(n_max, lo + 2) + 1)]
    best = min(candidates, key=lambda i: (abs(params(i) - target), i))
    return round(best * step, 6), params(best)
