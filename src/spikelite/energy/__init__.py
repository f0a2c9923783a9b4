"""Energy and complexity of CNNs and SNNs: exact AC/MAC counts from real spikes, and energy profiles.

- :mod:`.profiles` — :class:`EnergyProfile`, :class:`MemoryCost`, the built-in profiles
  (:data:`PROFILES`, Horowitz 2014, 45 nm), YAML profiles (:func:`load_profiles`),
  :func:`resolve_profiles` and :class:`EnergyBreakdown`.
- :mod:`.counting` — the exact operation counts of one layer call (:func:`is_binary`,
  :func:`spike_events`, :func:`conv_fanout`, :func:`synaptic_ops`) and which modules are neurons.
- :mod:`.results` — :class:`LayerCount`, :class:`NeuronCount`, :class:`Comparison`,
  :class:`EnergyReport`, and the terminal table they render to.
- :mod:`.batches` — feeding the model: batches from a tensor, ImageData or loader, eval mode, per-batch
  seeds, one clear error when the model fails.
- :mod:`.peers` — SpikingJelly's and NeuroBench's counters on the same batches (``peers=True``).
- :mod:`.meter` — the hooks that count a model's operations and :func:`measure` (the conventions
  are in its module docstring and docs/energy.md). ``measure_energy`` is the same function.

Imports flow one way: profiles → counting → results → batches → peers → meter (a module never
imports one after it).
"""

from .counting import conv_fanout, is_binary, spike_events, synaptic_ops
from .meter import measure
from .profiles import (DEFAULT_PROFILE, PROFILES, EnergyBreakdown, EnergyProfile, MemoryCost, get_profile,
                       load_profiles, resolve_profiles)
from .results import Comparison, EnergyReport, LayerCount, LowBit, NeuronCount

measure_energy = measure

__all__ = [
    "measure",
    "measure_energy",
    "EnergyReport",
    "LowBit",
    "LayerCount",
    "NeuronCount",
    "EnergyProfile",
    "MemoryCost",
    "EnergyBreakdown",
    "Comparison",
    "PROFILES",
    "DEFAULT_PROFILE",
    "get_profile",
    "load_profiles",
    "resolve_profiles",
    "conv_fanout",
    "synaptic_ops",
    "is_binary",
    "spike_events",
]
