"""Energy profiles: what one operation costs.

:class:`EnergyProfile` (pJ per MAC, per AC, per neuron-state update, optional :class:`MemoryCost` per
byte), the built-in profiles (:data:`PROFILES`, Horowitz 2014, 45 nm), profiles from YAML
(:func:`load_profiles`), :func:`resolve_profiles` (names, paths and objects to a list) and
:class:`EnergyBreakdown`, the energy of one set of counts under one profile.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from .._io import read_yaml_mapping
from ..errors import SpikeliteError

__all__ = ["EnergyProfile", "MemoryCost", "EnergyBreakdown", "PROFILES", "DEFAULT_PROFILE", "HOROWITZ_2014",
           "get_profile", "load_profiles", "resolve_profiles"]

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
        weight_bits: the width of the weight operand the MAC and AC figures are for (32 for fp32). Used
            only to price a MAC whose other operand is a ``b``-bit activation (a quantised CNN's,
            :meth:`lowbit_energy`): ``ac_pj + (mac_pj - ac_pj) * min(1, b / weight_bits)``, the
            multiplier's share scaled with the width of the narrower operand (an array multiplier's
            energy grows with the product of its operand widths; Horowitz 2014).
    """

    name: str
    mac_pj: float
    ac_pj: float
    neuron_update_pj: float = 0.0
    memory: MemoryCost | None = None
    source: str = ""
    weight_bits: int = 32

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise SpikeliteError(f"energy profile name must be a non-empty string, got {self.name!r}")
        for key in ("mac_pj", "ac_pj", "neuron_update_pj"):
            _check_cost(self.name, key, getattr(self, key))
        if isinstance(self.weight_bits, bool) or not isinstance(self.weight_bits, int) or self.weight_bits < 1:
            raise SpikeliteError(f"energy profile {self.name!r}: weight_bits must be a positive integer, "
                                 f"got {self.weight_bits!r}")
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

    def lowbit_mac_pj(self, activation_bits: int) -> float:
        """One MAC whose activation operand has ``activation_bits`` bits (the weight as the profile's)."""
        share = min(1.0, activation_bits / self.weight_bits)
        return self.ac_pj + (self.mac_pj - self.ac_pj) * share

    def lowbit_energy(self, lowbit_macs: float, macs: float, activation_bits: int) -> "EnergyBreakdown":
        """Energy of a quantised-activation CNN: ``lowbit_macs`` MACs on ``activation_bits``-bit activations
        (priced by :meth:`lowbit_mac_pj`) and ``macs`` full-width MACs (the stem on the image, layers after
        pooling or residual sums), in pJ; memory traffic as for any synaptic operation."""
        mac_e = lowbit_macs * self.lowbit_mac_pj(activation_bits) + macs * self.mac_pj
        weight_e = 0.0
        if self.memory is not None:
            weight_e = (lowbit_macs + macs) * self.memory.weight_bytes * self.memory.pj_per_byte
        return EnergyBreakdown(profile=self.name, ac_pj=0.0, mac_pj=mac_e, neuron_pj=0.0,
                               weight_memory_pj=weight_e, state_memory_pj=0.0)

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
        EnergyProfile("45nm-fp16", mac_pj=1.5, ac_pj=0.4, weight_bits=16,
                      source=HOROWITZ_2014 + ": fp16 mult 1.1 + add 0.4 pJ; add 0.4 pJ"),
        EnergyProfile("45nm-int8", mac_pj=0.23, ac_pj=0.03, weight_bits=8,
                      source=HOROWITZ_2014 + ": int8 mult 0.2 + add 0.03 pJ; add 0.03 pJ (8-bit accumulate)"),
        EnergyProfile("45nm-fp32-mem", mac_pj=4.6, ac_pj=0.9,
                      memory=MemoryCost(pj_per_byte=12.5, weight_bytes=4.0, state_bytes=4.0),
                      source=HOROWITZ_2014 + ": fp32 arithmetic plus 1 MB SRAM reads, 100 pJ per 64 bits "
                                             "(12.5 pJ/byte): one fp32 weight per synaptic op, one fp32 "
                                             "membrane read + write per neuron update"),
    )
}
DEFAULT_PROFILE = "45nm-fp32"

_PROFILE_KEYS = {"name", "mac_pj", "ac_pj", "neuron_update_pj", "memory", "source", "weight_bits"}
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
                             f"(required: {list(_REQUIRED_KEYS)}; optional: neuron_update_pj, memory, source, weight_bits)")
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
    bits = d.get("weight_bits", 32)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise SpikeliteError(f"{where}: profile {name!r}: weight_bits must be a positive integer, got {bits!r}")
    return EnergyProfile(name=name, mac_pj=float(d["mac_pj"]), ac_pj=float(d["ac_pj"]),
                         neuron_update_pj=float(d.get("neuron_update_pj", 0.0)), memory=memory,
                         source=str(d.get("source", where)), weight_bits=bits)


def load_profiles(path: str | os.PathLike) -> list[EnergyProfile]:
    """Energy profiles from a YAML file.

    Either one profile (a mapping with ``mac_pj`` and ``ac_pj``, optional ``name`` — default the
    file's stem —, ``neuron_update_pj``, ``memory: {pj_per_byte, weight_bytes, state_bytes}`` and
    ``source``), or several under ``profiles:`` keyed by name. A missing or unknown field raises
    :class:`SpikeliteError` naming it.
    """
    p = Path(path)
    doc = read_yaml_mapping(p, "energy profile file (one profile, or 'profiles:')", allow_empty=False)
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
