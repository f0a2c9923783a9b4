"""Which model, which modules: the subject of a prune or an importance score.

A zoo CNN (its ``spikelite_spec`` names the family and the macro modules), a SpikingNet made from
one, or a user CNN whose blocks are named by module path; :func:`removable_modules` lists what is
still present, and :data:`PAPER_SCHEDULES` are the paper's hand-made SqueezeNet schedules.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Sequence

from torch import nn

from ..errors import SpikeliteError
from ..models.surgery import Replacement, probe_modules, replacement_plan, resolve_modules

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
            from ..models import create_model

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
    from ..snn import SpikingNet

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
        from ..models import get_entry, macro_modules

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
