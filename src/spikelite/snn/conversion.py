"""Conversion that converges: :func:`convert`, :func:`correct_bias` and :func:`layer_errors`.

``convert(cnn, T, calibration)`` turns a trained CNN into a rate-coded SNN of
:class:`~spikelite.snn.neuron.ConversionIF` neurons whose accuracy approaches the CNN's as T grows
(docs/conversion.md, "Conversion that converges"); a QCFS CNN converts exactly at T = L with bursts.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ..errors import SpikeliteError
from .layers import TimeBroadcast, _is_activation_module
from .neuron import ConversionIF
from .net import _MAX_POOL_FUNCTIONS, SpikingNet, _owner_path, _StopForward, spikify
from .window import chunk_aware, time_window

__all__ = ["convert", "correct_bias", "layer_errors"]

def convert(model: nn.Module, T: int = 4, calibration: torch.Tensor | None = None, *, percentile: float = 99.9,
            signed: bool = True, v_init: float = 0.5, encoding: str = "direct",
            neuron: dict | None = None, burst: int = 1, rate: int = 1) -> SpikingNet:
    """Convert a trained CNN into a rate-coded SNN that converges to it as T grows (no training).

    Every activation becomes a :class:`~spikelite.snn.ConversionIF` layer: soft reset, membrane
    starting at ``v_init`` × threshold, spikes that carry the threshold as their amplitude, and (``signed``)
    negative spikes that take back an excess spike. Thresholds come from the CNN: a QCFS activation's
    learned λ (a CNN trained to be converted), else the ``percentile`` of that activation's output on
    ``calibration`` (ReLU6 capped at 6). BatchNorm statistics are the CNN's, untouched: the time average
    of every layer's input is then the CNN's (clipped, quantised) activation, and as T grows the network
    computes the CNN clipped at the thresholds (docs/conversion.md, "Conversion that converges").

    Max-pooling after the first neuron is refused: the maximum of spike trains is not the spike train of
    the maximum (build the model with average pooling, ``pool="avg"``). ``burst``: up to that many spikes
    per step (a neuron that received its charge late catches up; its count never exceeds t): with
    ``burst >= T`` every layer's count after T steps is exactly ``clamp(round(Σx/θ), 0, T)``, so a QCFS CNN
    with L levels converts exactly at T = L. ``rate=r`` (with ``burst >= r``): up to r spikes per step on
    average, thresholds divided by r, so T steps carry ``r·T`` levels and a QCFS CNN with ``L = r·T`` levels
    converts exactly at T = L / r (e.g. L = 8 at T = 4 with r = 2, burst 8). ``neuron``: further
    :class:`~spikelite.snn.ConversionIF` options for fine-tuning (``surrogate``, ``detach_reset``,
    ``learn_threshold``).
    """
    if not isinstance(model, nn.Module):
        raise SpikeliteError(f"convert expects an nn.Module, got {type(model).__name__}")
    if isinstance(model, SpikingNet):
        raise SpikeliteError("model is already a SpikingNet; convert takes the CNN")
    try:
        percentile = float(percentile)
    except (TypeError, ValueError):
        raise SpikeliteError(f"percentile must be a number in (0, 100], got {percentile!r}") from None
    if not 0 < percentile <= 100:
        raise SpikeliteError(f"percentile must be in (0, 100], got {percentile}")
    if calibration is not None:
        if not isinstance(calibration, torch.Tensor):
            raise SpikeliteError(f"calibration must be a tensor [N, C, H, W], got {type(calibration).__name__}")
        if not torch.isfinite(calibration).all():
            raise SpikeliteError("calibration images hold NaN or infinite values")
    extra = dict(neuron or {})
    kind = str(extra.pop("kind", "conversion_if")).lower()
    if kind != "conversion_if":
        raise SpikeliteError(f"convert builds ConversionIF neurons (kind 'conversion_if'), not {kind!r}")
    rate = extra.pop("rate", rate)
    neuron = {**extra, "kind": "conversion_if", "v_init": v_init, "signed": signed, "burst": extra.get("burst", burst),
              "rate": rate}
    net = spikify(model, T=T, neuron=neuron, encoding=encoding, balance=percentile, calibration=calibration,
                  balance_mode="cnn")
    pools = list(net._temporal_maxpools)
    pools += [f"{n.target.__name__}() in {_owner_path(n) or '<root>'}" for n in net.body.graph.nodes
              if n.op == "call_function" and n.target in _MAX_POOL_FUNCTIONS]
    if pools:
        raise SpikeliteError(
            f"cannot convert max-pooling of spike trains exactly ({', '.join(pools[:3])}): the maximum of spike "
            "trains is not the spike train of the maximum. Use average pooling (zoo models: pool=avg)")
    if rate > 1:  # r spikes per step on average: the thresholds (and spike amplitudes) are the CNN's / r
        for m in net.modules():
            if isinstance(m, ConversionIF):
                m.set_threshold(float(m.v_threshold) / rate)
    return net


class _TimeMean:
    """A neuron layer's time-averaged output ``[N, ...]`` from its calls in one forward: one call over all T
    steps, or, in a chunked run (:meth:`SpikingNet.forward_steps` with ``time_chunk``), one call per window,
    summed in float64 and divided by T after the last window (so memory stays that of one window)."""

    def __init__(self):
        self.value: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._windows: set[tuple[int, int]] = set()

    def add(self, module: nn.Module, out: torch.Tensor) -> bool:
        """Take one call's output; True once the average is complete."""
        out = out.detach()
        win = time_window()
        if win is None:
            self.value = out.view(module.T, -1, *out.shape[1:]).mean(0)
            return True
        if (win.run, win.index) in self._windows:  # a second call in the same window: the first one counts
            return False
        self._windows.add((win.run, win.index))
        part = out.view(win.steps, -1, *out.shape[1:]).sum(0, dtype=torch.float64)
        self._sum = part if self._sum is None else self._sum.add_(part)
        if not win.last:
            return False
        self.value = (self._sum / win.total).to(out.dtype)
        self._sum = None
        return True


def _time_mean_output(snn: SpikingNet, act: nn.Module, images: torch.Tensor) -> torch.Tensor | None:
    """The time average of neuron layer ``act``'s output when ``snn`` runs on ``images``; the forward stops
    once it is known. None when the layer is not called."""
    mean = _TimeMean()

    @chunk_aware
    def grab(m, args, out):
        if mean.add(m, out):
            raise _StopForward

    h = act.register_forward_hook(grab)
    try:
        with torch.no_grad():
            snn(images)
    except _StopForward:
        pass
    finally:
        h.remove()
    return mean.value


def _cnn_activations(cnn: nn.Module, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Every activation module's outputs on ``images``, by module path, one per call (eval mode)."""
    out: dict[str, list[torch.Tensor]] = {}
    handles = [m.register_forward_hook(lambda mod, a, o, path=path: out.setdefault(path, []).append(o.detach()))
               for path, m in cnn.named_modules() if _is_activation_module(m)]
    was = cnn.training
    cnn.eval()
    try:
        with torch.no_grad():
            cnn(images)
    finally:
        for h in handles:
            h.remove()
        cnn.train(was)
    return out


def _site_output(calls: dict[str, list[torch.Tensor]], path: str) -> torch.Tensor | None:
    """The CNN activation that the SNN's neuron layer at ``path`` replaced (``p__k``: the k-th call of ``p``)."""
    base, _, k = path.partition("__")
    found = calls.get(base) or []
    idx = int(k) if k.isdigit() else 0
    return found[idx] if idx < len(found) else None


def _feeding_batchnorm(snn: SpikingNet, path: str) -> nn.Module | None:
    """The BatchNorm whose output only the neuron layer at ``path`` reads (through a time broadcast), or None."""
    for node in snn.body.graph.nodes:
        if node.op == "call_module" and node.target == path and node.args and isinstance(node.args[0], fx.Node):
            src = node.args[0]
            if src.op == "call_module" and isinstance(snn.body.get_submodule(src.target), TimeBroadcast):
                src = src.args[0] if isinstance(src.args[0], fx.Node) and len(src.users) == 1 else None
            if src is None or src.op != "call_module" or len(src.users) != 1:
                return None
            m = snn.body.get_submodule(src.target)
            ok = type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) and m.affine
            return m if ok else None
    return None


def correct_bias(snn: SpikingNet, cnn: nn.Module, images: torch.Tensor) -> int:
    """Bias correction after conversion (SNN calibration, Li et al. 2021), in place, layer by layer.

    For each neuron layer in graph order, with the layers before it already corrected: the mean, per
    channel, of the SNN's time-averaged output (rate × amplitude) at ``snn.T`` on ``images`` is compared
    with the mean of the CNN's activation at that site, and the difference is added to the bias of the
    BatchNorm that feeds the neuron (where that BatchNorm feeds it alone). It removes the systematic shift
    that rounding and clipping leave, which compounds with depth. Returns the number of layers corrected."""
    if not isinstance(snn, SpikingNet):
        raise SpikeliteError(f"correct_bias expects a SpikingNet, got {type(snn).__name__}")
    calls = _cnn_activations(cnn, images)
    was = snn.training
    snn.eval()
    n = 0
    try:
        for path, act in snn.spiking_layers():
            bn = _feeding_batchnorm(snn, path)
            target = _site_output(calls, path)
            if bn is None or target is None or target.dim() < 2 or target.shape[1] != bn.num_features:
                continue
            out = _time_mean_output(snn, act, images)
            if out is None or out.shape != target.shape:
                continue
            dims = [0] + list(range(2, out.dim()))
            delta = target.float().mean(dims) - out.float().mean(dims)
            with torch.no_grad():
                bn.bias.add_(delta.to(bn.bias.dtype))
            n += 1
    finally:
        snn.train(was)
    return n


def layer_errors(cnn: nn.Module, snn: SpikingNet, images: torch.Tensor) -> list[dict]:
    """Per neuron layer, how far the SNN's time-averaged output (rate × amplitude) is from the CNN's
    activation at the same site on ``images``: ``{"layer", "error", "cnn_mean", "snn_mean"}`` in graph
    order, ``error = mean|SNN − CNN| / mean|CNN|``. Sites are matched by module path (a module called
    several times: by call order); functional activations (``act_fn<k>``) are left out."""
    cnn_out = _cnn_activations(cnn, images)
    layers = snn.spiking_layers()
    means = {path: _TimeMean() for path, _ in layers}  # window by window in a chunked run (large T x N)

    def record(mod, args, out, path):
        means[path].add(mod, out)  # (a hook returns None: a value would replace the layer's output)

    handles = [act.register_forward_hook(chunk_aware(lambda mod, a, out, path=path: record(mod, a, out, path)))
               for path, act in layers]
    was = snn.training
    snn.eval()
    try:
        with torch.no_grad():
            snn(images)
    finally:
        for h in handles:
            h.remove()
        snn.train(was)
    snn_out = {path: m.value for path, m in means.items() if m.value is not None}
    rows = []
    for path, _ in layers:
        target = _site_output(cnn_out, path)
        if target is None or path not in snn_out or target.shape != snn_out[path].shape:
            continue
        a, b = target.float(), snn_out[path].float()
        denom = float(a.abs().mean())
        rows.append({"layer": path, "error": float((b - a).abs().mean()) / denom if denom > 0 else float("nan"),
                     "cnn_mean": float(a.mean()), "snn_mean": float(b.mean())})
    return rows
