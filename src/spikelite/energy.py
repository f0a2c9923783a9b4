"""Energy and complexity of CNNs and SNNs: exact AC/MAC counts from real spikes, and energy profiles.

``measure(model, data)`` runs the model on real inputs and counts, per image (all T steps of one
inference), averaged over the samples:

* **ACs** — accumulates triggered by binary inputs. A ``Conv1d/2d/3d``, ``ConvTranspose*d`` or
  ``Linear`` call whose input holds only 0 and 1 costs one AC per (nonzero input, connected output)
  pair: every nonzero input element's *real* fan-out, honouring padding (zeros, reflect, replicate,
  circular), stride, dilation, groups and depthwise convolutions.
* **MACs** — multiply-accumulates of the calls whose input is not binary (the stem that sees the
  image, squeeze-excitation paths, layers after average pooling of spikes, …), counted dense
  (``out_elements x in_channels/groups x kernel``, the convention of thop/fvcore/SpikingJelly's
  ``MACCounter``). ``effective_macs`` gives NeuroBench's convention beside it (only nonzero inputs,
  real fan-out, so padding taps are not counted).
* **BatchNorm** is folded into the conv/linear layer before it for inference (costs nothing). Only
  a BatchNorm that normalises spikes (its input binary, not a conv/linear output) has nothing to fold
  into; it costs one MAC per element. Bias additions are not counted (as in both peer counters).
* **neuron-state updates** (one per neuron per time step), spikes, per-layer firing rates, input
  density of every synaptic layer and the activation sparsity of the neuron outputs.
* the dense MACs of the SNN's own CNN (the same layers for one time step), parameters, accuracy
  when labels come with the data.

How binary inputs are found: a forward hook on every synaptic layer checks, at run time, every value
of the input tensor of that call (``x == 0 or x == 1``; bool tensors are binary). The check is per
call, so a layer can be AC in one call and MAC in another (its row then says ``AC+MAC``). A model
without spiking neurons (no :class:`~spikelite.snn.LIF`, SpikingJelly node or snnTorch neuron) is
a CNN: all its synaptic operations are MACs whatever their inputs.

Energy: :class:`EnergyProfile` charges ``ac_pj`` per AC and ``mac_pj`` per MAC (the paper's
``E = 0.9 pJ x AC + 4.6 pJ x MAC``, 45 nm fp32, Horowitz 2014), optionally a per-neuron-update cost
and memory traffic per byte (weights read per synaptic operation, membrane state read and written
per update). Built-in profiles: :data:`PROFILES`; custom ones from YAML (:func:`load_profiles`).

See docs/energy.md for the conventions, the comparison with SpikingJelly's and NeuroBench's
counters and measured figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from .errors import SpikeliteError
from .snn import LIF, ConversionIF

__all__ = [
    "measure",
    "EnergyReport",
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

# ----------------------------------------------------------------------------------------------
# Energy profiles
# ----------------------------------------------------------------------------------------------

HOROWITZ_2014 = ("M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, "
                 "45 nm, 0.9 V")


@dataclasses.dataclass(frozen=True)
class MemoryCost:
    """Memory traffic charged per byte.

    Attributes:
        pj_per_byte: energy of moving one byte (pJ).
        weight_bytes: bytes of one weight; one weight is read per synaptic operation (AC or MAC).
        state_bytes: bytes of one membrane potential; each neuron update reads and writes it once.
    """

    pj_per_byte: float
    weight_bytes: float
    state_bytes: float


@dataclasses.dataclass(frozen=True)
class EnergyProfile:
    """Energy per operation (pJ).

    Attributes:
        name: the profile's name.
        mac_pj: one multiply-accumulate.
        ac_pj: one accumulate.
        neuron_update_pj: the arithmetic of one neuron-state update (0 in every built-in profile:
            the paper's formula charges only ACs and MACs).
        memory: memory traffic per byte, or None for compute-only profiles.
        source: where the numbers come from.
    """

    name: str
    mac_pj: float
    ac_pj: float
    neuron_update_pj: float = 0.0
    memory: MemoryCost | None = None
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise SpikeliteError(f"energy profile name must be a non-empty string, got {self.name!r}")
        for key in ("mac_pj", "ac_pj", "neuron_update_pj"):
            _check_cost(self.name, key, getattr(self, key))
        if self.memory is not None:
            if not isinstance(self.memory, MemoryCost):
                raise SpikeliteError(f"energy profile {self.name!r}: memory must be a MemoryCost")
            for key in ("pj_per_byte", "weight_bytes", "state_bytes"):
                _check_cost(self.name, f"memory.{key}", getattr(self.memory, key))

    def energy(self, acs: float, macs: float, neuron_updates: float = 0.0) -> "EnergyBreakdown":
        """Energy of ``acs`` ACs, ``macs`` MACs and ``neuron_updates`` state updates, in pJ."""
        ac_e = acs * self.ac_pj
        mac_e = macs * self.mac_pj
        neuron_e = neuron_updates * self.neuron_update_pj
        weight_e = state_e = 0.0
        if self.memory is not None:
            weight_e = (acs + macs) * self.memory.weight_bytes * self.memory.pj_per_byte
            state_e = 2.0 * neuron_updates * self.memory.state_bytes * self.memory.pj_per_byte
        return EnergyBreakdown(profile=self.name, ac_pj=ac_e, mac_pj=mac_e, neuron_pj=neuron_e,
                               weight_memory_pj=weight_e, state_memory_pj=state_e)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_cost(profile: str, key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SpikeliteError(f"energy profile {profile!r}: {key} must be a finite number >= 0, got {value!r}")


# Horowitz 2014, 45 nm: fp32 add 0.9 pJ, mult 3.7 pJ; fp16 add 0.4, mult 1.1; int8 add 0.03, mult 0.2;
# SRAM read of 64 bits: 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ; DRAM 1.3-2.6 nJ.
PROFILES: dict[str, EnergyProfile] = {
    p.name: p
    for p in (
        EnergyProfile("45nm-fp32", mac_pj=4.6, ac_pj=0.9,
                      source=HOROWITZ_2014 + ": fp32 mult 3.7 + add 0.9 pJ; add 0.9 pJ (the paper's figures)"),
        EnergyProfile("45nm-fp16", mac_pj=1.5, ac_pj=0.4,
                      source=HOROWITZ_2014 + ": fp16 mult 1.1 + add 0.4 pJ; add 0.4 pJ"),
        EnergyProfile("45nm-int8", mac_pj=0.23, ac_pj=0.03,
                      source=HOROWITZ_2014 + ": int8 mult 0.2 + add 0.03 pJ; add 0.03 pJ (8-bit accumulate)"),
        EnergyProfile("45nm-fp32-mem", mac_pj=4.6, ac_pj=0.9,
                      memory=MemoryCost(pj_per_byte=12.5, weight_bytes=4.0, state_bytes=4.0),
                      source=HOROWITZ_2014 + ": fp32 arithmetic plus 1 MB SRAM reads, 100 pJ per 64 bits "
                                             "(12.5 pJ/byte): one fp32 weight per synaptic op, one fp32 "
                                             "membrane read + write per neuron update"),
    )
}
DEFAULT_PROFILE = "45nm-fp32"

_PROFILE_KEYS = {"name", "mac_pj", "ac_pj", "neuron_update_pj", "memory", "source"}
_REQUIRED_KEYS = ("mac_pj", "ac_pj")
_MEMORY_KEYS = ("pj_per_byte", "weight_bytes", "state_bytes")


def get_profile(name: str) -> EnergyProfile:
    """A built-in profile by name."""
    if name not in PROFILES:
        raise SpikeliteError(f"unknown energy profile {name!r}; built-in: {', '.join(PROFILES)} "
                             "(or give a YAML file)")
    return PROFILES[name]


def _profile_from_mapping(d, name: str | None, where: str) -> EnergyProfile:
    if not isinstance(d, dict):
        raise SpikeliteError(f"{where}: a profile must be a mapping of fields, got {type(d).__name__}")
    unknown = sorted(set(map(str, d)) - _PROFILE_KEYS)
    if unknown:
        raise SpikeliteError(f"{where}: unknown profile field(s) {unknown}; valid: {sorted(_PROFILE_KEYS)}")
    name = str(d.get("name", name) or "")
    if not name:
        raise SpikeliteError(f"{where}: the profile has no name")
    missing = [k for k in _REQUIRED_KEYS if k not in d]
    if missing:
        raise SpikeliteError(f"{where}: profile {name!r} is missing required field(s) {missing} "
                             f"(required: {list(_REQUIRED_KEYS)}; optional: neuron_update_pj, memory, source)")
    memory = d.get("memory")
    if memory is not None:
        if not isinstance(memory, dict):
            raise SpikeliteError(f"{where}: profile {name!r}: memory must be a mapping with {list(_MEMORY_KEYS)}")
        m_unknown = sorted(set(map(str, memory)) - set(_MEMORY_KEYS))
        if m_unknown:
            raise SpikeliteError(f"{where}: profile {name!r}: unknown memory field(s) {m_unknown}; "
                                 f"valid: {list(_MEMORY_KEYS)}")
        m_missing = [k for k in _MEMORY_KEYS if k not in memory]
        if m_missing:
            raise SpikeliteError(f"{where}: profile {name!r} is missing memory field(s) {m_missing} "
                                 f"(a memory block needs all of {list(_MEMORY_KEYS)})")
        for k in _MEMORY_KEYS:
            _check_cost(name, f"memory.{k}", memory[k])
        memory = MemoryCost(**{k: float(memory[k]) for k in _MEMORY_KEYS})
    for k in ("mac_pj", "ac_pj", "neuron_update_pj"):
        if k in d:
            _check_cost(name, k, d[k])
    return EnergyProfile(name=name, mac_pj=float(d["mac_pj"]), ac_pj=float(d["ac_pj"]),
                         neuron_update_pj=float(d.get("neuron_update_pj", 0.0)), memory=memory,
                         source=str(d.get("source", where)))


def load_profiles(path: str | os.PathLike) -> list[EnergyProfile]:
    """Energy profiles from a YAML file.

    Either one profile (a mapping with ``mac_pj`` and ``ac_pj``, optional ``name`` — default the
    file's stem —, ``neuron_update_pj``, ``memory: {pj_per_byte, weight_bytes, state_bytes}`` and
    ``source``), or several under ``profiles:`` keyed by name. A missing or unknown field raises
    :class:`SpikeliteError` naming it.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SpikeliteError(f"energy profile file {str(p)!r} does not exist")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SpikeliteError(f"energy profile file {str(p)!r} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not doc:
        raise SpikeliteError(f"energy profile file {str(p)!r} must hold a mapping (one profile, or 'profiles:')")
    if "profiles" in doc:
        extra = sorted(set(doc) - {"profiles"})
        if extra:
            raise SpikeliteError(f"{p}: unexpected top-level key(s) {extra} beside 'profiles'")
        profs = doc["profiles"]
        if not isinstance(profs, dict) or not profs:
            raise SpikeliteError(f"{p}: 'profiles' must map profile names to their fields")
        return [_profile_from_mapping(v, str(k), f"{p}: profile {k!r}") for k, v in profs.items()]
    return [_profile_from_mapping(doc, p.stem, str(p))]


def resolve_profiles(profiles=None) -> list[EnergyProfile]:
    """Profiles from names, YAML paths and :class:`EnergyProfile` objects (None: every built-in,
    the default ``45nm-fp32`` first). Duplicate names are an error."""
    if profiles is None:
        return list(PROFILES.values())
    if isinstance(profiles, (str, os.PathLike, EnergyProfile)):
        profiles = [profiles]
    out: list[EnergyProfile] = []
    for item in profiles:
        if isinstance(item, EnergyProfile):
            out.append(item)
        elif isinstance(item, (str, os.PathLike)):
            s = str(item)
            if s in PROFILES:
                out.append(PROFILES[s])
            elif s.endswith((".yaml", ".yml")) or os.path.sep in s or Path(s).is_file():
                out.extend(load_profiles(s))
            else:
                get_profile(s)  # raises the explanatory error
        else:
            raise SpikeliteError(f"a profile must be a name, a YAML path or an EnergyProfile, got {type(item).__name__}")
    if not out:
        raise SpikeliteError("no energy profile given")
    names = [p.name for p in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpikeliteError(f"energy profile name(s) given twice: {dup}")
    return out


@dataclasses.dataclass
class EnergyBreakdown:
    """Energy per image under one profile, in pJ."""

    profile: str
    ac_pj: float
    mac_pj: float
    neuron_pj: float
    weight_memory_pj: float
    state_memory_pj: float

    @property
    def compute_pj(self) -> float:
        return self.ac_pj + self.mac_pj + self.neuron_pj

    @property
    def memory_pj(self) -> float:
        return self.weight_memory_pj + self.state_memory_pj

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.memory_pj

    @property
    def total_mj(self) -> float:
        return self.total_pj * 1e-9

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(compute_pj=self.compute_pj, memory_pj=self.memory_pj, total_pj=self.total_pj,
                 total_mj=self.total_mj)
        return d


# ----------------------------------------------------------------------------------------------
# Exact synaptic-operation counts
# ----------------------------------------------------------------------------------------------

SYNAPTIC_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                                    nn.ConvTranspose3d, nn.Linear)
_BN_TYPES: tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def is_binary(x: torch.Tensor) -> bool:
    """True when every value of ``x`` is 0 or 1 (bool tensors always; an empty tensor too)."""
    if x.dtype == torch.bool:
        return True
    if x.is_complex():
        return False
    return bool(torch.logical_or(x == 0, x == 1).all())


def spike_events(x: torch.Tensor, amplitudes=(), channel_dim: int = 1) -> torch.Tensor | None:
    """How many spike events each element of ``x`` carries, or None when ``x`` is not spikes.

    Binary ``x``: one event per nonzero element. Otherwise ``x`` is spikes when every channel's nonzero
    values are whole multiples (of either sign) of one of ``amplitudes`` — the thresholds of the
    ConversionIF layers that ran: their spikes carry the threshold ±θ, a burst of k spikes is ±kθ, and a
    concatenation of two layers' spikes has one θ per channel group. The amplitude folds into the next
    layer's weights (per input channel), so each event costs one AC per synapse: a negative spike is one
    event, a burst of k is k events."""
    if x.dtype == torch.bool or is_binary(x):
        return x != 0
    if not amplitudes or x.is_complex() or not x.is_floating_point() or x.dim() <= channel_dim:
        return None
    moved = x.detach().abs().movedim(channel_dim, 0)
    a = moved.reshape(moved.shape[0], -1).double()
    smallest = torch.where(a > 0, a, torch.full_like(a, math.inf)).amin(dim=1)  # [C]
    known = torch.tensor(sorted(set(amplitudes), reverse=True), dtype=torch.float64, device=a.device)
    ratio = smallest[:, None] / known[None, :]
    whole = ratio.round()
    fits = (whole >= 1) & ((ratio - whole).abs() <= 1e-4 * whole.clamp_min(1))
    empty = torch.isinf(smallest)
    if not bool((fits.any(dim=1) | empty).all()):
        return None
    amp = known[fits.to(torch.int8).argmax(dim=1)]  # the largest amplitude that fits
    amp = torch.where(empty, torch.ones_like(amp), amp)
    k = a / amp[:, None]
    kr = k.round()
    if not bool(((k - kr).abs() <= 1e-4 * kr.clamp_min(1)).all()):
        return None
    return kr.to(torch.int64).reshape(moved.shape).movedim(0, channel_dim)


def _pad_index(idx: torch.Tensor, length: int, mode: str) -> torch.Tensor:
    """Map indices into the padded axis (already shifted so 0 is the first real element) to the real
    element they read, or -1 for a zero pad."""
    if mode == "zeros":
        return torch.where((idx >= 0) & (idx < length), idx, torch.full_like(idx, -1))
    if mode == "replicate":
        return idx.clamp(0, length - 1)
    if mode == "circular":
        return torch.remainder(idx, length)
    if mode == "reflect":
        if length == 1:
            return torch.zeros_like(idx)
        period = 2 * (length - 1)
        r = torch.remainder(idx, period)
        return torch.where(r < length, r, period - r)
    raise SpikeliteError(f"unsupported padding_mode {mode!r}")


def _conv_padding(m: nn.modules.conv._ConvNd, nd: int) -> tuple[list[int], list[int]]:
    """(left, right) zero/mode padding per spatial dim, as the module's forward applies it."""
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return [0] * nd, [0] * nd
        # 'same': torch pads total = dilation*(k-1), the left half rounded down, the rest on the right
        lo, hi = [], []
        for d, k in zip(m.dilation, m.kernel_size):
            total = d * (k - 1)
            lo.append(total // 2)
            hi.append(total - total // 2)
        return lo, hi
    return list(m.padding), list(m.padding)


def _axis_fanout(length: int, kernel: int, stride: int, dilation: int, pad_lo: int, pad_hi: int, mode: str,
                 device) -> torch.Tensor:
    """For a regular conv along one axis: how many (output position, kernel tap) pairs read each of
    the ``length`` real input positions (int64 [length])."""
    out_len = (length + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1
    if out_len <= 0:
        return torch.zeros(length, dtype=torch.int64, device=device)
    o = torch.arange(out_len, device=device).view(-1, 1)
    j = torch.arange(kernel, device=device).view(1, -1)
    src = _pad_index((o * stride + j * dilation - pad_lo).flatten(), length, mode)
    src = src[src >= 0]
    return torch.bincount(src, minlength=length)


def _axis_fanout_transposed(length: int, out_len: int, kernel: int, stride: int, dilation: int, pad: int,
                            device) -> torch.Tensor:
    """For a transposed conv along one axis: how many kernel taps of input position i land inside the
    output (int64 [length])."""
    i = torch.arange(length, device=device).view(-1, 1)
    j = torch.arange(kernel, device=device).view(1, -1)
    pos = i * stride - pad + j * dilation
    return ((pos >= 0) & (pos < out_len)).sum(1)


def conv_fanout(m: nn.Module, x: torch.Tensor, out: torch.Tensor | None = None,
                events: torch.Tensor | None = None) -> int:
    """Exact number of (nonzero input element, weight) products of one call of conv ``m`` on ``x``.

    Every nonzero input element at spatial position ``p`` of a channel in group ``g`` is multiplied by
    ``out_channels/groups`` filters at each kernel tap whose output position exists; zero padding
    adds nothing, reflect/replicate/circular padding re-reads real elements. The count factorises
    over the spatial axes (the padding of each axis is independent), so it is
    ``out_channels/groups x sum_p nnz(p) x prod_axes fanout_axis(p_axis)`` in exact integer
    arithmetic, where ``nnz(p)`` counts the nonzero elements at ``p`` over batch and channels. It
    equals ``sum(conv(nonzero_mask(x), all-ones kernel of the same geometry))`` (tested against that
    and against a brute-force loop). ``out`` is needed for transposed convs (their output size).
    ``events``: events per input element (a burst of k spikes is k) in place of the nonzero mask.
    """
    nd = x.dim() - 2
    spatial = x.shape[2:]
    nz = (x != 0 if events is None else events).sum(dim=(0, 1))  # int64 [*spatial]
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    weight = nz
    for axis in range(nd):
        if transposed:
            if out is None:
                raise SpikeliteError("conv_fanout needs the output of a transposed conv")
            f = _axis_fanout_transposed(spatial[axis], out.shape[2 + axis], m.kernel_size[axis], m.stride[axis],
                                        m.dilation[axis], m.padding[axis], nz.device)
        else:
            lo, hi = _conv_padding(m, nd)
            f = _axis_fanout(spatial[axis], m.kernel_size[axis], m.stride[axis], m.dilation[axis], lo[axis],
                             hi[axis], m.padding_mode, nz.device)
        shape = [1] * nd
        shape[axis] = -1
        weight = weight * f.view(shape)
    return int(weight.sum()) * (m.out_channels // m.groups)


def _dense_macs(m: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(m, nn.Linear):
        return out.numel() * m.in_features
    kernel = math.prod(m.kernel_size)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return x.numel() * (m.out_channels // m.groups) * kernel
    return out.numel() * (m.in_channels // m.groups) * kernel


def synaptic_ops(m: nn.Module, x: torch.Tensor, out: torch.Tensor,
                 events: torch.Tensor | None = None) -> tuple[int, int]:
    """``(effective, dense)`` operations of one call of a synaptic layer: effective = nonzero input
    elements (or ``events``: spike events per element) times their real fan-out (the ACs when ``x`` is
    spikes), dense = MACs with every input element used (``out_elements x in_channels/groups x kernel``
    for convs)."""
    if isinstance(m, nn.Linear):
        eff = int((x != 0).sum() if events is None else events.sum()) * m.out_features
    else:
        eff = conv_fanout(m, x, out, events)
    return eff, _dense_macs(m, x, out)


# ----------------------------------------------------------------------------------------------
# Neurons
# ----------------------------------------------------------------------------------------------


def _neuron_types() -> tuple[type, ...]:
    types: list[type] = [LIF, ConversionIF]
    try:  # peers' neurons, when those (dev) packages are installed
        from spikingjelly.activation_based.neuron import BaseNode

        types.append(BaseNode)
    except Exception:  # pragma: no cover - optional
        pass
    try:
        import snntorch

        types.append(snntorch.SpikingNeuron)
    except Exception:  # pragma: no cover - optional
        pass
    return tuple(types)


def _first_tensor(obj) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj:
        return _first_tensor(obj[0])
    return None


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LayerCount:
    """One synaptic (conv/linear) or unfoldable BatchNorm layer, per image.

    ``op``: ``AC`` (every call had binary input), ``MAC``, ``AC+MAC`` (both kinds of calls),
    ``folded`` (a BatchNorm folded into its conv) or ``-`` (never called).
    """

    name: str
    type: str
    op: str
    calls: int
    acs: float
    macs: float
    effective_macs: float
    dense_macs: float
    cnn_macs: float
    input_density: float | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class NeuronCount:
    """One neuron layer, per image: ``neurons`` per step, ``updates`` over all steps, ``spikes``."""

    name: str
    type: str
    neurons: float
    updates: float
    spikes: float
    firing_rate: float | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Comparison:
    """The SNN against its CNN under one profile: ``energy_ratio`` = CNN energy / SNN energy (how many
    times less the SNN spends), ``accuracy_diff`` = SNN - CNN accuracy (fractions)."""

    profile: str
    snn_energy_mj: float
    cnn_energy_mj: float
    energy_ratio: float | None
    snn_accuracy: float | None
    cnn_accuracy: float | None
    accuracy_diff: float | None
    cnn_source: str
    accuracy_source: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class EnergyReport:
    """What :func:`measure` found, per image (all T steps of one inference), averaged over ``samples``."""

    model: str
    samples: int
    spiking: bool
    time_steps: int | None
    params: int
    acs: float
    macs: float
    effective_macs: float
    dense_macs: float
    cnn_macs: float
    bn_macs: float
    neuron_updates: float
    spikes: float
    firing_rate: float | None
    activation_sparsity: float | None
    accuracy: float | None
    layers: list[LayerCount]
    neurons: list[NeuronCount]
    energy: list[EnergyBreakdown]
    comparison: Comparison | None
    profiles: list[EnergyProfile]
    cnn_energy: list[EnergyBreakdown] = dataclasses.field(default_factory=list)
    peers: dict | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def energy_for(self, profile: str | None = None) -> EnergyBreakdown:
        """The breakdown under ``profile`` (default: the first one measured)."""
        if profile is None:
            return self.energy[0]
        for e in self.energy:
            if e.profile == profile:
                return e
        raise SpikeliteError(f"profile {profile!r} was not measured; measured: {[e.profile for e in self.energy]}")

    @property
    def energy_mj(self) -> float:
        """Total energy per image under the first profile, in mJ."""
        return self.energy[0].total_mj

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "samples": self.samples,
            "spiking": self.spiking,
            "time_steps": self.time_steps,
            "params": self.params,
            "acs": self.acs,
            "macs": self.macs,
            "effective_macs": self.effective_macs,
            "dense_macs": self.dense_macs,
            "cnn_macs": self.cnn_macs,
            "bn_macs": self.bn_macs,
            "neuron_updates": self.neuron_updates,
            "spikes": self.spikes,
            "firing_rate": self.firing_rate,
            "activation_sparsity": self.activation_sparsity,
            "accuracy": self.accuracy,
            "energy": [e.to_dict() for e in self.energy],
            "comparison": None if self.comparison is None else self.comparison.to_dict(),
            "cnn_energy": [e.to_dict() for e in self.cnn_energy],
            "peers": self.peers,
            "profiles": [p.to_dict() for p in self.profiles],
            "layers": [layer.to_dict() for layer in self.layers],
            "neurons": [n.to_dict() for n in self.neurons],
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self, layers: bool = False) -> str:
        """A terminal report (``layers=True`` adds one row per layer and per neuron layer)."""
        return _render_table(self, layers)


# ----------------------------------------------------------------------------------------------
# The counter
# ----------------------------------------------------------------------------------------------


class _LayerStats:
    __slots__ = ("name", "type", "calls", "ac_calls", "mac_calls", "acs", "macs", "eff_macs", "dense",
                 "dense_static", "nonzero", "elements", "folded_calls")

    def __init__(self, name: str, type_: str):
        self.name, self.type = name, type_
        self.calls = self.ac_calls = self.mac_calls = self.folded_calls = 0
        self.acs = self.macs = self.eff_macs = self.dense = self.nonzero = self.elements = 0
        self.dense_static = 0  # dense MACs of the calls on exactly the batch's images (run once, not per step)

    def cnn_macs(self, time_steps: int | None) -> float:
        """The CNN's dense MACs: static calls once, the others divided by the time steps they cover."""
        return self.dense_static + (self.dense - self.dense_static) / (time_steps or 1)


class _NeuronStats:
    __slots__ = ("name", "type", "calls", "updates", "spikes", "neurons")

    def __init__(self, name: str, type_: str):
        self.name, self.type = name, type_
        self.calls = self.updates = self.spikes = 0
        self.neurons = 0.0


def _display_names(model: nn.Module) -> dict[nn.Module, str]:
    from .snn import SpikingActivation, SpikingNet

    strip = "body." if isinstance(model, SpikingNet) else ""
    names: dict[nn.Module, str] = {}
    parents: dict[nn.Module, nn.Module] = {}
    for name, m in model.named_modules():
        for child in m.children():
            parents.setdefault(child, m)
        if m in names:
            continue
        if strip and name.startswith(strip):
            name = name[len(strip):]
        names[m] = name or type(m).__name__
    # a neuron inside a SpikingActivation is named by the activation site it replaced
    for m, parent in parents.items():
        if isinstance(parent, SpikingActivation) and m is parent.neuron:
            names[m] = names[parent]
    return names


class _Counter:
    """Hooks that count one model's operations over several batches."""

    _TAG = "_spikelite_energy_src"

    def __init__(self, model: nn.Module, spiking: bool | None = None, time_steps: int | None = None):
        self.model = model
        names = _display_names(model)
        neuron_types = _neuron_types()
        neurons = [m for m in model.modules() if isinstance(m, neuron_types)]
        # a neuron nested in another neuron module is part of it
        nested = {sub for m in neurons for sub in m.modules() if sub is not m}
        neurons = [m for m in neurons if m not in nested]
        self.spiking = bool(neurons) if spiking is None else spiking
        self.time_steps = time_steps
        self.images_in_batch = 0
        self.amplitudes: set[float] = set()
        self.layers: dict[nn.Module, _LayerStats] = {}
        self.bns: dict[nn.Module, _LayerStats] = {}
        self.neurons: dict[nn.Module, _NeuronStats] = {}
        from .snn import StepBatchNorm

        for m in model.modules():
            if isinstance(m, SYNAPTIC_TYPES):
                self.layers[m] = _LayerStats(names[m], type(m).__name__)
            elif isinstance(m, (*_BN_TYPES, StepBatchNorm)):
                self.bns[m] = _LayerStats(names[m], type(m).__name__)
        # per-step BatchNorm: a different scale at every step, never folded into the shared conv weights
        self.unfoldable_bns = {m for m in self.bns if isinstance(m, StepBatchNorm)}
        for m in neurons:
            self.neurons[m] = _NeuronStats(names[m], type(m).__name__)

    @contextlib.contextmanager
    def counting(self, images: int):
        """Hooks in place for one forward over ``images`` images (and removed after, so other tools
        that copy modules never meet them)."""
        self.images_in_batch = int(images)
        hooks = [m.register_forward_hook(self._synaptic_hook) for m in self.layers]
        hooks += [m.register_forward_hook(self._bn_hook) for m in self.bns]
        hooks += [m.register_forward_hook(self._neuron_hook) for m in self.neurons]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    def _is_static(self, x: torch.Tensor) -> bool:
        """A call on exactly the batch's images runs once per inference; a SpikingNet's temporal layers
        see ``T*N`` rows (a model of one's own may show ``[T, N, ...]``): T steps in one call."""
        return not self.spiking or x.dim() == 0 or x.shape[0] == self.images_in_batch

    def _synaptic_hook(self, m: nn.Module, args, out) -> None:
        x = _first_tensor(args)
        if x is None or not isinstance(out, torch.Tensor):
            return
        st = self.layers[m]
        with torch.no_grad():
            events = spike_events(x, self.amplitudes, x.dim() - 1 if isinstance(m, nn.Linear) else 1) \
                if self.spiking else None
            eff, dense = synaptic_ops(m, x, out)
            st.calls += 1
            if events is not None:
                st.ac_calls += 1
                st.acs += synaptic_ops(m, x, out, events)[0] if events.dtype != torch.bool else eff
            else:
                st.mac_calls += 1
                st.macs += dense
                st.eff_macs += eff
            st.dense += dense
            if self._is_static(x):
                st.dense_static += dense
            st.nonzero += int((x != 0).sum())
            st.elements += x.numel()
        # mark the output (and its version: an in-place op changes it) so that a BatchNorm reading it
        # directly is known to fold into m even when the output happens to be all zeros
        try:
            setattr(out, self._TAG, out._version)
        except Exception:  # pragma: no cover - tensors that refuse attributes
            pass

    def _bn_hook(self, m: nn.Module, args, out) -> None:
        """BatchNorm is folded into the conv/linear layer before it (free at inference), unless it
        normalises spikes: in a spiking model, a BN whose input is binary with at least one spike and
        not itself a conv/linear output has no layer to fold into and costs one MAC per element. So
        does a per-step BatchNorm (time-aware BN): a different scale at every step cannot be folded into
        the one set of weights the layer before it shares across steps."""
        x = _first_tensor(args)
        if x is None:
            return
        st = self.bns[m]
        st.calls += 1
        with torch.no_grad():
            tag = getattr(x, self._TAG, None)
            direct = tag is not None and tag == x._version
            on_spikes = self.spiking and not direct and is_binary(x) and bool((x != 0).any())
        if not (on_spikes or m in self.unfoldable_bns):
            st.folded_calls += 1
            return
        n = x.numel()
        st.macs += n
        st.dense += n
        st.eff_macs += n
        if self._is_static(x):
            st.dense_static += n
        st.mac_calls += 1

    def _neuron_hook(self, m: nn.Module, args, out) -> None:
        x = _first_tensor(args)
        s = _first_tensor(out)
        if x is None or s is None:
            return
        st = self.neurons[m]
        st.calls += 1
        st.updates += x.numel()
        if isinstance(m, ConversionIF):  # its spikes are ±kθ: k events each; an input of that amplitude is spikes
            th = m.v_threshold.detach().to(s.dtype)
            self.amplitudes.add(float(th))
            st.spikes += int((s.abs() / th).round().sum())
        else:
            st.spikes += int((s != 0).sum())
        if self.time_steps is None and x.dim() >= 2 and isinstance(m, (LIF, ConversionIF)):
            self.time_steps = int(x.shape[0])  # spikelite neurons are multi-step: [T, N, ...]


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def _batches(data, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    from .data import BatchLoader, ImageData

    if isinstance(data, torch.Tensor):
        if data.dim() < 2:
            raise SpikeliteError(f"data tensor must be a batch [N, C, ...], got shape {tuple(data.shape)}")
        for i in range(0, data.shape[0], batch_size):
            yield data[i:i + batch_size], None
        return
    if isinstance(data, ImageData):
        yield from BatchLoader(data, batch_size, shuffle=False, augment=None)
        return
    if isinstance(data, (str, bytes, dict)) or not isinstance(data, Iterable):
        raise SpikeliteError(f"data must be a tensor [N, C, H, W], an ImageData or an iterable of (x, y) batches; "
                             f"got {type(data).__name__}")
    for k, item in enumerate(data):
        if isinstance(item, torch.Tensor):
            x, y = item, None
        elif isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
            x = item[0]
            y = item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None
        else:
            raise SpikeliteError(f"data batch {k} is a {type(item).__name__}; expected a tensor x or a tuple (x, y)")
        if x.dim() < 2:
            raise SpikeliteError(f"data batch {k} has shape {tuple(x.shape)}; expected [N, C, ...]")
        yield x, y


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _model_name(model: nn.Module) -> str:
    from .snn import SpikingNet

    spec = getattr(model, "spikelite_spec", None)
    if not isinstance(spec, dict) and isinstance(model, SpikingNet):
        spec = getattr(model.body, "spikelite_spec", None)
    base = spec.get("name") if isinstance(spec, dict) and spec.get("name") else type(model).__name__
    if isinstance(model, SpikingNet):
        return f"{base} SNN (T={model.T}, {model.encoding})"
    return base


@contextlib.contextmanager
def _inference(models: list[nn.Module], device: torch.device):
    """Eval mode and no gradients for the run; the caller's modes and RNG state come back after."""
    modes = [{m: m.training for m in model.modules()} for model in models]
    for model in models:
        model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        for mode in modes:
            for m, training in mode.items():
                m.training = training


def _batch_seed(seed: int, k: int) -> int:
    """Batch k runs under its own seed, so that every run over the same batches (ours, the peers')
    draws the same rate-encoded spikes."""
    return (int(seed) * 1_000_003 + k) % (2 ** 63)


def _run_model(model: nn.Module, x: torch.Tensor, what: str):
    try:
        return model(x.to(_model_device(model)))
    except SpikeliteError:
        raise
    except (RuntimeError, ValueError, TypeError) as exc:
        raise SpikeliteError(f"the {what} failed on a data batch of shape {tuple(x.shape)}: "
                             f"{type(exc).__name__}: {exc}") from None


# ----------------------------------------------------------------------------------------------
# The peers' counters (dev dependencies): SpikingJelly's op_counter and NeuroBench's metrics
# ----------------------------------------------------------------------------------------------


def _version(dist: str, module) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # pragma: no cover - not installed as a distribution
        return str(getattr(module, "__version__", "?"))


class _Peers:
    """Runs SpikingJelly's SynOpCounter / ACCounter / MACCounter and NeuroBench's SynapticOperations
    and ActivationSparsity over the same batches as :func:`measure` (the same per-batch seeds)."""

    def __init__(self, model: nn.Module):
        try:
            import spikingjelly
            from spikingjelly.activation_based.op_counter import (ACCounter, DispatchCounterMode, MACCounter,
                                                                  SynOpCounter)
        except ImportError as exc:
            raise SpikeliteError(f"peer counts need SpikingJelly >= 2.0 (a dev dependency): {exc}") from None
        try:
            import neurobench
            from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
            from neurobench.models import TorchModel
        except ImportError as exc:
            raise SpikeliteError(f"peer counts need NeuroBench >= 2.0 (a dev dependency): {exc}") from None
        self.model = model
        self._mode = DispatchCounterMode
        self.synop = SynOpCounter()
        self.ac = ACCounter()
        self.mac = MACCounter(extra_ignore_modules=list(_BN_TYPES))
        self.mac_bn = MACCounter()
        self.nb = TorchModel(model)
        for t in _neuron_types():
            self.nb.add_activation_module(t)
        self.nb.register_hooks()
        self.nb_synops = SynapticOperations()
        self.nb_sparsity = ActivationSparsity()
        self.sparsity_sum = 0.0
        self.images = 0
        self.versions = {"spikingjelly": _version("spikingjelly", spikingjelly),
                         "neurobench": _version("neurobench", neurobench)}

    def run(self, x: torch.Tensor, y, batch_seed: int) -> None:
        n = int(x.shape[0])
        torch.manual_seed(batch_seed)
        with self._mode([self.synop, self.ac, self.mac, self.mac_bn]):
            _run_model(self.model, x, "model (SpikingJelly counters)")
        torch.manual_seed(batch_seed)
        self.nb.reset_hooks()
        preds = self.nb(x)
        data = (x, y if y is not None else torch.zeros(n))
        self.nb_synops(self.nb, preds, data)
        self.sparsity_sum += float(self.nb_sparsity(self.nb, preds, data)) * n
        self.nb.reset_hooks()
        self.images += n

    def close(self) -> None:
        self.nb.cleanup_hooks()

    def result(self) -> dict:
        n = max(self.images, 1)
        nb = self.nb_synops.compute()
        return {
            "spikingjelly": {
                "version": self.versions["spikingjelly"],
                "synops": self.synop.get_total() / n,
                "mac_counter": self.mac.get_total() / n,
                "mac_counter_with_bn": self.mac_bn.get_total() / n,
                "ac_counter": self.ac.get_total() / n,
            },
            "neurobench": {
                "version": self.versions["neurobench"],
                "effective_acs": float(nb["Effective_ACs"]),
                "effective_macs": float(nb["Effective_MACs"]),
                "dense": float(nb["Dense"]),
                "activation_sparsity": self.sparsity_sum / n,
            },
        }


# ----------------------------------------------------------------------------------------------
# measure
# ----------------------------------------------------------------------------------------------


def _check_fraction(key: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpikeliteError(f"{key} must be a number, got {value!r}")
    value = float(value)
    if value > 1.0:
        if value <= 100.0:
            return value / 100.0  # given in percent
        raise SpikeliteError(f"{key} must be a fraction in [0, 1] or a percentage, got {value}")
    if value < 0:
        raise SpikeliteError(f"{key} must be >= 0, got {value}")
    return value


def _finish(counter: _Counter, model: nn.Module, images: int, profiles: list[EnergyProfile], correct: int,
            labelled: int, name: str | None) -> EnergyReport:
    from .models._info import count_params

    per = 1.0 / images
    rows: list[LayerCount] = []
    acs = macs = eff = dense = cnn = bn_macs = 0.0
    order = {m: i for i, m in enumerate(model.modules())}
    stats = sorted(list(counter.layers.items()) + list(counter.bns.items()), key=lambda kv: order[kv[0]])
    for m, st in stats:
        is_bn = m in counter.bns
        if st.calls == 0:
            op = "-"
        elif is_bn and st.folded_calls == st.calls:
            op = "folded"
        elif st.ac_calls and st.mac_calls:
            op = "AC+MAC"
        elif st.ac_calls:
            op = "AC"
        else:
            op = "MAC"
        if is_bn and op in ("-", "folded"):
            rows.append(LayerCount(st.name, st.type, op, st.calls, 0.0, 0.0, 0.0, 0.0, 0.0, None))
            continue
        density = (st.nonzero / st.elements) if st.elements else None
        row = LayerCount(st.name, st.type, op, st.calls, st.acs * per, st.macs * per, st.eff_macs * per,
                         st.dense * per, st.cnn_macs(counter.time_steps) * per, density)
        rows.append(row)
        acs += row.acs
        macs += row.macs
        eff += row.effective_macs
        dense += row.dense_macs
        cnn += row.cnn_macs
        if is_bn:
            bn_macs += row.macs
    nrows = []
    updates = spikes = 0.0
    for m, st in counter.neurons.items():
        steps = counter.time_steps or 1
        rate = st.spikes / st.updates if st.updates else None
        nrows.append(NeuronCount(st.name, st.type, st.updates * per / steps, st.updates * per, st.spikes * per, rate))
        updates += st.updates * per
        spikes += st.spikes * per
    spiking = counter.spiking
    firing = spikes / updates if spiking and updates else None
    energy = [p.energy(acs, macs, updates) for p in profiles]
    notes = []
    if not spiking:
        notes.append("no spiking neurons: every synaptic operation is a MAC")
    return EnergyReport(
        model=name or _model_name(model), samples=images, spiking=spiking,
        time_steps=counter.time_steps if spiking else None, params=count_params(model),
        acs=acs, macs=macs, effective_macs=eff, dense_macs=dense, cnn_macs=cnn, bn_macs=bn_macs,
        neuron_updates=updates, spikes=spikes, firing_rate=firing,
        activation_sparsity=None if firing is None else 1.0 - firing,
        accuracy=(correct / labelled) if labelled else None,
        layers=rows, neurons=nrows, energy=energy, comparison=None, profiles=list(profiles), notes=notes,
    )


def _count_correct(out, y: torch.Tensor | None, n: int) -> tuple[int, int]:
    if y is None or not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != n:
        return 0, 0
    if y.dim() != 1 or y.shape[0] != n or y.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
        return 0, 0
    return int((out.argmax(1) == y.to(out.device)).sum()), n


def measure(model: nn.Module, data, samples: int | None = None, *, profiles=None, cnn: nn.Module | None = None,
            accuracy: float | None = None, cnn_accuracy: float | None = None, batch_size: int = 64,
            seed: int = 0, name: str | None = None, peers: bool = False) -> EnergyReport:
    """Count the operations of ``model`` on real inputs and price them under energy profiles.

    Args:
        model: a :class:`~spikelite.snn.SpikingNet`, any module with spiking neurons
            (:class:`~spikelite.snn.LIF`, SpikingJelly or snnTorch neurons), or a plain CNN (then
            every operation is a MAC).
        data: a tensor batch ``[N, C, H, W]`` (run in chunks of ``batch_size``), an
            :class:`~spikelite.data.ImageData`, or an iterable of ``(x, y)`` batches (or bare ``x``).
        samples: how many images to measure (default: all of ``data``); the figures are per image,
            averaged over them.
        profiles: energy profiles: names (:data:`PROFILES`), YAML paths, :class:`EnergyProfile`
            objects; default every built-in one, ``45nm-fp32`` (the paper's) first. The first one is
            used for the CNN-vs-SNN comparison.
        cnn: the SNN's own CNN, run on the same batches (its MACs and accuracy). Without it the CNN's
            dense MACs are the SNN's own layers for one time step, and its accuracy is
            ``cnn_accuracy`` if given.
        accuracy, cnn_accuracy: accuracies to report (fractions, or percentages > 1) in place of the
            ones measured from the labels of ``data`` (e.g. full test-set figures).
        batch_size: chunk size for a tensor ``data``.
        seed: batch k runs under a seed derived from ``(seed, k)`` (rate encoding draws spikes), for
            the model, the CNN and the peers alike; the caller's RNG state is left as it was.
        name: the model's name in the report.
        peers: also run SpikingJelly's ``op_counter`` (SynOpCounter, ACCounter, MACCounter with and
            without BatchNorm) and NeuroBench's ``SynapticOperations`` and ``ActivationSparsity`` on
            the same batches (dev dependencies); their per-image figures land in ``report.peers``.

    Returns an :class:`EnergyReport`. Raises :class:`SpikeliteError` for an empty ``data``, a bad
    profile, or inputs the model rejects.
    """
    from .snn import SpikingNet

    if not isinstance(model, nn.Module):
        raise SpikeliteError(f"measure expects an nn.Module, got {type(model).__name__}")
    if cnn is not None and not isinstance(cnn, nn.Module):
        raise SpikeliteError(f"cnn must be an nn.Module, got {type(cnn).__name__}")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise SpikeliteError(f"samples must be a positive integer or None, got {samples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SpikeliteError(f"batch_size must be a positive integer, got {batch_size!r}")
    accuracy = _check_fraction("accuracy", accuracy)
    cnn_accuracy = _check_fraction("cnn_accuracy", cnn_accuracy)
    profs = resolve_profiles(profiles)

    device = _model_device(model)
    T = model.T if isinstance(model, SpikingNet) else None
    counter = _Counter(model, time_steps=T)
    cnn_counter = _Counter(cnn, spiking=False) if cnn is not None else None
    peer = None
    images = correct = labelled = cnn_correct = cnn_labelled = 0
    try:
        with _inference([model] + ([cnn] if cnn is not None else []), device):
            for k, (x, y) in enumerate(_batches(data, batch_size)):
                if samples is not None:
                    left = samples - images
                    if left <= 0:
                        break
                    if x.shape[0] > left:
                        x = x[:left]
                        y = None if y is None else y[:left]
                n = int(x.shape[0])
                if n == 0:
                    continue
                x = x.to(device)
                torch.manual_seed(_batch_seed(seed, k))
                with counter.counting(n):
                    out = _run_model(model, x, "model")
                c, lab = _count_correct(out, y, n)
                correct, labelled = correct + c, labelled + lab
                if cnn is not None:
                    torch.manual_seed(_batch_seed(seed, k))
                    with cnn_counter.counting(n):
                        cout = _run_model(cnn, x, "CNN")
                    c, lab = _count_correct(cout, y, n)
                    cnn_correct, cnn_labelled = cnn_correct + c, cnn_labelled + lab
                if peers:
                    if peer is None:
                        peer = _Peers(model)
                    peer.run(x, y, _batch_seed(seed, k))
                images += n
    finally:
        if peer is not None:
            peer.close()
    if images == 0:
        raise SpikeliteError("data holds no samples: nothing to measure (empty tensor or loader)")
    report = _finish(counter, model, images, profs, correct, labelled, name)
    if peer is not None:
        report.peers = peer.result()
    if accuracy is not None:
        report.accuracy = accuracy
    if report.spiking:
        report.comparison = _compare(report, profs, cnn_counter, cnn, images, cnn_correct, cnn_labelled,
                                     accuracy, cnn_accuracy)
    return report


def _compare(report: EnergyReport, profiles: list[EnergyProfile], cnn_counter: _Counter | None,
             cnn: nn.Module | None, images: int, cnn_correct: int, cnn_labelled: int, accuracy,
             cnn_accuracy) -> Comparison:
    if cnn_counter is not None:
        cnn_report = _finish(cnn_counter, cnn, images, profiles, cnn_correct, cnn_labelled, None)
        report.cnn_energy = cnn_report.energy
        cnn_source = f"{cnn_report.model}, run on the same {images} images ({_si(cnn_report.macs)} MACs)"
        measured_cnn_acc = cnn_report.accuracy
    else:
        report.cnn_energy = [p.energy(0.0, report.cnn_macs, 0.0) for p in profiles]
        cnn_source = "the SNN's own layers for one time step, dense (same weights and shapes)"
        measured_cnn_acc = None
    profile = profiles[0]
    cnn_e = report.cnn_energy[0]
    snn_e = report.energy_for(profile.name)
    acc_src = []
    snn_acc = report.accuracy
    if accuracy is not None:
        acc_src.append("SNN accuracy given")
    elif snn_acc is not None:
        acc_src.append(f"SNN accuracy measured on {images} images")
    cnn_acc = cnn_accuracy if cnn_accuracy is not None else measured_cnn_acc
    if cnn_accuracy is not None:
        acc_src.append("CNN accuracy given")
    elif measured_cnn_acc is not None:
        acc_src.append(f"CNN accuracy measured on {images} images")
    diff = (snn_acc - cnn_acc) if snn_acc is not None and cnn_acc is not None else None
    ratio = cnn_e.total_pj / snn_e.total_pj if snn_e.total_pj > 0 else None
    return Comparison(profile=profile.name, snn_energy_mj=snn_e.total_mj, cnn_energy_mj=cnn_e.total_mj,
                      energy_ratio=ratio, snn_accuracy=snn_acc, cnn_accuracy=cnn_acc, accuracy_diff=diff,
                      cnn_source=cnn_source, accuracy_source="; ".join(acc_src) or "no accuracy given or measurable")


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def _si(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.3f}G"
    if a >= 1e6:
        return f"{v / 1e6:.3f}M"
    if a >= 1e3:
        return f"{v / 1e3:.2f}k"
    return f"{v:.1f}" if v != int(v) else f"{int(v)}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _grid(head: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    out = []
    for r in [head] + rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
    return out


def _rel(peer: float, ours: float) -> str:
    if ours == 0:
        return "(=)" if peer == 0 else "(ours 0)"
    return f"({100 * (peer - ours) / ours:+.3f}%)"


def _render_peers(r: EnergyReport) -> list[str]:
    sj, nb = r.peers["spikingjelly"], r.peers["neurobench"]
    head = ["per image", "spikelite", f"SpikingJelly {sj['version']}", f"NeuroBench {nb['version']}"]
    rows = [
        ["ACs", _si(r.acs), f"SynOpCounter {_si(sj['synops'])} {_rel(sj['synops'], r.acs)}",
         f"Effective_ACs {_si(nb['effective_acs'])} {_rel(nb['effective_acs'], r.acs)}"],
        ["MACs (dense)", _si(r.macs), f"MACCounter, BN ignored {_si(sj['mac_counter'])} "
                                      f"{_rel(sj['mac_counter'], r.macs)}", f"Dense (all synapses) {_si(nb['dense'])}"],
        ["MACs (effective)", _si(r.effective_macs), f"MACCounter with BN {_si(sj['mac_counter_with_bn'])}",
         f"Effective_MACs {_si(nb['effective_macs'])} {_rel(nb['effective_macs'], r.effective_macs)}"],
        ["all additions", "-", f"ACCounter {_si(sj['ac_counter'])}", "-"],
        ["activation sparsity", _pct(r.activation_sparsity), "-", _pct(nb["activation_sparsity"])],
    ]
    return ["peer counters on the same batches (conventions: docs/energy.md)"] + _grid(head, rows, set())


def _render_table(r: EnergyReport, layers: bool) -> str:
    steps = f"all {r.time_steps} steps" if r.time_steps else "one pass"
    lines = [f"{r.model}: per image ({steps} of one inference), averaged over {r.samples} samples"]
    lines.append(f"  params {_si(r.params)}   CNN dense MACs {_si(r.cnn_macs)}   accuracy {_pct(r.accuracy)}")
    if r.spiking:
        lines.append(f"  ACs {_si(r.acs)}   MACs {_si(r.macs)} (effective {_si(r.effective_macs)}"
                     + (f", unfoldable BN {_si(r.bn_macs)}" if r.bn_macs else "") + ")"
                     + f"   neuron updates {_si(r.neuron_updates)}   spikes {_si(r.spikes)}")
        lines.append(f"  firing rate {_pct(r.firing_rate)}   activation sparsity {_pct(r.activation_sparsity)}")
    else:
        lines.append(f"  MACs {_si(r.macs)} (effective {_si(r.effective_macs)})   no spiking neurons: all MACs")
    lines.append("")
    head = ["profile", "MAC pJ", "AC pJ", "compute mJ", "memory mJ", "total mJ"]
    if r.cnn_energy:
        head += ["CNN mJ", "CNN/SNN"]
    rows = []
    for k, (p, e) in enumerate(zip(r.profiles, r.energy)):
        row = [p.name, f"{p.mac_pj:g}", f"{p.ac_pj:g}", f"{e.compute_pj * 1e-9:.6f}", f"{e.memory_pj * 1e-9:.6f}",
               f"{e.total_mj:.6f}"]
        if r.cnn_energy:
            c = r.cnn_energy[k]
            row += [f"{c.total_mj:.6f}", f"{c.total_pj / e.total_pj:.2f}x" if e.total_pj > 0 else "-"]
        rows.append(row)
    lines += _grid(head, rows, set(range(1, len(head))))
    c = r.comparison
    if c is not None:
        lines.append("")
        ratio = "-" if c.energy_ratio is None else f"{c.energy_ratio:.2f}x"
        acc = ""
        if c.snn_accuracy is not None or c.cnn_accuracy is not None:
            diff = "-" if c.accuracy_diff is None else f"{100 * c.accuracy_diff:+.2f} points"
            acc = f"; accuracy SNN {_pct(c.snn_accuracy)} vs CNN {_pct(c.cnn_accuracy)} ({diff})"
        lines.append(f"SNN vs CNN ({c.profile}): {c.snn_energy_mj:.6f} mJ vs {c.cnn_energy_mj:.6f} mJ, "
                     f"CNN/SNN energy {ratio}{acc}")
        lines.append(f"  CNN: {c.cnn_source}; {c.accuracy_source}")
    if r.peers:
        lines.append("")
        lines += _render_peers(r)
    if layers:
        lines.append("")
        head = ["layer", "type", "op", "in density", "ACs", "MACs", "effective MACs", "CNN MACs"]
        rows = [[x.name, x.type, x.op, _pct(x.input_density), _si(x.acs), _si(x.macs), _si(x.effective_macs),
                 _si(x.cnn_macs)] for x in r.layers]
        lines += _grid(head, rows, {3, 4, 5, 6, 7})
        if r.neurons:
            lines.append("")
            head = ["neuron layer", "type", "neurons", "updates", "spikes", "firing rate"]
            rows = [[n.name, n.type, _si(n.neurons), _si(n.updates), _si(n.spikes), _pct(n.firing_rate)]
                    for n in r.neurons]
            lines += _grid(head, rows, {2, 3, 4, 5})
    for note in r.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
