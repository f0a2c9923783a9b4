"""Removal (:func:`prune_model`, and ``create_model(..., keep=[...])`` for the architecture alone).

A module whose output has the shape of its input becomes an ``nn.Identity`` — except a
ShuffleNetV2 stride-1 unit, which becomes its own skip path, ``nn.ChannelShuffle(2)``: the unit
passes half its channels through unchanged but interleaves them with the branch output, and the
units after it expect them there. A module that changes channels or resolution is handled by one
rule per family:

- *SqueezeNet* (fire modules change channels, never resolution: the pools are separate layers):
  the fire becomes an identity and the next kept fire's ``squeeze`` conv (or the classifier conv
  when no fire follows) is rebuilt for the channel count that now reaches it, keeping the
  weights of the input channels both versions have (the first ``min(old, new)``).
- *every other family* (ShuffleNetV2, MnasNet, MixNet, xception_mini, user models): a minimal
  :class:`Projection` takes its place, a 1x1 conv with the block's stride (c_in -> c_out, no bias)
  and a BatchNorm, plus a ReLU when the block's own output is rectified (every ShuffleNetV2 unit,
  xception_mini's exit2; found by probing the block, so user models get the same rule).

The pruned model is an ordinary model: a zoo model's ``spikelite_spec`` gets ``keep`` (the macro
modules kept, in forward order), so ``create_model(**spec)`` rebuilds the pruned architecture
and its ``state_dict`` loads; a SpikingNet made from a zoo model is pruned as a SpikingNet.
With calibration data a projection is not left at random: it is fitted by least squares to
reproduce the removed block's output from the input it receives in the pruned network.
"""

from __future__ import annotations

import copy
import re
from typing import Sequence

import torch
from torch import nn

from ..errors import SpikeliteError
from ..models.surgery import resolve_modules, set_submodule
from .gates import _as_batches, _device_of, _fit_projections, _Gated
from .subject import _plans, _spec_of, _subject

# ----------------------------------------------------------------------------------------------
# Pruning
# ----------------------------------------------------------------------------------------------


def _transfer(target: nn.Module, src: dict[str, torch.Tensor]) -> None:
    """Load ``src`` into ``target`` where names match: equal shapes are copied, a conv weight whose
    input-channel count changed keeps the overlapping channels; anything else keeps its init."""
    state = target.state_dict()  # keeps its _metadata (module versions that e.g. MNASNet checks)
    new = state
    for k, v in list(state.items()):
        s = src.get(k)
        if s is None:
            continue
        if s.shape == v.shape:
            new[k] = s
        elif s.dim() == 4 and v.dim() == 4 and s.shape[0] == v.shape[0] and s.shape[2:] == v.shape[2:]:
            w = torch.zeros_like(v)
            c = min(s.shape[1], v.shape[1])
            w[:, :c] = s[:, :c]
            new[k] = w
        else:  # pragma: no cover - names never collide with other shapes
            raise SpikeliteError(f"internal error: {k} has shape {tuple(s.shape)} in the source and {tuple(v.shape)} "
                                 "in the pruned model")
    target.load_state_dict(new, strict=True)


def prune_model(model: nn.Module, keep=None, remove=None, *, modules: Sequence[str] | None = None,
                calibration=None, input_shape=None, batch_size: int = 64, seed: int = 0) -> nn.Module:
    """The model with macro modules removed (a new model; ``model`` is not touched).

    Args:
        model: a zoo CNN (``create_model``), a SpikingNet made from one, or any CNN (then name its
            blocks by module path and give ``input_shape``).
        keep: the modules to keep (names such as ``fire4``, module paths, or for SqueezeNet ``F4``);
            every other present module is removed. Or:
        remove: the modules to remove.
        modules: a user model's removable blocks (module paths); ``keep`` refers to these.
        calibration: optional data (``(x, y)`` tensors, an ImageData or ``(x, y)`` batches): each
            projection is then fitted by least squares to the removed block's output instead of
            starting from a random initialisation.
        input_shape: ``(C, H, W)`` for a user model.

    A zoo model's result carries ``spikelite_spec["keep"]``; ``create_model(**spec)`` rebuilds it.
    Removing every module, or unknown names, raises :class:`SpikeliteError`.
    """
    if (keep is None) == (remove is None):
        raise SpikeliteError("give exactly one of keep=[...] (modules to keep) or remove=[...] (modules to remove)")
    zoo = _spec_of(model) is not None
    implicit = None
    if remove is not None and modules is None and not zoo:
        implicit = [remove] if isinstance(remove, str) else list(remove)
    subj = _subject(model, None if zoo else modules, input_shape, implicit=implicit)
    scope = [n for n, _ in subj.macro]
    if zoo and modules is not None:  # keep= refers to these modules only; the others stay
        scope = resolve_modules(modules, subj.macro, subj.family, subj.label)
    present = set(subj.kept)
    tokens = keep if keep is not None else remove
    if isinstance(tokens, str):
        tokens = [t for t in re.split(r"[,\s]+", tokens) if t]
    named = set(resolve_modules(tokens, subj.macro, subj.family, subj.label))
    gone = sorted(n for n in named if n not in present)
    if gone:
        raise SpikeliteError(f"{subj.label}: {', '.join(gone)} already removed; present: {', '.join(subj.kept)}")
    if keep is not None:
        removed = [n for n, _ in subj.macro if n in present and n in set(scope) and n not in named]
    else:
        removed = [n for n, _ in subj.macro if n in named]
    new_keep = [n for n, _ in subj.macro if n in present and n not in set(removed)]
    if subj.explicit_modules and not new_keep:
        raise SpikeliteError(f"{subj.label}: removing {', '.join(removed)} would remove every macro module; keep at "
                             "least one")
    if not removed:
        return copy.deepcopy(model)
    plans, order = _plans(subj, removed)
    if calibration is not None and any(plans[n].kind == "projection" for n in removed):
        device = _device_of(model)
        batches = _as_batches(calibration, batch_size, device)
        gated = _Gated(subj, removed, plans)
        _fit_projections(gated, batches, order, progressive=True, seed=seed)
        src = gated.state_for_pruned(removed)
    else:
        src = {}
        prefix = "body." if subj.is_snn else ""
        dropped = tuple(prefix + subj.path(n) + "." for n in removed)
        src = {k: v for k, v in model.state_dict().items() if not k.startswith(dropped)}
    if subj.spec is not None:
        from ..models import create_model

        spec = {k: v for k, v in subj.spec.items() if k != "keep"}
        target = create_model(**spec, keep=new_keep)
        if subj.is_snn:
            from ..snn import respikify

            target = respikify(target, subj.snn_config)
    else:
        target = copy.deepcopy(model)
        for n in removed:
            set_submodule(target, subj.path(n), plans[n].structural())
    target.to(_device_of(model))
    _transfer(target, src)
    target.train(model.training)
    return target
