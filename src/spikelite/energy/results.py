"""The result objects of :func:`~spikelite.energy.measure`, and their terminal rendering.

:class:`LayerCount` (one synaptic or BatchNorm layer), :class:`NeuronCount` (one neuron layer),
:class:`Comparison` (the SNN against its CNN) and :class:`EnergyReport` (all of it, with
``to_dict``, ``to_json`` and ``table``); the table, its number formats and the peer-counter
rows are drawn here.
"""

from __future__ import annotations

import dataclasses
import json

from ..errors import SpikeliteError
from .profiles import EnergyBreakdown, EnergyProfile

__all__ = ["LayerCount", "NeuronCount", "Comparison", "LowBit", "EnergyReport"]

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
class LowBit:
    """A quantised-activation CNN (QCFS activations, L + 1 values) priced as a low-bit network, per image.

    ``lowbit_macs``: MACs whose activation operand is a nonzero QCFS output (real fan-out: zeros are
    skipped, as an SNN skips silence), each priced at :meth:`EnergyProfile.lowbit_mac_pj` for
    ``activation_bits`` = ceil(log2(L + 1)); ``lowbit_dense_macs``: the same calls counted dense;
    ``full_macs``: the MACs on inputs that are not QCFS outputs (the stem on the image, layers after
    pooling or residual sums), at the profile's full MAC price. ``energy``: one breakdown per profile.
    The yardstick an SNN converted from this CNN must beat to be worth its time steps."""

    activation_bits: int
    lowbit_macs: float
    lowbit_dense_macs: float
    full_macs: float
    energy: list[EnergyBreakdown]

    def energy_for(self, profile: str) -> EnergyBreakdown | None:
        return next((e for e in self.energy if e.profile == profile), None)

    def to_dict(self) -> dict:
        return {"activation_bits": self.activation_bits, "lowbit_macs": self.lowbit_macs,
                "lowbit_dense_macs": self.lowbit_dense_macs, "full_macs": self.full_macs,
                "energy": [e.to_dict() for e in self.energy]}


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
    lowbit: LowBit | None = None

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
            "lowbit": None if self.lowbit is None else self.lowbit.to_dict(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self, layers: bool = False) -> str:
        """A terminal report (``layers=True`` adds one row per layer and per neuron layer)."""
        return _render_table(self, layers)


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
    if r.lowbit is not None:
        q = r.lowbit
        lines.append("")
        lines.append(f"as a low-bit CNN ({q.activation_bits}-bit QCFS activations, zeros skipped): "
                     f"{_si(q.lowbit_macs)} low-bit MACs (dense {_si(q.lowbit_dense_macs)}) + {_si(q.full_macs)} "
                     "full-width MACs")
        rows = []
        for p, e in zip(r.profiles, q.energy):
            rows.append([p.name, f"{p.lowbit_mac_pj(q.activation_bits):.4g}", f"{p.mac_pj:g}", f"{e.total_mj:.6f}"])
        lines += _grid(["profile", "low-bit MAC pJ", "MAC pJ", "total mJ"], rows, {1, 2, 3})
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
