"""The model registry: ``@register_model`` adds a name to the zoo, as in timm.

Each family file (``squeezenet.py``, ``shufflenet.py`` …) registers its names with the decorator on a small
builder ``(name, num_classes, image_size, in_chans, width, options) -> (model, resolved options)``;
:func:`spikelite.models.create_model` looks names up here. A user's own family registers the same way
(its options dataclass, its builder and its macro modules), and the rest of spikelite — conversion,
pruning, the bench, the report — then takes its name like any other.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from ..errors import SpikeliteError

__all__ = ["ModelEntry", "register_model", "list_models", "get_entry"]

Builder = Callable[..., "tuple[nn.Module, dict]"]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One registered model name."""

    name: str
    family: str
    description: str
    options: type  # the family's options dataclass
    build: Builder  # (name, num_classes, image_size, in_chans, width, opts) -> (model, resolved options)
    macro: Callable[[], list[tuple[str, str]]]
    has_width: bool = True
    # options whose default changed, with the value they had before: a recorded spec that does not name
    # such an option was built with that value (see spikelite.models.recorded_spec)
    earlier_defaults: dict = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, family: str, description: str, options: type,
                   macro: Callable[[], list[tuple[str, str]]], has_width: bool = True,
                   earlier_defaults: dict | None = None) -> Callable[[Builder], Builder]:
    """Register the decorated builder under ``name`` (a second registration of a name is an error).

    ``earlier_defaults``: when an option's default changes, its old value (``{"pool": "max"}``), so that
    specs recorded before the change, which do not name the option, keep rebuilding as they were."""
    if not isinstance(name, str) or not name:
        raise SpikeliteError(f"a model name must be a non-empty string, got {name!r}")
    if not dataclasses.is_dataclass(options):
        raise SpikeliteError(f"register_model({name!r}): options must be a dataclass type, got {options!r}")

    def decorator(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise SpikeliteError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, family, description, options, build, macro, has_width,
                                     dict(earlier_defaults or {}))
        return build

    return decorator


def list_models() -> list[str]:
    """The registered model names, in registration order."""
    return list(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise SpikeliteError(f"unknown model {name!r}; valid names: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
