"""Module-level structured pruning: remove whole macro modules (fire modules, ShuffleNet units, ...).

The paper removes whole fire modules from spiking SqueezeNet and retrains. This module makes that a
tool for every zoo family and for user models:

* **Removal** (:func:`prune_model`, and ``create_model(..., keep=[...])`` for the architecture alone).
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

* **Importance** (:func:`module_importance`). Every candidate module ``m`` is wrapped in a gate
  ``y + a * (r(x) - y)`` where ``y`` is the block's output, ``r`` its replacement (identity,
  projection or SqueezeNet's channel adaptation, exactly what removal would leave) and ``a = 0``.
  ``dL/da`` is the first-order Taylor estimate of the loss change when ``m`` is removed,
  ``<dL/dy, r(x) - y>`` summed over the calibration set — for a shape-preserving block
  ``<dL/d(out), in - out>``. Setting ``a = 1`` gives the exact ablation (the loss and accuracy
  with ``m`` removed, before any fine-tuning). Both are reported with their Spearman rank
  correlation (:func:`spearman`). The gates also run inside a spiking network (they are ordinary
  modules that ``spikify`` converts), so SNN importance uses surrogate gradients.

* **Strategies** (:func:`run_pruning`, ``spikelite prune``): an explicit keep set, the paper's named
  SqueezeNet schedules (:data:`PAPER_SCHEDULES`), or a greedy search that removes the least
  important module, fine-tunes with the training module's loop (:func:`spikelite.train.train`)
  and evaluates accuracy, parameters and energy (:func:`spikelite.energy.measure`) until an
  accuracy-drop or energy budget is met. Every candidate lands in a table like the paper's Table 3.

See docs/pruning.md.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._io import atomic_write
from .errors import SpikeliteError
from .models.surgery import (FAMILY_RULES, ChannelAdapt, Projection, Replacement, apply_keep, probe_modules,
                             replacement_plan, resolve_modules, set_submodule)

__all__ = [
    "PAPER_SCHEDULES",
    "FAMILY_RULES",
    "Projection",
    "ChannelAdapt",
    "Replacement",
    "apply_keep",
    "prune_model",
    "removable_modules",
    "replacement_plan",
    "ModuleImportance",
    "ImportanceReport",
    "module_importance",
    "spearman",
    "parse_energy_budget",
    "PruneConfig",
    "Candidate",
    "PruneResult",
    "run_pruning",
    "greedy_search",
]

# The paper's hand-made schedules (Table 3): the fire modules each one keeps (SqueezeNet only).
PAPER_SCHEDULES: dict[str, tuple[str, ...]] = {
    "head-1": ("fire2", "fire3", "fire4", "fire5", "fire9"),
    "head-2": ("fire2", "fire3", "fire4", "fire5", "fire8"),
    "tail-1": ("fire2", "fire5", "fire6", "fire7", "fire8", "fire9"),
    "tail-2": ("fire2", "fire4", "fire6", "fire7", "fire8", "fire9"),
    "alt-1": ("fire2", "fire4", "fire6", "fire8"),
    "alt-2": ("fire3", "fire5", "fire7", "fire9"),
    "ref-1": ("fire4", "fire6", "fire8", "fire9"),
    "ref-2": ("fire2", "fire4", "fire5", "fire6", "fire8", "fire9"),
}

# ----------------------------------------------------------------------------------------------
# Which model, which modules
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Subject:
    """A model to prune or score: a zoo CNN, a SpikingNet made from one, or a user CNN."""

    model: nn.Module
    is_snn: bool
    spec: dict | None
    family: str
    macro: list[tuple[str, str]]  # (name, path relative to the CNN), forward order, removed ones included
    kept: list[str]  # names of the modules still present
    input_shape: tuple[int, ...]
    snn_config: dict | None
    explicit_modules: bool = True  # False: a user model whose module list is just what is being removed

    @property
    def label(self) -> str:
        return self.spec["name"] if self.spec else type(self.model).__name__

    def path(self, name: str) -> str:
        return dict(self.macro)[name]

    def skeleton(self) -> nn.Module:
        """A CNN with this model's current structure (zoo: fresh weights; user CNN: a copy)."""
        if self.spec is not None:
            from .models import create_model

            return create_model(**self.spec)
        return copy.deepcopy(self.model)


def _spec_of(model: nn.Module) -> dict | None:
    spec = getattr(model, "spikelite_spec", None)
    if not isinstance(spec, dict):
        body = getattr(model, "body", None)
        spec = getattr(body, "spikelite_spec", None) if body is not None else None
    return spec if isinstance(spec, dict) and spec.get("name") else None


def _check_paths(model: nn.Module, paths: Sequence[str], what: str) -> None:
    bad = []
    for p in paths:
        if not isinstance(p, str) or not p:
            raise SpikeliteError(f"{what}: module names must be non-empty strings, got {p!r}")
        try:
            model.get_submodule(p)
        except AttributeError:
            bad.append(p)
    if bad:
        children = [n for n, _ in model.named_children()]
        raise SpikeliteError(f"{type(model).__name__} has no module(s) {', '.join(bad)}; its top-level modules are: "
                             f"{', '.join(children) or '(none)'} (give dotted paths such as 'layer1.0')")
    for a in paths:
        for b in paths:
            if a != b and b.startswith(a + "."):
                raise SpikeliteError(f"module {b!r} lies inside {a!r}: give blocks that do not nest")


def _subject(model: nn.Module, modules: Sequence[str] | None = None, input_shape=None,
             implicit: Sequence[str] | None = None) -> _Subject:
    from .snn import SpikingNet

    if not isinstance(model, nn.Module):
        raise SpikeliteError(f"expected a model (nn.Module), got {type(model).__name__}")
    is_snn = isinstance(model, SpikingNet)
    spec = _spec_of(model)
    snn_config = None
    if is_snn:
        snn_config = model.config()
        if snn_config.get("neuron") is None:
            raise SpikeliteError("this SpikingNet's neurons have no config() (a custom neuron factory), so its pruned "
                                 "version cannot be rebuilt; use a neuron dict with spikify")
    if spec is not None:
        from .models import get_entry, macro_modules

        family = get_entry(spec["name"]).family
        macro = macro_modules(spec["name"])
        names = [n for n, _ in macro]
        kept = list(spec.get("keep") or names)
        unknown = [k for k in kept if k not in names]
        if unknown:
            raise SpikeliteError(f"{spec['name']}: spec keeps unknown module(s) {', '.join(unknown)}")
        kept = [n for n in names if n in set(kept)]
        if modules is not None:
            chosen = resolve_modules(modules, macro, family, spec["name"])
            macro = [(n, p) for n, p in macro if n in set(chosen)]
        return _Subject(model, is_snn, copy.deepcopy(spec), family, macro, kept,
                        (int(spec["in_chans"]), int(spec["image_size"]), int(spec["image_size"])), snn_config)
    if is_snn:
        raise SpikeliteError("this SpikingNet was not made from a spikelite zoo model (no spikelite_spec), so it "
                             "cannot be rebuilt without the pruned modules; prune the CNN, then spikify it")
    if input_shape is None:
        raise SpikeliteError(f"{type(model).__name__} was not built by spikelite.models.create_model: pass "
                             "input_shape=(C, H, W) so the shapes of its modules can be found")
    input_shape = tuple(int(s) for s in input_shape)
    explicit = modules is not None
    paths = list(modules) if explicit else list(implicit or [])
    if not paths:
        raise SpikeliteError(f"{type(model).__name__} has no removable modules: it is not a zoo model, so name its "
                             "blocks (modules=[...] or the modules to remove, as dotted paths)")
    paths = list(dict.fromkeys(paths))
    _check_paths(model, paths, type(model).__name__)
    return _Subject(model, False, None, "custom", [(p, p) for p in paths], list(paths), input_shape, None,
                    explicit_modules=explicit)


def removable_modules(model: nn.Module) -> list[tuple[str, str]]:
    """``(name, path)`` of the macro modules still present in a zoo model (or a SpikingNet made from
    one), in forward order; paths are relative to the model (``body.`` for a SpikingNet)."""
    subj = _subject(model)
    prefix = "body." if subj.is_snn else ""
    kept = set(subj.kept)
    return [(n, prefix + p) for n, p in subj.macro if n in kept]


def _plans(subj: _Subject, names: Sequence[str]) -> tuple[dict[str, Replacement], list[str]]:
    """Replacement plans for ``names`` on the subject's current structure, and the names in forward order."""
    cnn = subj.skeleton() if subj.spec is not None else subj.model
    paths = [subj.path(n) for n in names]
    probes = probe_modules(cnn, paths, subj.input_shape)
    plans = {n: replacement_plan(subj.family, probes[subj.path(n)], n) for n in names}
    order = sorted(names, key=lambda n: probes[subj.path(n)].order)
    return plans, order


# ----------------------------------------------------------------------------------------------
# Gates: the block or its replacement, blended by a scalar
# ----------------------------------------------------------------------------------------------


class _Tap(nn.Identity):
    """Passes its input through and hands it to ``sink`` when one is set. An ``nn.Identity`` subclass
    so that ``spikify``'s tracer keeps it as one call (and runs this code inside a SpikingNet)."""

    def __init__(self):
        super().__init__()
        self.sink: Callable[[torch.Tensor], None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sink is not None:
            self.sink(x)
        return x

    def __deepcopy__(self, memo):
        new = _Tap()
        memo[id(self)] = new
        return new


class _Mix(nn.Identity):
    """``y + alpha * (r - y)`` with a learnable scalar ``alpha`` (0 at creation). A leaf for
    ``spikify``'s tracer, so ``alpha`` meets the two time-folded tensors inside one call instead of
    being broadcast over time as a separate static tensor. (spikify's compact spike storage may tag
    its output as binary; that tag only changes how tensors saved for weight gradients are stored,
    and the gated copies this module lives in never compute weight gradients.)"""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return y + self.alpha * (r - y)


class _Gate(nn.Module):
    """``mix(block(x), replacement(x))``: alpha 0 is the model, 1 the model with the block removed;
    ``dL/dalpha`` at 0 is the Taylor estimate of the loss change."""

    def __init__(self, block: nn.Module, repl: nn.Module):
        super().__init__()
        self.block = block
        self.repl = repl
        self.mix = _Mix()
        self.tap_in = _Tap()
        self.tap_out = _Tap()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tap_in(x)
        y = self.tap_out(self.block(x))
        return self.mix(y, self.repl(x))


@dataclasses.dataclass
class _Handle:
    alpha: nn.Parameter
    tap_in: _Tap
    tap_out: _Tap
    repl: nn.Module | None


class _Gated:
    """A copy of the subject with gates around ``names`` (a SpikingNet for an SNN subject)."""

    def __init__(self, subj: _Subject, names: Sequence[str], plans: dict[str, Replacement]):
        self.subj = subj
        self.names = list(names)
        self.plans = plans
        if subj.is_snn:
            cnn = subj.skeleton()
        else:
            cnn = copy.deepcopy(subj.model)
        for n in self.names:
            path = subj.path(n)
            set_submodule(cnn, path, _Gate(cnn.get_submodule(path), plans[n].functional()))
        prefix = ""
        if subj.is_snn:
            from .snn import respikify

            net = respikify(cnn, subj.snn_config)
            prefix = "body."
            self._load(net, subj.model.state_dict(), prefix)
            net.to(_device_of(subj.model))
        else:
            net = cnn
        self.net = net
        self.prefix = prefix
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        root = net.body if subj.is_snn else net
        self.handles: dict[str, _Handle] = {}
        for n in self.names:
            path = subj.path(n)
            try:
                repl = root.get_submodule(f"{path}.repl")
            except AttributeError:  # a parameter-free replacement traced away by spikify
                repl = None
            h = _Handle(root.get_parameter(f"{path}.mix.alpha"), root.get_submodule(f"{path}.tap_in"),
                        root.get_submodule(f"{path}.tap_out"), repl)
            h.alpha.requires_grad_(True)
            self.handles[n] = h

    def _load(self, net: nn.Module, src: dict, prefix: str) -> None:
        gated = [prefix + self.subj.path(n) + "." for n in self.names]
        mapped = {}
        for k, v in src.items():
            for g in gated:
                if k.startswith(g):
                    k = g + "block." + k[len(g):]
                    break
            mapped[k] = v
        missing, unexpected = net.load_state_dict(mapped, strict=False)
        bad = [k for k in missing if not any(k.startswith(g) and (k == g + "mix.alpha" or k.startswith(g + "repl."))
                                             for g in gated)]
        if bad or unexpected:  # pragma: no cover - the rebuilt structure always matches the spec
            raise SpikeliteError(f"internal error: the gated copy of {self.subj.label} does not match its weights "
                                 f"(missing {bad[:4]}, unexpected {list(unexpected)[:4]})")

    def set_alpha(self, values: dict[str, float]) -> None:
        with torch.no_grad():
            for n, v in values.items():
                self.handles[n].alpha.fill_(float(v))

    def clear_sinks(self) -> None:
        for h in self.handles.values():
            h.tap_in.sink = None
            h.tap_out.sink = None

    def state_for_pruned(self, removed: Sequence[str]) -> dict[str, torch.Tensor]:
        """The gated model's weights named as in the pruned model (gate -> replacement or block)."""
        removed = set(removed)
        out = {}
        gates = {self.prefix + self.subj.path(n) + ".": n for n in self.names}
        for k, v in self.net.state_dict().items():
            for g, n in gates.items():
                if k.startswith(g):
                    rest = k[len(g):]
                    if rest == "mix.alpha":
                        k = None
                    elif n in removed:
                        k = g + rest[len("repl."):] if rest.startswith("repl.") else None
                    else:
                        k = g + rest[len("block."):] if rest.startswith("block.") else None
                    break
            if k is not None:
                out[k] = v
        return out


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# Least-squares projections
# ----------------------------------------------------------------------------------------------


class _LeastSquares:
    """Accumulates X^T X and X^T Y for a 1x1 projection (stride s) from a block's input X to its output Y."""

    def __init__(self, plan: Replacement):
        self.cin, self.cout, self.stride = plan.in_shape[0], plan.out_shape[0], plan.stride
        self.A = torch.zeros(self.cin + 1, self.cin + 1, dtype=torch.float64)
        self.B = torch.zeros(self.cin + 1, self.cout, dtype=torch.float64)
        self.x: torch.Tensor | None = None

    def take_input(self, x: torch.Tensor) -> None:
        self.x = x.detach()

    def take_output(self, y: torch.Tensor) -> None:
        x, s = self.x, self.stride
        self.x = None
        y = y.detach()
        if x is None:  # pragma: no cover - the gate always taps its input first
            return
        if x.shape[0] != y.shape[0] and y.shape[0] % x.shape[0] == 0:  # a static input meeting time
            reps = y.shape[0] // x.shape[0]
            x = x.unsqueeze(0).expand(reps, *x.shape).flatten(0, 1)
        x = x[:, :, ::s, ::s]
        if x.shape[2:] != y.shape[2:]:  # pragma: no cover - checked by replacement_plan
            raise SpikeliteError(f"projection fit: strided input {tuple(x.shape)} does not match output "
                                 f"{tuple(y.shape)}")
        X = x.permute(0, 2, 3, 1).reshape(-1, self.cin).to("cpu", torch.float64)
        X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=torch.float64)], 1)
        Y = y.permute(0, 2, 3, 1).reshape(-1, self.cout).to("cpu", torch.float64)
        self.A += X.T @ X
        self.B += X.T @ Y

    def apply(self, proj: nn.Module) -> None:
        """Set ``proj`` (conv + BatchNorm) so that, in eval mode, it computes the ridge fit ``W x + b``."""
        c, A = self.cin, self.A
        n = float(A[c, c])
        if n <= 0:  # pragma: no cover - no data seen
            return
        reg = A.clone()
        lam = 1e-3 * float(torch.diagonal(A)[:c].mean()) + 1e-9
        reg[:c, :c] += lam * torch.eye(c, dtype=torch.float64)
        W = torch.linalg.solve(reg, self.B)
        Wx, b = W[:c], W[c]
        mu = A[:c, c] / n
        cov = A[:c, :c] / n - torch.outer(mu, mu)
        mean_z = mu @ Wx
        var_z = ((cov @ Wx) * Wx).sum(0).clamp_min(0.0)
        conv, bn = proj.get_submodule("conv"), proj.get_submodule("bn")
        with torch.no_grad():
            conv.weight.copy_(Wx.T.reshape(self.cout, c, 1, 1).to(conv.weight))
            bn.running_mean.copy_(mean_z.to(bn.running_mean))
            bn.running_var.copy_(var_z.to(bn.running_var))
            bn.weight.copy_(torch.sqrt(var_z + bn.eps).to(bn.weight))
            bn.bias.copy_((mean_z + b).to(bn.bias))


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def _as_batches(data, batch_size: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Calibration data as a list of ``(x, y)`` batches on ``device``: ``(x, y)`` tensors, an
    ImageData (un-augmented, normalised) or an iterable of ``(x, y)`` batches."""
    from .data import BatchLoader, ImageData

    out = []
    if isinstance(data, ImageData):
        for x, y in BatchLoader(data, batch_size, shuffle=False, augment=None, device=device):
            out.append((x, y))
    elif isinstance(data, torch.Tensor):
        for i in range(0, data.shape[0], batch_size):
            out.append((data[i:i + batch_size].to(device), None))
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data) \
            and data[0].dim() >= 2 and data[1].dim() == 1 and data[0].shape[0] == data[1].shape[0]:
        x, y = data
        for i in range(0, x.shape[0], batch_size):
            out.append((x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)))
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, dict)):
        for k, item in enumerate(data):
            if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor):
                out.append((item[0].to(device), None if item[1] is None else item[1].to(device)))
            else:
                raise SpikeliteError(f"calibration batch {k} is a {type(item).__name__}; expected (x, y)")
    else:
        raise SpikeliteError("calibration data must be (x, y) tensors, an ImageData or an iterable of (x, y) "
                             f"batches; got {type(data).__name__}")
    if not out or sum(int(x.shape[0]) for x, _ in out) == 0:
        raise SpikeliteError("calibration data holds no samples")
    return out


def _run(net: nn.Module, batches, seed: int, *, grad: bool = False,
         need_labels: bool = True) -> tuple[float, float, int]:
    """Mean cross-entropy, accuracy and sample count over ``batches`` (eval mode). With ``grad`` the
    gradient of the mean loss is accumulated (into the gates' alphas)."""
    total = sum(int(x.shape[0]) for x, _ in batches)
    loss_sum, correct = 0.0, 0
    devices = [d for d in {x.device for x, _ in batches} if d.type == "cuda"]
    with torch.random.fork_rng(devices=devices):
        for k, (x, y) in enumerate(batches):
            torch.manual_seed(seed * 1_000_003 + k)  # the same spike draws (rate encoding) in every pass
            if y is None:
                if need_labels:
                    raise SpikeliteError("importance needs labelled calibration data: (x, y) batches")
                with torch.no_grad():
                    net(x)
                continue
            with torch.set_grad_enabled(grad):
                out = net(x).float()
                loss = F.cross_entropy(out, y, reduction="sum")
                if grad:
                    (loss / total).backward()
            loss_sum += float(loss.detach())
            correct += int((out.detach().argmax(1) == y).sum())
    return loss_sum / total, correct / total, total


def _fit_projections(gated: _Gated, batches, order: Sequence[str], progressive: bool, seed: int) -> list[str]:
    """Fit every projection replacement by least squares; returns the names fitted.

    ``progressive`` (pruning): in forward order, with every earlier removed module already replaced
    (alpha 1), so each projection is fitted on the input it will see in the pruned network; one pass
    per projection. Otherwise (importance) all at once on the unmodified model.
    """
    proj = [n for n in order if gated.plans[n].kind == "projection"]
    if not proj:
        return []
    if progressive:
        gated.set_alpha({n: 1.0 for n in order if gated.plans[n].kind != "projection"})
        groups = [[n] for n in proj]
    else:
        groups = [proj]
    for group in groups:
        fits = {n: _LeastSquares(gated.plans[n]) for n in group}
        for n, ls in fits.items():
            gated.handles[n].tap_in.sink = ls.take_input
            gated.handles[n].tap_out.sink = ls.take_output
        try:
            _run(gated.net, batches, seed, need_labels=False)
        finally:
            gated.clear_sinks()
        for n, ls in fits.items():
            ls.apply(gated.handles[n].repl)
            if progressive:
                gated.set_alpha({n: 1.0})
    return proj


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
        from .models import create_model

        spec = {k: v for k, v in subj.spec.items() if k != "keep"}
        target = create_model(**spec, keep=new_keep)
        if subj.is_snn:
            from .snn import respikify

            target = respikify(target, subj.snn_config)
    else:
        target = copy.deepcopy(model)
        for n in removed:
            set_submodule(target, subj.path(n), plans[n].structural())
    target.to(_device_of(model))
    _transfer(target, src)
    target.train(model.training)
    return target


# ----------------------------------------------------------------------------------------------
# Importance
# ----------------------------------------------------------------------------------------------


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties); None when
    it is undefined (fewer than 2 values, or one sequence constant)."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) != len(b):
        raise SpikeliteError(f"spearman: sequences of different length ({len(a)} and {len(b)})")
    n = len(a)
    if n < 2:
        return None

    def ranks(v):
        order = sorted(range(n), key=lambda i: v[i])
        r = [0.0] * n
        i = 0
        while i < n:
            j = i
            while j + 1 < n and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2.0 + 1.0
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)


@dataclasses.dataclass
class ModuleImportance:
    """One module's importance. ``taylor``: first-order estimate of the mean-loss change when the
    module is removed (before fine-tuning); ``ablation_loss``/``ablation_accuracy``: the measured
    change (accuracy in points). Larger = more important."""

    name: str
    path: str
    replacement: str
    params: int
    taylor: float
    ablation_loss: float | None = None
    ablation_accuracy: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ImportanceReport:
    """What :func:`module_importance` found on the calibration data."""

    model: str
    kind: str
    samples: int
    base_loss: float
    base_accuracy: float
    modules: list[ModuleImportance]
    spearman: float | None  # Taylor vs ablation loss change
    spearman_accuracy: float | None  # Taylor vs ablation accuracy drop
    fitted_projections: list[str]
    taylor_seconds: float
    ablation_seconds: float | None

    def ranking(self, by: str = "taylor") -> list[str]:
        """Module names, least important first."""
        if by == "taylor":
            key = lambda m: m.taylor  # noqa: E731
        elif by == "ablation":
            if any(m.ablation_loss is None for m in self.modules):
                raise SpikeliteError("no ablation was run; rank by taylor or run module_importance(method='both')")
            key = lambda m: m.ablation_loss  # noqa: E731
        else:
            raise SpikeliteError(f"rank by 'taylor' or 'ablation', got {by!r}")
        return [m.name for m in sorted(self.modules, key=key)]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ranking_taylor"] = self.ranking("taylor")
        if self.ablation_seconds is not None:
            d["ranking_ablation"] = self.ranking("ablation")
        return d

    def table(self) -> str:
        """A Markdown table, one row per module in forward order."""
        abl = self.ablation_seconds is not None
        rank_t = {n: i + 1 for i, n in enumerate(self.ranking("taylor"))}
        rank_a = {n: i + 1 for i, n in enumerate(self.ranking("ablation"))} if abl else {}
        head = ["module", "replacement", "params", "Taylor ΔL", "rank"]
        if abl:
            head += ["ablation ΔL", "ablation Δacc (pts)", "rank"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
        for m in self.modules:
            row = [m.name, m.replacement, f"{m.params:,}", f"{m.taylor:+.4f}", str(rank_t[m.name])]
            if abl:
                row += [f"{m.ablation_loss:+.4f}", f"{m.ablation_accuracy:+.2f}", str(rank_a[m.name])]
            lines.append("| " + " | ".join(row) + " |")
        tail = (f"\nBase: loss {self.base_loss:.4f}, accuracy {100 * self.base_accuracy:.2f}% on {self.samples} "
                f"calibration images ({self.kind}).")
        if abl:
            rho = "n/a" if self.spearman is None else f"{self.spearman:+.3f}"
            rho_a = "n/a" if self.spearman_accuracy is None else f"{self.spearman_accuracy:+.3f}"
            tail += (f" Spearman rank correlation, Taylor vs ablation: {rho} (loss), {rho_a} (accuracy drop). "
                     f"Taylor {self.taylor_seconds:.2f} s, ablation {self.ablation_seconds:.2f} s.")
        return "\n".join(lines) + "\n" + tail


def module_importance(model: nn.Module, data, *, modules: Sequence[str] | None = None, method: str = "both",
                      batch_size: int = 64, input_shape=None, fit: bool = True, seed: int = 0) -> ImportanceReport:
    """Taylor and (optionally) exact-ablation importance of every present macro module.

    Args:
        model: a zoo CNN, a SpikingNet made from one, or a user CNN (``modules`` + ``input_shape``).
        data: labelled calibration data: ``(x, y)`` tensors, an ImageData, or ``(x, y)`` batches.
        modules: score only these (names or paths); default every present macro module.
        method: ``"taylor"`` (one forward + backward over the data) or ``"both"`` (plus one forward
            pass per module with that module removed).
        fit: fit projection replacements by least squares first (otherwise they stay random).
        seed: seeds rate-encoding draws so every pass sees the same spikes.

    Runs in eval mode (BatchNorm running statistics, no dropout) on the model's device.
    """
    if method not in ("taylor", "both"):
        raise SpikeliteError(f"method must be 'taylor' or 'both', got {method!r}")
    subj = _subject(model, modules, input_shape)
    names = [n for n, _ in subj.macro if n in set(subj.kept)]
    if not names:
        raise SpikeliteError(f"{subj.label}: no macro module left to score")
    plans, order = _plans(subj, names)
    device = _device_of(model)
    batches = _as_batches(data, batch_size, device)
    gated = _Gated(subj, names, plans)
    fitted = _fit_projections(gated, batches, order, progressive=False, seed=seed) if fit else []
    t0 = time.perf_counter()
    base_loss, base_acc, n = _run(gated.net, batches, seed, grad=True)
    taylor = {k: float(h.alpha.grad) if h.alpha.grad is not None else 0.0 for k, h in gated.handles.items()}
    t_taylor = time.perf_counter() - t0
    abl_loss: dict[str, float] = {}
    abl_acc: dict[str, float] = {}
    t_abl = None
    if method == "both":
        t0 = time.perf_counter()
        for k in names:
            gated.set_alpha({k: 1.0})
            loss, acc, _ = _run(gated.net, batches, seed)
            gated.set_alpha({k: 0.0})
            abl_loss[k] = loss - base_loss
            abl_acc[k] = 100.0 * (acc - base_acc)
        t_abl = time.perf_counter() - t0
    cnn = subj.skeleton() if subj.is_snn else model
    mods = []
    for k in names:
        block = cnn.get_submodule(subj.path(k))
        mods.append(ModuleImportance(k, subj.path(k), plans[k].describe(), sum(p.numel() for p in block.parameters()),
                                     taylor[k], abl_loss.get(k), abl_acc.get(k)))
    rho = rho_a = None
    if method == "both":
        rho = spearman([m.taylor for m in mods], [m.ablation_loss for m in mods])
        rho_a = spearman([m.taylor for m in mods], [-m.ablation_accuracy for m in mods])
    return ImportanceReport(subj.label, "snn" if subj.is_snn else "cnn", n, base_loss, base_acc, mods, rho, rho_a,
                            fitted, t_taylor, t_abl)


# ----------------------------------------------------------------------------------------------
# Strategies: candidates, fine-tuning, evaluation
# ----------------------------------------------------------------------------------------------


def parse_energy_budget(value) -> tuple[str, float]:
    """``("fraction", f)`` for ``0.6`` or ``"60%"`` (of the unpruned model's energy), ``("mj", e)`` for
    ``"0.12mJ"`` or ``"120uJ"`` (absolute, per image)."""
    if isinstance(value, bool):
        raise SpikeliteError(f"energy budget must be a fraction (0.6, 60%) or an energy (0.12mJ), got {value!r}")
    if isinstance(value, (int, float)):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
    else:
        raise SpikeliteError(f"energy budget must be a fraction (0.6, 60%) or an energy (0.12mJ), got {value!r}")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(%|mj|uj|µj|nj)?", text, re.IGNORECASE)
    if not m:
        raise SpikeliteError(f"cannot read energy budget {value!r}: write a fraction of the unpruned model's energy "
                             "(0.6 or 60%) or an energy per image (0.12mJ, 120uJ)")
    x, unit = float(m.group(1)), (m.group(2) or "").lower()
    if unit == "%":
        x /= 100.0
        unit = ""
    if unit == "":
        if not 0 < x <= 1:
            raise SpikeliteError(f"energy budget {value!r} as a fraction must be in (0, 1]; for an absolute budget add "
                                 "a unit (e.g. 0.12mJ)")
        return "fraction", x
    if x <= 0:
        raise SpikeliteError(f"energy budget {value!r} must be positive")
    return "mj", x * {"mj": 1.0, "uj": 1e-3, "µj": 1e-3, "nj": 1e-6}[unit]


STRATEGIES = ("keep", "paper", "greedy", "importance", *PAPER_SCHEDULES)


@dataclasses.dataclass
class PruneConfig:
    """Settings of :func:`run_pruning` (``spikelite prune``)."""

    strategy: str = "greedy"  # keep | paper | greedy | importance | head-1 ... ref-2
    keep: list[str] | None = None  # strategy keep: the modules to keep (or:)
    remove: list[str] | None = None  # strategy keep: the modules to remove
    max_drop: float | None = None  # greedy: largest accepted accuracy drop (points) from the unpruned model
    energy_budget: Any = None  # greedy: stop once energy <= budget (fraction like 0.6 / "60%", or "0.12mJ")
    finetune_epochs: int = 1  # fine-tuning epochs per candidate (0: evaluate as pruned)
    rank_by: str = "ablation"  # greedy: ablation | taylor (docs/pruning.md: Taylor misranks plain chains)
    ablation: bool = True  # also run the exact ablation in the importance report
    candidates_per_step: int = 1  # greedy: try this many of the least important modules per step, keep the best
    calibration_size: int = 256  # training images (un-augmented) for importance and projection fits
    energy_samples: int = 64  # validation images for the energy measurement
    profile: str = "45nm-fp32"  # energy profile
    overrides: list[str] = dataclasses.field(default_factory=list)  # fine-tuning recipe keys, "optim.lr=0.01"
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    eval_batch_size: int = 256
    val_subset: int | None = None  # evaluate candidates on a stratified subset of the validation split
    quiet: bool = False

    def __post_init__(self):
        self.strategy = str(self.strategy).lower()
        if self.strategy not in STRATEGIES:
            raise SpikeliteError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.keep is not None and self.remove is not None:
            raise SpikeliteError("give --keep or --remove, not both")
        if self.strategy == "keep" and self.keep is None and self.remove is None:
            raise SpikeliteError("strategy keep needs --keep a,b,... (the modules to keep) or --remove a,b,...")
        if self.strategy != "keep" and (self.keep is not None or self.remove is not None):
            raise SpikeliteError(f"--keep/--remove go with --strategy keep, not {self.strategy}")
        if self.max_drop is not None and not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise SpikeliteError(f"max_drop must be >= 0 accuracy points, got {self.max_drop}")
        if self.energy_budget is not None:
            parse_energy_budget(self.energy_budget)
        if self.strategy == "greedy" and self.max_drop is None and self.energy_budget is None:
            raise SpikeliteError("greedy needs a stopping rule: --max-drop POINTS and/or --energy-budget "
                                 "(0.6, 60% or 0.12mJ)")
        if self.strategy != "greedy" and (self.max_drop is not None or self.energy_budget is not None):
            raise SpikeliteError("--max-drop and --energy-budget apply to --strategy greedy")
        for key, minimum in (("finetune_epochs", 0), ("candidates_per_step", 1), ("calibration_size", 1),
                             ("energy_samples", 1), ("eval_batch_size", 1), ("seed", 0)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise SpikeliteError(f"{key} must be an integer >= {minimum}, got {v!r}")
        if self.rank_by not in ("taylor", "ablation"):
            raise SpikeliteError(f"rank_by must be taylor or ablation, got {self.rank_by!r}")
        if self.threads is not None and self.threads < 1:
            raise SpikeliteError(f"threads must be >= 1, got {self.threads}")
        if self.val_subset is not None and self.val_subset < 1:
            raise SpikeliteError(f"val_subset must be >= 1, got {self.val_subset}")
        from .energy import get_profile

        get_profile(self.profile)


@dataclasses.dataclass
class Candidate:
    """One pruned model tried: a row of the Table-3-like report."""

    label: str
    kept: list[str]
    removed: list[str]
    accuracy: float | None  # validation accuracy after fine-tuning (fraction)
    accuracy_pruned: float | None  # validation accuracy right after removal, before fine-tuning
    params: int
    dense_macs: int
    energy_mj: float | None
    acs: float | None
    macs: float | None
    finetune_seconds: float
    status: str = ""
    checkpoint: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PruneResult:
    """What :func:`run_pruning` did: the unpruned baseline, every candidate and the one chosen."""

    source: str
    model: str
    kind: str
    family: str
    rule: str
    strategy: str
    baseline: Candidate
    candidates: list[Candidate]
    chosen: Candidate | None
    importance: ImportanceReport | None
    steps: list[dict]
    stop_reason: str
    output: str | None
    files: dict[str, str]
    seconds: float

    def to_dict(self) -> dict:
        return {
            "source": self.source, "model": self.model, "kind": self.kind, "family": self.family, "rule": self.rule,
            "strategy": self.strategy, "baseline": self.baseline.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "chosen": None if self.chosen is None else self.chosen.to_dict(),
            "importance": None if self.importance is None else self.importance.to_dict(),
            "steps": self.steps, "stop_reason": self.stop_reason, "output": self.output, "files": self.files,
            "seconds": self.seconds,
        }


def _short(names: Sequence[str], family: str) -> str:
    if family == "squeezenet":
        return ", ".join("F" + n[len("fire"):] for n in names)
    return ", ".join(names)


def _kept_cell(kept: Sequence[str], removed: Sequence[str], family: str) -> str:
    """The kept modules, or "all but ..." when fewer were removed than kept (long families)."""
    if family != "squeezenet" and removed and len(removed) < len(kept):
        return "all but " + _short(removed, family)
    if not removed and family != "squeezenet":
        return f"all {len(kept)}"
    return _short(kept, family)


def _fmt_int(n) -> str:
    return "-" if n is None else f"{n:,}"


def _pct(new, old) -> str:
    if new is None or old in (None, 0):
        return "-"
    return f"{100.0 * (new - old) / old:+.1f}%"


def candidate_table(result: PruneResult, fmt: str = "markdown") -> str:
    """The paper's Table 3 for every candidate tried: modules kept, accuracy, params, energy."""
    base = result.baseline
    rows = [base] + result.candidates
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["candidate", "kept", "removed", "accuracy", "accuracy_pruned", "accuracy_change_points", "params",
                    "params_change", "dense_macs", "acs", "macs", "energy_mj", "energy_change", "finetune_seconds",
                    "status", "checkpoint"])
        for c in rows:
            w.writerow([c.label, " ".join(c.kept), " ".join(c.removed), _g(c.accuracy), _g(c.accuracy_pruned),
                        _g(None if c.accuracy is None or base.accuracy is None else 100 * (c.accuracy - base.accuracy)),
                        c.params, _g((c.params - base.params) / base.params), c.dense_macs, _g(c.acs), _g(c.macs),
                        _g(c.energy_mj), _g(None if c.energy_mj is None or not base.energy_mj
                                            else (c.energy_mj - base.energy_mj) / base.energy_mj),
                        f"{c.finetune_seconds:.2f}", c.status, c.checkpoint or ""])
        return buf.getvalue()
    head = ["candidate", "modules kept", "acc. (%)", "Δacc (pts)", "acc. before FT (%)", "params", "Δparams",
            "dense MACs", "ACs", "MACs", "energy (mJ)", "Δenergy", "status"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "|".join(["---:"] * (len(head) - 3)) + "|---|"]
    for c in rows:
        acc = "-" if c.accuracy is None else f"{100 * c.accuracy:.2f}"
        dacc = "-" if c.accuracy is None or base.accuracy is None else f"{100 * (c.accuracy - base.accuracy):+.2f}"
        accp = "-" if c.accuracy_pruned is None else f"{100 * c.accuracy_pruned:.2f}"
        energy = "-" if c.energy_mj is None else f"{c.energy_mj:.4g}"
        lines.append("| " + " | ".join([
            c.label, _kept_cell(c.kept, c.removed, result.family), acc, dacc, accp, _fmt_int(c.params),
            _pct(c.params, base.params), _fmt_int(c.dense_macs), "-" if c.acs is None else f"{c.acs:,.0f}",
            "-" if c.macs is None else f"{c.macs:,.0f}",
            energy, _pct(c.energy_mj, base.energy_mj), c.status or ""]) + " |")
    return "\n".join(lines) + "\n"


def _g(v) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def greedy_search(baseline: Candidate, base_model: nn.Module, *, rank: Callable[[nn.Module], list[str]],
                  try_remove: Callable[[nn.Module, Candidate, str, int], tuple[nn.Module, Candidate]],
                  max_drop: float | None, energy_budget_mj: float | None, candidates_per_step: int = 1,
                  log: Callable[[str], None] = lambda s: None,
                  ) -> tuple[list[Candidate], Candidate, nn.Module, list[dict], str]:
    """Remove one module per step, least important first, while the constraints allow.

    ``rank(model)`` lists the present modules least important first; ``try_remove(model, current,
    name, step)`` returns the pruned, fine-tuned and evaluated candidate. Each step tries the first
    ``candidates_per_step`` modules of the ranking; a candidate whose accuracy is more than
    ``max_drop`` points below ``baseline``'s is rejected, and of the others the most accurate one
    (then the one with less energy) is kept. The search stops when a step keeps nothing, when the
    energy is within ``energy_budget_mj``, or when one module is left. Returns (every candidate
    tried, the last one kept, its model, per-step rankings, the stop reason).
    """
    current, model = baseline, base_model
    tried: list[Candidate] = []
    steps: list[dict] = []
    step = 0
    while True:
        if energy_budget_mj is not None and current.energy_mj is not None and current.energy_mj <= energy_budget_mj:
            return tried, current, model, steps, (f"energy budget met: {current.energy_mj:.4g} mJ <= "
                                                  f"{energy_budget_mj:.4g} mJ")
        if len(current.kept) <= 1:
            return tried, current, model, steps, f"one module left ({current.kept[0]}): nothing more to remove"
        step += 1
        order = rank(model)
        steps.append({"step": step, "present": list(current.kept), "ranking": order})
        ok: list[tuple[nn.Module, Candidate]] = []
        for name in order[:candidates_per_step]:
            cand_model, cand = try_remove(model, current, name, step)
            tried.append(cand)
            drop = None if cand.accuracy is None or baseline.accuracy is None else \
                100.0 * (baseline.accuracy - cand.accuracy)
            if max_drop is not None and drop is not None and drop > max_drop:
                cand.status = f"rejected: drop {drop:.2f} > {max_drop:g} pts"
                log(f"  step {step}: removing {name} drops accuracy by {drop:.2f} points (> {max_drop:g}): rejected")
                continue
            cand.status = "within limit"
            ok.append((cand_model, cand))
        if not ok:
            return tried, current, model, steps, (f"accuracy-drop limit {max_drop:g} pts reached: no removal among "
                                                  f"{', '.join(order[:candidates_per_step])} stays within it")
        model, current = max(ok, key=lambda mc: (mc[1].accuracy if mc[1].accuracy is not None else -1.0,
                                                 -(mc[1].energy_mj or 0.0)))
        current.status = "accepted"


def _load_data(meta: dict, data_root: str | None, dataset: str | None, cfg: PruneConfig):
    from .data import load_split, stratified_split

    info = meta.get("data") or {}
    name = dataset or info.get("dataset")
    if not name:
        raise SpikeliteError("the checkpoint does not name its dataset; pass --dataset")
    root = data_root if data_root is not None else (None if dataset and dataset != info.get("dataset")
                                                    else info.get("root"))
    if name == "digits":
        root = None
    elif root is None:
        raise SpikeliteError(f"where is {name}? pass --data DIR (the checkpoint records no dataset folder)")
    elif not Path(root).expanduser().exists():
        raise SpikeliteError(f"--data {root!r} does not exist")
    spec = meta["model_spec"]
    kw = dict(val_size=info.get("val_size"), seed=int(info.get("split_seed") or 0),
              image_size=info.get("image_size") or spec.get("image_size"),
              channels=info.get("in_chans") or spec.get("in_chans"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_data = load_split(name, root, "train", **kw)
        val_data = load_split(name, root, "val", **kw)
    if info.get("mean") and info.get("std"):  # normalise exactly as in training
        train_data = dataclasses.replace(train_data, mean=tuple(info["mean"]), std=tuple(info["std"]))
        val_data = dataclasses.replace(val_data, mean=tuple(info["mean"]), std=tuple(info["std"]))
    if train_data.num_classes != spec.get("num_classes"):
        raise SpikeliteError(f"{train_data.name} has {train_data.num_classes} classes but the checkpoint's model has "
                             f"{spec.get('num_classes')}: wrong dataset for this checkpoint")
    if info.get("classes") is not None and list(info["classes"]) != list(train_data.classes):
        raise SpikeliteError(f"the classes of {train_data.name} differ from the checkpoint's")
    if cfg.val_subset is not None and cfg.val_subset < len(val_data):
        _, idx = stratified_split(val_data.labels, cfg.val_subset, cfg.seed)
        val_data = val_data.subset(idx)
    n_cal = min(cfg.calibration_size, len(train_data))
    if n_cal < len(train_data):
        _, idx = stratified_split(train_data.labels, n_cal, cfg.seed)
        cal = train_data.subset(idx)
    else:
        cal = train_data
    return name, root, val_data, cal


class _Pipeline:
    """Candidates: prune, fine-tune (spikelite.train.train), evaluate (accuracy, params, energy)."""

    def __init__(self, ckpt: str, meta: dict, cfg: PruneConfig, data_root, dataset, runs_dir: Path, device):
        self.ckpt, self.meta, self.cfg = ckpt, meta, cfg
        self.runs_dir = runs_dir
        self.device = device
        self.dataset, self.root, self.val_data, self.cal_data = _load_data(meta, data_root, dataset, cfg)
        self.cal_batches = None
        self.kind = meta["kind"]
        self.image_size = int(meta["model_spec"]["image_size"])

    def log(self, msg: str) -> None:
        if not self.cfg.quiet:
            print(msg, flush=True)

    def calibration(self):
        if self.cal_batches is None:
            self.cal_batches = _as_batches(self.cal_data, 64, self.device)
        return self.cal_batches

    def importance(self, model: nn.Module, ablation: bool) -> ImportanceReport:
        return module_importance(model, self.calibration(), method="both" if ablation else "taylor", seed=self.cfg.seed)

    def measure(self, model: nn.Module, label: str, kept: list[str], removed: list[str], acc_pruned=None,
                ft_seconds: float = 0.0, checkpoint: str | None = None) -> Candidate:
        from .energy import measure
        from .models import model_info
        from .train import evaluate

        model.to(self.device).eval()
        res = evaluate(model, self.val_data, batch_size=self.cfg.eval_batch_size, device=self.device,
                       seed=self.cfg.seed)
        info = model_info(model, image_size=self.image_size)
        rep = measure(model, self.val_data, samples=self.cfg.energy_samples, profiles=[self.cfg.profile],
                      seed=self.cfg.seed)
        return Candidate(label, list(kept), list(removed), res["accuracy"], acc_pruned, info.params, info.macs,
                         rep.energy_mj, rep.acs, rep.macs, ft_seconds, checkpoint=checkpoint)

    def _base_recipe(self) -> dict:
        cfg = self.meta.get("config")
        if isinstance(cfg, dict):
            return copy.deepcopy(cfg)
        info = self.meta.get("data") or {}
        return {"data": {"dataset": info.get("dataset"), "root": info.get("root"), "val_size": info.get("val_size"),
                         "split_seed": info.get("split_seed", 0), "image_size": info.get("image_size")}}

    def finetune(self, model: nn.Module, label: str, prune_entry: dict) -> tuple[nn.Module, dict, float, str | None]:
        """Fine-tune ``model`` with the checkpoint's recipe for ``finetune_epochs`` via spikelite.train.train."""
        from .checkpoint import load_model, save_checkpoint
        from .train import load_config, train

        if self.cfg.finetune_epochs == 0:
            return model, self.meta, 0.0, None
        run = self.runs_dir / re.sub(r"[^A-Za-z0-9_.+-]+", "_", label)
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        init = run / "pruned_init.pt"
        save_checkpoint(init, model.cpu(), meta=_meta_for_save(self.meta, prune_entry))
        overrides = {
            "init_from": str(init), "mode": self.kind, "epochs": self.cfg.finetune_epochs, "out": str(run),
            "quiet": True, "tensorboard": False, "data.dataset": self.dataset, "data.root": self.root,
            "seed": self.cfg.seed, "device": self.cfg.device, "threads": self.cfg.threads,
        }
        if self.cfg.threads is None:
            overrides.pop("threads")
        tc = load_config(None, list(self.cfg.overrides), base=_with_overrides(self._base_recipe(), overrides))
        t0 = time.perf_counter()
        train(tc)
        seconds = time.perf_counter() - t0
        ft_model, ft_meta = load_model(run / "last.pt", device=self.device)
        return ft_model, ft_meta, seconds, str(run / "last.pt")

    def candidate(self, start: nn.Module, label: str, keep=None, remove=None) -> tuple[nn.Module, Candidate, dict]:
        from .train import evaluate

        pruned = prune_model(start, keep=keep, remove=remove, calibration=self.calibration(), seed=self.cfg.seed)
        subj = _subject(pruned)
        kept = list(subj.kept)
        removed = [n for n, _ in subj.macro if n not in set(kept)]
        pruned.to(self.device).eval()
        acc_pruned = evaluate(pruned, self.val_data, batch_size=self.cfg.eval_batch_size, device=self.device,
                              seed=self.cfg.seed)["accuracy"]
        entry = {"keep": kept, "removed": removed}
        ft_model, ft_meta, seconds, ckpt = self.finetune(pruned, label, entry)
        cand = self.measure(ft_model, label, kept, removed, acc_pruned, seconds, ckpt)
        self.log(f"  {label}: keeps {_kept_cell(kept, removed, subj.family)}; accuracy {100 * acc_pruned:.2f}% "
                 "pruned -> "
                 f"{100 * cand.accuracy:.2f}% after {self.cfg.finetune_epochs} epoch(s); {cand.params:,} params; "
                 f"{cand.energy_mj:.4g} mJ")
        return ft_model, cand, ft_meta


def _with_overrides(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        node = out
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def _meta_for_save(meta: dict, prune_entry: dict) -> dict:
    # model_spec comes from the pruned model itself (it carries keep); never the source's
    drop = {"model_spec", "kind", "snn", "state_dict", "train_state", "format", "format_version", "spikelite_version"}
    out = {k: v for k, v in meta.items() if k not in drop}
    out["prune"] = prune_entry
    return out


def _output_paths(out: str | os.PathLike) -> dict[str, Path]:
    p = Path(out)
    stem = p.with_suffix("") if p.suffix == ".pt" else p
    return {"checkpoint": p, "markdown": Path(f"{stem}.table.md"), "csv": Path(f"{stem}.table.csv"),
            "json": Path(f"{stem}.json"), "runs": Path(f"{stem}.runs")}


def run_pruning(checkpoint: str | os.PathLike, config: PruneConfig, out: str | os.PathLike, *,
                data_root: str | None = None, dataset: str | None = None, overwrite: bool = False) -> PruneResult:
    """Prune a checkpoint's model with ``config.strategy`` and write the results.

    Writes ``out`` (the chosen pruned checkpoint; its ``prune`` entry and ``model_spec["keep"]``
    record the kept modules), ``<out stem>.table.md`` / ``.table.csv`` (one row per candidate, like
    the paper's Table 3), ``<out stem>.json`` (everything, with the importance report) and the
    fine-tuning runs under ``<out stem>.runs/``. ``strategy="importance"`` writes only the reports.
    """
    from .checkpoint import load_model, save_checkpoint

    if not isinstance(config, PruneConfig):
        raise SpikeliteError(f"run_pruning takes a PruneConfig, got {type(config).__name__}")
    cfg = config
    t_start = time.perf_counter()
    paths = _output_paths(out)
    if paths["runs"].exists() and any(paths["runs"].iterdir()):
        if not overwrite:
            raise SpikeliteError(f"{paths['runs']} already holds fine-tuning runs from an earlier prune; pass "
                                 "--overwrite or choose another -o")
    model, meta = load_model(checkpoint)
    subj = _subject(model)
    family = subj.family
    present = list(subj.kept)
    # validate the strategy against this model before any heavy work
    schedule_keep = None
    if cfg.strategy in PAPER_SCHEDULES or cfg.strategy == "paper":
        if family != "squeezenet":
            raise SpikeliteError(f"the paper's named schedules ({', '.join(PAPER_SCHEDULES)}) keep SqueezeNet fire "
                                 f"modules; {subj.label} is a {family}: use --strategy keep or greedy")
        if subj.spec.get("keep") is not None:
            raise SpikeliteError(f"{checkpoint} is already pruned (keeps {', '.join(present)}); the paper's schedules "
                                 "start from the full SqueezeNet")
        if cfg.strategy != "paper":
            schedule_keep = list(PAPER_SCHEDULES[cfg.strategy])
    if cfg.strategy == "keep":
        if cfg.keep is not None:
            want = set(resolve_modules(cfg.keep, subj.macro, family, subj.label))
            gone = [n for n in want if n not in present]
            if gone:
                raise SpikeliteError(f"{', '.join(sorted(gone))} already removed in {checkpoint}; present: "
                                     f"{', '.join(present)}")
            if not [n for n in present if n in want]:
                raise SpikeliteError("keep names no present module: removing every module leaves no network")
        else:
            rm = set(resolve_modules(cfg.remove, subj.macro, family, subj.label))
            if not [n for n in present if n not in rm]:
                raise SpikeliteError(f"removing {', '.join(sorted(rm))} would remove every macro module of "
                                     f"{subj.label}; keep at least one")
    if cfg.strategy == "greedy" and len(present) <= 1:
        raise SpikeliteError(f"{subj.label} has nothing removable: only {', '.join(present)} is left")
    if overwrite and paths["runs"].is_dir():  # only the runs folder an earlier prune to this -o wrote
        shutil.rmtree(paths["runs"])

    prev_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        dev = cfg.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(dev)
        except (RuntimeError, TypeError):
            raise SpikeliteError(f"unknown device {cfg.device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SpikeliteError(f"device {cfg.device!r} asked for, but CUDA is not available")
        pipe = _Pipeline(str(checkpoint), meta, cfg, data_root, dataset, paths["runs"], device)
        model.to(device).eval()
        pipe.log(f"pruning {subj.label} ({meta['kind'].upper()}, {len(present)} macro modules present) from "
                 f"{checkpoint}: strategy {cfg.strategy}; {len(pipe.cal_data)} calibration and "
                 f"{len(pipe.val_data)} validation images")
        baseline = pipe.measure(model, "unpruned", present, [n for n, _ in subj.macro if n not in set(present)])
        baseline.status = "source"
        pipe.log(f"  unpruned: accuracy {100 * baseline.accuracy:.2f}%; {baseline.params:,} params; "
                 f"{baseline.energy_mj:.4g} mJ")
        importance = pipe.importance(model, cfg.ablation or cfg.rank_by == "ablation")
        pipe.log(importance.table())
        candidates: list[Candidate] = []
        models: dict[str, tuple[nn.Module, dict]] = {}
        steps: list[dict] = []
        chosen = None
        stop = ""
        if cfg.strategy == "keep" or schedule_keep is not None:
            label = cfg.strategy if schedule_keep is not None else "keep"
            m, c, mt = pipe.candidate(model, label, keep=schedule_keep or cfg.keep, remove=cfg.remove)
            candidates.append(c)
            models[label] = (m, mt)
            chosen = c
            stop = "one candidate"
        elif cfg.strategy == "paper":
            for name, keep in PAPER_SCHEDULES.items():
                m, c, mt = pipe.candidate(model, name, keep=list(keep))
                candidates.append(c)
                models[name] = (m, mt)
            chosen = max(candidates, key=lambda c: (c.accuracy, -c.params))
            stop = "every paper schedule tried; chosen: the highest accuracy (fewer parameters on ties)"
        elif cfg.strategy == "greedy":
            budget = None
            if cfg.energy_budget is not None:
                unit, value = parse_energy_budget(cfg.energy_budget)
                budget = value * baseline.energy_mj if unit == "fraction" else value
            first = {"done": False}

            def rank(m):
                if not first["done"]:
                    first["done"] = True
                    return importance.ranking(cfg.rank_by)
                return pipe.importance(m, cfg.rank_by == "ablation").ranking(cfg.rank_by)

            def try_remove(m, current, name, step):
                label = f"greedy-{step}-{name}"
                mm, c, mt = pipe.candidate(m, label, remove=[name])
                models[label] = (mm, mt)
                return mm, c

            tried, best, _, steps, stop = greedy_search(
                baseline, model, rank=rank, try_remove=try_remove, max_drop=cfg.max_drop, energy_budget_mj=budget,
                candidates_per_step=cfg.candidates_per_step, log=pipe.log)
            candidates.extend(tried)
            chosen = None if best is baseline else best
            if budget is not None:
                stop += f" (budget {budget:.4g} mJ = " + (f"{cfg.energy_budget} of {baseline.energy_mj:.4g} mJ)"
                                                          if parse_energy_budget(cfg.energy_budget)[0] == "fraction"
                                                          else f"{cfg.energy_budget})")
        else:  # importance only
            stop = "importance report only"
        if chosen is not None:
            chosen.status = (chosen.status + ", " if chosen.status else "") + "chosen"
        pipe.log(f"  {stop}")
        result = PruneResult(str(checkpoint), subj.label, meta["kind"], family, FAMILY_RULES[family], cfg.strategy,
                             baseline, candidates, chosen, importance, steps, stop, None, {},
                             time.perf_counter() - t_start)
        files = {}
        if cfg.strategy != "importance":
            if chosen is not None:
                final_model, final_meta = models[chosen.label]
                entry = {"keep": chosen.kept, "removed": chosen.removed, "strategy": cfg.strategy,
                         "source": str(checkpoint), "rule": FAMILY_RULES[family],
                         "finetune_epochs": cfg.finetune_epochs, "accuracy": chosen.accuracy,
                         "source_accuracy": baseline.accuracy, "params": chosen.params,
                         "source_params": baseline.params, "energy_mj": chosen.energy_mj,
                         "source_energy_mj": baseline.energy_mj}
                save_checkpoint(paths["checkpoint"], final_model.cpu(), meta=_meta_for_save(final_meta, entry))
                files["checkpoint"] = str(paths["checkpoint"])
                result.output = str(paths["checkpoint"])
            else:
                result.stop_reason += "; no candidate was accepted, so no pruned checkpoint was written"
        files.update({"markdown": str(paths["markdown"]), "csv": str(paths["csv"]), "json": str(paths["json"])})
        result.files = files
        result.seconds = time.perf_counter() - t_start
        md = [f"# Pruning {subj.label} ({meta['kind'].upper()}) from {checkpoint}", "",
              f"Strategy: {cfg.strategy}; "
              + ("no candidates are pruned or fine-tuned (a ranking only)" if cfg.strategy == "importance"
                 else f"fine-tuning: {cfg.finetune_epochs} epoch(s) per candidate")
              + f"; rule for shape-changing modules: {FAMILY_RULES[family]}.", "",
              f"Accuracy on {len(pipe.val_data)} validation images; energy ({cfg.profile}) per image on "
              f"{min(cfg.energy_samples, len(pipe.val_data))} of them.", "",
              candidate_table(result), f"Stop: {result.stop_reason}.", "", "## Module importance", "",
              importance.table(), ""]
        atomic_write(paths["markdown"], "\n".join(md))
        atomic_write(paths["csv"], candidate_table(result, "csv"))
        atomic_write(paths["json"], json.dumps(result.to_dict(), indent=2) + "\n")
        return result
    finally:
        torch.set_num_threads(prev_threads)
