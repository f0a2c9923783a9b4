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

Large T: a :class:`~spikelite.snn.SpikingNet` runs inference in windows of time steps when ``T x batch``
is large (``time_chunk``, docs/performance.md), so each temporal layer is called once per window. The
hooks add up the windows of one call and settle it after the last one (spikes or not, folded or not,
with the thresholds known when the call began), so the counts are those of the one-pass forward.

Energy: :class:`EnergyProfile` charges ``ac_pj`` per AC and ``mac_pj`` per MAC (the paper's
``E = 0.9 pJ x AC + 4.6 pJ x MAC``, 45 nm fp32, Horowitz 2014), optionally a per-neuron-update cost
and memory traffic per byte (weights read per synaptic operation, membrane state read and written
per update). Built-in profiles: :data:`PROFILES`; custom ones from YAML (:func:`load_profiles`).

See docs/energy.md for the conventions, the comparison with SpikingJelly's and NeuroBench's
counters and measured figures.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpikeliteError
from ..snn import LIF, ConversionIF, chunk_aware, time_window
from .batches import _batch_seed, _batches, _inference, _model_device, _model_name, _run_model
from .counting import SYNAPTIC_TYPES, _BN_TYPES, _first_tensor, _neuron_types, is_binary, spike_events, synaptic_ops
from .peers import _Peers
from .profiles import EnergyProfile, resolve_profiles
from .results import Comparison, EnergyReport, LayerCount, LowBit, NeuronCount, _si

__all__ = ["measure"]

# ----------------------------------------------------------------------------------------------
# The counter
# ----------------------------------------------------------------------------------------------


class _LayerStats:
    __slots__ = ("name", "type", "calls", "ac_calls", "mac_calls", "acs", "macs", "eff_macs", "dense",
                 "dense_static", "nonzero", "elements", "folded_calls", "lowbit_macs",
                 "lowbit_dense")

    def __init__(self, name: str, type_: str):
        self.name, self.type = name, type_
        self.calls = self.ac_calls = self.mac_calls = self.folded_calls = 0
        self.acs = self.macs = self.eff_macs = self.dense = self.nonzero = self.elements = 0
        self.lowbit_macs = 0  # a quantised CNN's MACs on nonzero low-bit activations (real fan-out)
        self.lowbit_dense = 0  # the dense MACs of those calls
        self.dense_static = 0  # dense MACs of the calls on exactly the batch's images (run once, not per step)

    def cnn_macs(self, time_steps: int | None) -> float:
        """The CNN's dense MACs: static calls once, the others divided by the time steps they cover."""
        return self.dense_static + (self.dense - self.dense_static) / (time_steps or 1)


class _PendingCall:
    """One call of a synaptic layer or BatchNorm in a chunked run (time windows, see
    :meth:`~spikelite.snn.SpikingNet.forward_steps`), window by window: the parts that add up, and what
    decides how the whole call counts (spikes or not), settled after its last window so that the counts are
    those of the one-pass call."""

    __slots__ = ("amplitudes", "spikes", "acs", "eff", "dense", "nonzero", "elements", "direct", "binary",
                 "fired", "n")

    def __init__(self, amplitudes: frozenset):
        self.amplitudes = amplitudes  # the thresholds known when the call began (its first window)
        self.spikes = self.binary = True
        self.direct = self.fired = False
        self.acs = self.eff = self.dense = self.nonzero = self.elements = self.n = 0


class _NeuronStats:
    __slots__ = ("name", "type", "calls", "updates", "spikes", "neurons")

    def __init__(self, name: str, type_: str):
        self.name, self.type = name, type_
        self.calls = self.updates = self.spikes = 0
        self.neurons = 0.0


def _display_names(model: nn.Module) -> dict[nn.Module, str]:
    from ..snn import SpikingActivation, SpikingNet

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
        from ..snn import StepBatchNorm

        for m in model.modules():
            if isinstance(m, SYNAPTIC_TYPES):
                self.layers[m] = _LayerStats(names[m], type(m).__name__)
            elif isinstance(m, (*_BN_TYPES, StepBatchNorm)):
                self.bns[m] = _LayerStats(names[m], type(m).__name__)
        # per-step BatchNorm: a different scale at every step, never folded into the shared conv weights
        self.unfoldable_bns = {m for m in self.bns if isinstance(m, StepBatchNorm)}
        for m in neurons:
            self.neurons[m] = _NeuronStats(names[m], type(m).__name__)
        # average pools whose input is spikes (or QCFS outputs): their output carries the events in each window
        self.pools = [m for m in model.modules() if isinstance(m, _POOL_TYPES)]
        # a CNN with QCFS activations (a convertible CNN): its activations are whole multiples of λ/L, L+1
        # values, so a layer reading them multiplies by a ceil(log2(L+1))-bit operand
        from ..models.qcfs import QCFS

        qcfs = [m for m in model.modules() if isinstance(m, QCFS)] if not self.spiking else []
        self.lowbit_steps = {float(abs(m.threshold) / m.levels) if m.threshold is not None else 1.0 / m.levels
                             for m in qcfs}
        self.activation_bits = max((math.ceil(math.log2(m.levels + 1)) for m in qcfs), default=None)
        # a chunked run calls every temporal layer once per time window: the calls' parts until the last
        self._pending: dict[tuple[nn.Module, int], _PendingCall] = {}
        self._window: tuple[int, int] | None = None
        self._window_calls: dict[nn.Module, int] = {}

    @contextlib.contextmanager
    def counting(self, images: int):
        """Hooks in place for one forward over ``images`` images (and removed after, so other tools
        that copy modules never meet them)."""
        self.images_in_batch = int(images)
        self._pending.clear()
        self._window = None
        hooks = [m.register_forward_hook(self._synaptic_hook) for m in self.layers]
        hooks += [m.register_forward_hook(self._bn_hook) for m in self.bns]
        hooks += [m.register_forward_hook(self._neuron_hook) for m in self.neurons]
        if self.spiking or self.lowbit_steps:
            hooks += [m.register_forward_hook(self._pool_hook) for m in self.pools]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()
            self._pending.clear()

    def _pending_call(self, m: nn.Module, win) -> tuple[tuple, _PendingCall]:
        """The record of the call of ``m`` that time window ``win`` is part of: the k-th call of ``m`` in a
        window continues the k-th call of the window before."""
        if self._window != (win.run, win.index):
            self._window = (win.run, win.index)
            self._window_calls = {}
        k = self._window_calls.get(m, 0)
        self._window_calls[m] = k + 1
        key = (m, k)
        rec = self._pending.get(key)
        if rec is None:
            rec = self._pending[key] = _PendingCall(frozenset(self.amplitudes))
        return key, rec

    def _is_static(self, x: torch.Tensor) -> bool:
        """A call on exactly the batch's images runs once per inference; a SpikingNet's temporal layers
        see ``T*N`` rows (a model of one's own may show ``[T, N, ...]``): T steps in one call."""
        return not self.spiking or x.dim() == 0 or x.shape[0] == self.images_in_batch

    _EVENTS = "_spikelite_energy_events"

    def _input_events(self, x: torch.Tensor, channel_dim: int, steps) -> torch.Tensor | None:
        """Events per element of ``x``: pooled events when ``x`` is a tagged pool output, else spikes or
        QCFS levels read from the values (``steps``: the amplitudes)."""
        tag = getattr(x, self._EVENTS, None)
        if tag is not None and tag[1] == x._version and tag[0].shape == x.shape:
            return tag[0]
        return spike_events(x, steps, channel_dim)

    @chunk_aware  # stateless per call: in a chunked run it tags each window's pooled events
    def _pool_hook(self, m: nn.Module, args, out) -> None:
        """An average pool of spikes folds into the layer that reads it (both are linear): each event in a
        window reaches that layer's outputs at the window's position, with the weight scaled by the pool's
        divisor, so the layer costs one AC per event and fan-out (a QCFS CNN: one low-bit MAC per nonzero
        activation in the window). The output is tagged with the events each window holds."""
        x = _first_tensor(args)
        if x is None or not isinstance(out, torch.Tensor) or x.dim() < 3:
            return
        with torch.no_grad():
            if self.spiking:
                ev = self._input_events(x, 1, self.amplitudes)
                ev = None if ev is None else ev.to(torch.int64).abs()
            else:
                ev = self._input_events(x, 1, self.lowbit_steps)
                ev = None if ev is None else (ev != 0)
            if ev is None:
                return
            pooled = _sum_pool(m, ev.to(torch.float64 if x.device.type == "cpu" else torch.float32), out.shape)
            if pooled is None:
                return
            try:
                setattr(out, self._EVENTS, (pooled.round().to(torch.int64), out._version))
            except Exception:  # pragma: no cover - tensors that refuse attributes
                pass

    @chunk_aware
    def _synaptic_hook(self, m: nn.Module, args, out) -> None:
        x = _first_tensor(args)
        if x is None or not isinstance(out, torch.Tensor):
            return
        st = self.layers[m]
        win = time_window() if self.spiking else None
        key, rec = self._pending_call(m, win) if win is not None else (None, None)
        with torch.no_grad():
            events = self._input_events(x, x.dim() - 1 if isinstance(m, nn.Linear) else 1,
                                        self.amplitudes if rec is None else rec.amplitudes) if self.spiking else None
            eff, dense = synaptic_ops(m, x, out)
            if self.lowbit_steps and not self.spiking:
                levels = self._input_events(x, x.dim() - 1 if isinstance(m, nn.Linear) else 1, self.lowbit_steps)
                if levels is not None:  # a pooled input: one low-bit MAC per nonzero activation in each window
                    pooled = getattr(x, self._EVENTS, None) is not None
                    st.lowbit_macs += synaptic_ops(m, x, out, levels)[0] if pooled else eff
                    st.lowbit_dense += dense
            acs = 0 if events is None else (synaptic_ops(m, x, out, events)[0] if events.dtype != torch.bool else eff)
            nonzero = int((x != 0).sum())
        if rec is None:
            self._count_synaptic(st, events is not None, acs, eff, dense, self._is_static(x), nonzero, x.numel())
        else:  # one window of a call: added up, and counted as the whole call after its last window
            rec.spikes = rec.spikes and events is not None
            rec.acs += acs
            rec.eff += eff
            rec.dense += dense
            rec.nonzero += nonzero
            rec.elements += x.numel()
            if win.last:
                del self._pending[key]
                # a temporal call (T steps of the batch) is never one on exactly the batch's images
                self._count_synaptic(st, rec.spikes, rec.acs, rec.eff, rec.dense, False, rec.nonzero, rec.elements)
        # mark the output (and its version: an in-place op changes it) so that a BatchNorm reading it
        # directly is known to fold into m even when the output happens to be all zeros
        try:
            setattr(out, self._TAG, out._version)
        except Exception:  # pragma: no cover - tensors that refuse attributes
            pass

    def _count_synaptic(self, st: _LayerStats, spikes: bool, acs: int, eff: int, dense: int, static: bool,
                        nonzero: int, elements: int) -> None:
        """One call of a synaptic layer: ACs when its input was spikes, else MACs."""
        st.calls += 1
        if spikes:
            st.ac_calls += 1
            st.acs += acs
        else:
            st.mac_calls += 1
            st.macs += dense
            st.eff_macs += eff
        st.dense += dense
        if static:
            st.dense_static += dense
        st.nonzero += nonzero
        st.elements += elements

    @chunk_aware
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
        win = time_window() if self.spiking else None
        with torch.no_grad():
            tag = getattr(x, self._TAG, None)
            direct = tag is not None and tag == x._version
            if win is None:
                on_spikes = self.spiking and not direct and is_binary(x) and bool((x != 0).any())
                self._count_bn(m, st, on_spikes, x.numel(), self._is_static(x))
                return
            key, rec = self._pending_call(m, win)
            rec.direct = rec.direct or direct
            if not rec.direct and rec.binary:
                rec.binary = is_binary(x)
                rec.fired = rec.fired or (rec.binary and bool((x != 0).any()))
            rec.n += x.numel()
        if win.last:
            del self._pending[key]
            self._count_bn(m, st, not rec.direct and rec.binary and rec.fired, rec.n, False)

    def _count_bn(self, m: nn.Module, st: _LayerStats, on_spikes: bool, n: int, static: bool) -> None:
        st.calls += 1
        if not (on_spikes or m in self.unfoldable_bns):
            st.folded_calls += 1
            return
        st.macs += n
        st.dense += n
        st.eff_macs += n
        if static:
            st.dense_static += n
        st.mac_calls += 1

    @chunk_aware
    def _neuron_hook(self, m: nn.Module, args, out) -> None:
        x = _first_tensor(args)
        s = _first_tensor(out)
        if x is None or s is None:
            return
        st = self.neurons[m]
        win = time_window()
        if win is None or win.index == 0:  # a chunked run calls it once per window: one call all the same
            st.calls += 1
        st.updates += x.numel()
        if isinstance(m, ConversionIF):  # its spikes are ±kθ: k events each; an input of that amplitude is spikes
            th = m.v_threshold.detach().to(s.dtype)
            self.amplitudes.add(float(th))
            st.spikes += int((s.abs() / th).round().sum())
        else:
            st.spikes += int((s != 0).sum())
        if self.time_steps is None and x.dim() >= 2 and isinstance(m, (LIF, ConversionIF)):
            self.time_steps = int(x.shape[0]) if win is None else win.total  # multi-step neurons: [T, N, ...]


_POOL_TYPES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
               nn.AdaptiveAvgPool3d)


def _sum_pool(m: nn.Module, ev: torch.Tensor, shape) -> torch.Tensor | None:
    """``ev`` summed over each window of average pool ``m`` (None for a pool this cannot mirror exactly)."""
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        nd = ev.dim() - 2
        size = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size,) * nd
        if any(s not in (1, None) for s in size):
            return None  # global pooling only
        dims = tuple(range(2, ev.dim()))
        keep = [d for d, s in zip(dims, size) if s is None]
        out = ev.sum(dim=tuple(d for d in dims if d not in keep), keepdim=True)
    elif isinstance(m, nn.AvgPool1d):
        out = F.avg_pool2d(ev.unsqueeze(-2), (1, m.kernel_size[0]), (1, m.stride[0]), (0, m.padding[0]),
                           m.ceil_mode, True, 1).squeeze(-2)
    else:
        fn = F.avg_pool2d if isinstance(m, nn.AvgPool2d) else F.avg_pool3d
        out = fn(ev, m.kernel_size, m.stride, m.padding, m.ceil_mode, True, 1)
    return out if tuple(out.shape) == tuple(shape) else None


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
    from ..models._info import count_params

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
    lowbit = None
    if counter.activation_bits is not None:
        q = sum(st.lowbit_macs for st in counter.layers.values()) * per
        q_dense = sum(st.lowbit_dense for st in counter.layers.values()) * per
        rest = macs - q_dense  # the full-width MACs: layers whose input is not a QCFS output (the stem, ...)
        lowbit = LowBit(activation_bits=counter.activation_bits, lowbit_macs=q, lowbit_dense_macs=q_dense,
                        full_macs=rest,
                        energy=[p.lowbit_energy(q, rest, counter.activation_bits) for p in profiles])
    return EnergyReport(
        model=name or _model_name(model), samples=images, spiking=spiking,
        time_steps=counter.time_steps if spiking else None, params=count_params(model),
        acs=acs, macs=macs, effective_macs=eff, dense_macs=dense, cnn_macs=cnn, bn_macs=bn_macs,
        neuron_updates=updates, spikes=spikes, firing_rate=firing,
        activation_sparsity=None if firing is None else 1.0 - firing,
        accuracy=(correct / labelled) if labelled else None,
        layers=rows, neurons=nrows, energy=energy, comparison=None, profiles=list(profiles), notes=notes,
        lowbit=lowbit,
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
    from ..snn import SpikingNet

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
