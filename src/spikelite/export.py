"""Export trained models: NIR (spiking networks, for neuromorphic hardware), ONNX and TorchScript.

``export(model, "net.nir")`` writes a :class:`~spikelite.snn.SpikingNet` as a NIR graph (the
Neuromorphic Intermediate Representation read by Lava/Loihi, SpiNNaker2, Sinabs/Rockpool, snnTorch,
Norse and SpikingJelly); ``"net.onnx"`` and ``"net.pt"`` write ONNX and TorchScript for CNNs and SNNs.
Every file is written to a temporary file in the target directory, read back and run on a check batch
against the PyTorch model, and only then moved into place (``os.replace``): a failed export never
leaves a partial or unchecked file.

NIR, in short (docs/export.md has the derivation):

* Each spiking layer becomes a NIR ``LIF`` (or ``IF``) node with per-neuron parameter arrays.
  NIR's LIF is continuous-time, ``tau dv/dt = (v_leak - v) + r I``; forward Euler with step ``dt``
  gives ``v += (dt/tau) (r I - (v - v_leak))``. We write ``tau = τ·dt`` (τ in steps), ``v_leak =
  v_reset`` and ``r = 1`` (``decay_input=True``) or ``r = τ`` (``decay_input=False``), so one Euler
  step is exactly our discrete charge. ``IF`` gets ``r = 1/dt``. Our hard reset *is* NIR's reset
  (``v ← v_reset`` after a spike); soft reset (subtract the threshold) has no NIR counterpart and is
  refused. We fire at ``v >= v_threshold`` (NIR's text says ``>``); the graph's metadata says so.
* BatchNorm is folded into the conv/linear before it (or becomes a depthwise 1x1 conv), additions
  are edges into the same node (NIR sums a node's inputs), SqueezeNet's parallel expand convs
  become one conv (the 1x1 kernels zero-padded to 3x3) with one LIF node, and every other
  concatenation, chunk or channel shuffle is folded into the weights of the convs that read it
  (or, where it must stand alone, written as fixed 0/1 1x1 convs). Average pooling is ``AvgPool2d``;
  a ceil-mode pool with partial windows is a ones-kernel depthwise conv plus a ``Scale``.
  Max pooling, multiplicative gates (squeeze-excitation) and anything else NIR cannot express
  raise :class:`~spikelite.errors.SpikeliteError` naming the module.

:func:`nir_to_torch` reads a NIR graph back (through ``nirtorch``) into a runnable module, used by
the checks and the round-trip tests.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import math
import operator
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from . import __version__
from .snn import SpikingActivation, SpikingNet, StepBatchNorm, TimeBroadcast, mark_spikes
from .errors import SpikeliteError
from .snn import IF, LIF

__all__ = [
    "FORMATS",
    "ExportResult",
    "export",
    "to_nir",
    "nir_to_torch",
    "NIRNet",
    "export_checkpoint",
]

FORMATS = ("nir", "onnx", "torchscript")
_SUFFIXES = {
    ".nir": "nir", ".h5": "nir", ".hdf5": "nir",
    ".onnx": "onnx",
    ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript", ".jit": "torchscript",
}
DEFAULT_DT = 1e-4  # the step most NIR readers assume (snnTorch, SpikingJelly)
SPIKE_RULE = "v >= v_threshold"


# ----------------------------------------------------------------------------------------------
# Optional dependencies
# ----------------------------------------------------------------------------------------------


def _require(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SpikeliteError(f"{what} needs the {module!r} package, which is not installed ({exc}); "
                             "install the export extra: pip install 'spikelite[export]'") from None


# ----------------------------------------------------------------------------------------------
# Inference copies: the reference neuron formula as plain tensor ops (traceable, no torch.compile)
# ----------------------------------------------------------------------------------------------


class _StepLIF(nn.Module):
    """Inference-only LIF/IF with exactly :mod:`spikelite.snn.neuron`'s discrete update, as plain ops."""

    def __init__(self, neuron: LIF):
        super().__init__()
        self.kind = "if" if isinstance(neuron, IF) else "lif"
        self.register_buffer("tau", neuron.tau.detach().clone().float().reshape(()))
        self.register_buffer("v_threshold", neuron.v_threshold.detach().clone().float().reshape(()))
        self.v_reset = neuron.v_reset
        self.decay_input = neuron.decay_input

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        tau = self.tau.to(x_seq.dtype)
        th = self.v_threshold.to(x_seq.dtype)
        rest = 0.0 if self.v_reset is None else self.v_reset
        v = torch.full_like(x_seq[0], rest)
        out = []
        for t in range(x_seq.shape[0]):
            x = x_seq[t]
            if self.kind == "if":
                h = v + x
            elif self.decay_input:
                h = v + (x - (v - rest)) / tau
            else:
                h = v - (v - rest) / tau + x
            s = (h >= th).to(h.dtype)
            v = h - s * th if self.v_reset is None else s * self.v_reset + (1.0 - s) * h
            out.append(s)
        return torch.stack(out)


def _is_plain_neuron(neuron: nn.Module) -> bool:
    return type(neuron) in (LIF, IF)


def _inference_copy(model: nn.Module) -> nn.Module:
    """A CPU eval copy of ``model`` whose LIF/IF neurons are :class:`_StepLIF` (same outputs)."""
    net = copy.deepcopy(model).cpu().eval()
    if isinstance(net, SpikingNet):
        for m in net.modules():
            if isinstance(m, SpikingActivation) and _is_plain_neuron(m.neuron):
                m.neuron = _StepLIF(m.neuron)
        net._rebuild_eval_body()
    return net


def _reference_copy(model: nn.Module) -> nn.Module:
    """A CPU eval copy that runs spikelite's own neuron code (the checks' reference). Compiled-kernel
    backends are switched to the eager fused path: the same forward, without a torch.compile wait."""
    net = copy.deepcopy(model).cpu().eval()
    for m in net.modules():
        if isinstance(m, LIF) and m.backend in ("auto", "compiled"):
            m.backend = "fused" if m.uses_fused() or m.backend == "compiled" else "torch"
    return net


# ----------------------------------------------------------------------------------------------
# SNN -> NIR: symbolic values
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Src:
    """A materialised tensor: the sum of the outputs of ``terms`` (NIR node names)."""

    terms: tuple[str, ...]
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


class _Val:
    """A tensor as a rearrangement of sources: ``codes[i]`` names the source element behind element i.

    Codes are global over the concatenated (flattened) sources, so views, transposes, chunks,
    concatenations and channel shuffles compose exactly, without creating any node.
    """

    def __init__(self, sources: list[_Src], codes: np.ndarray):
        self.sources = sources
        self.codes = codes
        self.shape = tuple(codes.shape)
        self.offsets = np.cumsum([0] + [s.numel for s in sources])

    @classmethod
    def plain(cls, terms, shape) -> "_Val":
        src = _Src(tuple(terms), tuple(int(d) for d in shape))
        return cls([src], np.arange(src.numel, dtype=np.int64).reshape(src.shape))

    def is_plain(self) -> bool:
        return (len(self.sources) == 1 and self.shape == self.sources[0].shape
                and bool(np.array_equal(self.codes.ravel(), np.arange(self.codes.size))))

    def decode(self) -> tuple[np.ndarray, np.ndarray]:
        """(source index, flat element index within the source) per element."""
        k = np.searchsorted(self.offsets, self.codes, side="right") - 1
        return k, self.codes - self.offsets[k]

    def channel_map(self) -> list[tuple[int, int]] | None:
        """For [C, H, W]: ``[(source, channel)]`` per channel when every channel is a whole source
        channel at the same spatial positions, else None."""
        if len(self.shape) != 3:
            return None
        c_out, h, w = self.shape
        k, flat = self.decode()
        out = []
        for c in range(c_out):
            kc = k[c]
            if not np.all(kc == kc.flat[0]):
                return None
            src = self.sources[int(kc.flat[0])]
            if len(src.shape) != 3 or src.shape[1:] != (h, w):
                return None
            fc = flat[c]
            ch = int(fc.flat[0]) // (h * w)
            if not np.array_equal(fc.ravel(), ch * h * w + np.arange(h * w)):
                return None
            out.append((int(kc.flat[0]), ch))
        return out


class _Const:
    def __init__(self, value):
        self.value = value


@dataclasses.dataclass
class _Op:
    kind: str  # input|conv|affine|linear|lif|if|avgpool|flatten|scale|output
    params: dict
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    source: str = ""
    in_shape: tuple[int, ...] | None = None


_PASSTHROUGH_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                        TimeBroadcast)
_REARRANGE_METHODS = {"view", "reshape", "flatten", "transpose", "permute", "contiguous", "chunk", "split",
                      "squeeze", "unsqueeze", "narrow", "unflatten", "swapaxes", "swapdims", "__getitem__"}
_REARRANGE_FUNCTIONS = {torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.cat, torch.concat,
                        torch.chunk, torch.split, torch.squeeze, torch.unsqueeze, torch.narrow, torch.channel_shuffle,
                        torch.swapaxes, torch.swapdims, operator.getitem}
_REARRANGE_MODULES = (nn.Flatten, nn.Unflatten, nn.ChannelShuffle)
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
              nn.AdaptiveMaxPool3d, nn.FractionalMaxPool2d, nn.LPPool2d)


def _pair(v) -> tuple[int, int]:
    a = np.asarray(v).ravel()
    if a.size == 0:
        return (0, 0)
    return (int(a[0]), int(a[-1]))


def _has_tensor(v) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    if isinstance(v, (tuple, list)):
        return any(_has_tensor(x) for x in v)
    return False


def _joint_name(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths]
    prefix = []
    for items in zip(*parts):
        if len(set(items)) == 1:
            prefix.append(items[0])
        else:
            break
    leaves = ["_".join(p[len(prefix):]) for p in parts]
    return ".".join(prefix + ["_".join(leaves)]) if prefix else "_".join(leaves)


class _NIRBuilder:
    """Walks a SpikingNet's eval graph and emits NIR-shaped ops (see the module docstring)."""

    def __init__(self, net: SpikingNet, input_shape: tuple[int, ...], dt: float, T: int):
        self.net = net
        self.T = int(T)  # the model's time steps (the walked copy runs with T=1)
        self.gm = net._eval_body[0] if net._eval_body else net.body
        self.input_shape = tuple(input_shape)
        self.dt = float(dt)
        self.ops: dict[str, _Op] = {}
        self.sanitized: set[str] = set()
        self.sym: dict[fx.Node, Any] = {}
        self.env: dict[fx.Node, Any] = {}
        self.lif_layers: dict[str, list[str]] = {}
        self.output_name = ""

    # -- bookkeeping --------------------------------------------------------------------------
    def _name(self, base: str) -> str:
        base = base or "node"
        name, k = base, 1
        while name in self.ops or name.replace(".", "_") in self.sanitized or name in ("input", "output"):
            name = f"{base}_{k}"
            k += 1
        return name

    def add(self, base: str, op: _Op) -> str:
        # "input" and "output" are the graph's Input/Output nodes; a module with such a name gets a suffix
        name = op.kind if op.kind in ("input", "output") else self._name(base)
        self.ops[name] = op
        self.sanitized.add(name.replace(".", "_"))
        return name

    def remove(self, name: str) -> None:
        del self.ops[name]
        self.sanitized.discard(name.replace(".", "_"))

    def where(self, n: fx.Node) -> str:
        if n.op == "call_module":
            return f"{n.target} ({type(self.gm.get_submodule(n.target)).__name__})"
        stack = n.meta.get("nn_module_stack") or {}
        owner = ""
        if stack:
            last = list(stack.values())[-1]
            owner = last[0] if isinstance(last, tuple) else str(last)
        tgt = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
        return f"{tgt}() in {owner or 'the model forward'}"

    def fail(self, n: fx.Node, why: str):
        raise SpikeliteError(f"cannot export {self.where(n)} to NIR: {why}")

    def val(self, n, at: fx.Node) -> _Val:
        v = self.sym.get(n) if isinstance(n, fx.Node) else None
        if not isinstance(v, _Val):
            self.fail(at, "its input is not a single tensor")
        return v

    # -- concrete run (shapes, sizes): T=1, N=1 -------------------------------------------------
    def run_concrete(self) -> None:
        interp = fx.Interpreter(self.gm, garbage_collect_values=False)
        param = next((p for p in self.gm.parameters() if p.is_floating_point()), None)
        dtype = param.dtype if param is not None else torch.get_default_dtype()
        x = torch.randn(1, *self.input_shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        with torch.no_grad():
            interp.run(x)
        self.env = interp.env

    # -- materialising a rearranged value -----------------------------------------------------
    def terms(self, v: _Val, base: str) -> tuple[str, ...]:
        if v.is_plain():
            return v.sources[0].terms
        if len(v.shape) == 3:
            cm = v.channel_map()
            if cm is None:
                raise SpikeliteError(f"cannot export {base} to NIR: its input is a rearrangement of elements "
                                     "that is not a channel permutation/selection (NIR has no reshape node)")
            out = []
            for k, src in enumerate(v.sources):
                w = np.zeros((v.shape[0], src.shape[0], 1, 1))
                for c, (kk, ch) in enumerate(cm):
                    if kk == k:
                        w[c, ch, 0, 0] = 1.0
                if not w.any():
                    continue
                out.append(self.add(f"{base}.gather{k}", _Op(
                    "conv", dict(weight=w, bias=np.zeros(v.shape[0]), stride=(1, 1), padding=(0, 0),
                                 dilation=(1, 1), groups=1), src.terms, v.shape, base + " (channel gather)",
                    src.shape)))
            return tuple(out)
        if len(v.shape) == 1:
            k_of, flat = v.decode()
            flat_terms = self.flat_sources(v, base)
            if len(v.sources) == 1 and np.array_equal(flat, np.arange(v.shape[0])) \
                    and v.sources[0].numel == v.shape[0]:
                return flat_terms[0]
            out = []
            for k, src in enumerate(v.sources):
                w = np.zeros((v.shape[0], src.numel))
                sel = np.nonzero(k_of == k)[0]
                if sel.size == 0:
                    continue
                w[sel, flat[sel]] = 1.0
                out.append(self.add(f"{base}.gather{k}", _Op("linear", dict(weight=w), flat_terms[k], v.shape,
                                                             base + " (element gather)", (src.numel,))))
            return tuple(out)
        raise SpikeliteError(f"cannot export {base} to NIR: a rearranged {len(v.shape)}-d tensor")

    def flat_sources(self, v: _Val, base: str) -> list[tuple[str, ...]]:
        """Each source as a flat vector: a Flatten node for multi-dimensional sources."""
        out = []
        for k, src in enumerate(v.sources):
            if len(src.shape) == 1:
                out.append(src.terms)
            else:
                out.append((self.add(f"{base}.flatten{k}" if len(v.sources) > 1 else f"{base}.flatten", _Op(
                    "flatten", {}, src.terms, (src.numel,), base, src.shape)),))
        return out

    # -- the walk -----------------------------------------------------------------------------
    def build(self) -> None:
        self.run_concrete()
        for n in self.gm.graph.nodes:
            cval = self.env.get(n)
            if n.op == "placeholder":
                name = self.add("input", _Op("input", {}, (), self.input_shape))
                self.sym[n] = _Val.plain((name,), self.input_shape)
                continue
            if n.op == "output":
                arg = n.args[0]
                v = self.val(arg, n)
                terms = self.terms(v, "output")
                self.output_name = self.add("output", _Op("output", {}, terms, v.shape))
                continue
            if n.op == "get_attr":
                self.fail(n, "the graph reads a tensor attribute directly (a constant or parameter used "
                             "functionally); NIR nodes carry their own weights")
            if not _has_tensor(cval):
                self.sym[n] = _Const(cval)
                continue
            self.sym[n] = self.node(n, cval)

    def node(self, n: fx.Node, cval):
        if n.op == "call_module":
            m = self.gm.get_submodule(n.target)
            if isinstance(m, _PASSTHROUGH_MODULES):
                return self.val(n.args[0], n)
            if isinstance(m, SpikingActivation):
                v = self.val(n.args[0], n)
                return self.neuron(n, m, n.target, self.terms(v, n.target), v.shape)
            if isinstance(m, nn.Conv2d):
                return self.conv(n, m)
            if isinstance(m, nn.Linear):
                return self.linear(n, m)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                return self.batchnorm(n, m)
            if isinstance(m, nn.AvgPool2d):
                return self.avgpool(n, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                    m.divisor_override)
            if isinstance(m, nn.AdaptiveAvgPool2d):
                return self.adaptive_pool(n, cval)
            if isinstance(m, _REARRANGE_MODULES):
                return self.rearrange(n)
            if isinstance(m, (nn.Sigmoid, nn.Hardsigmoid)):
                self.fail(n, f"an analog {type(m).__name__} gate (e.g. squeeze-excitation): NIR has no sigmoid and "
                             "cannot multiply two signals")
            if isinstance(m, _MAX_POOLS):
                spec = getattr(self.net, "spikelite_spec", None) or {}
                hint = (f"; build {spec['name']} with pool='avg' (create_model(..., pool='avg')), which NIR expresses "
                        "exactly" if spec.get("pool") == "max" else "; use average pooling instead")
                self.fail(n, f"NIR has no max-pooling node{hint}")
            self.fail(n, f"NIR has no counterpart for {type(m).__name__}")
        if n.op == "call_function":
            if n.target is mark_spikes:
                return self.val(n.args[0], n)
            if n.target in _ADD_FUNCTIONS:
                return self.add_values(n)
            if n.target in (torch.cat, torch.concat):
                merged = self.try_merge_cat(n)
                if merged is not None:
                    return merged
                return self.rearrange(n)
            if n.target in _REARRANGE_FUNCTIONS:
                return self.rearrange(n)
            if n.target is torch.mean:
                return self.mean(n, cval)
            if n.target in (F.avg_pool2d, torch.avg_pool2d):
                b = dict(zip(["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                              "divisor_override"], n.args))
                b.update(n.kwargs)
                ks = self.const(b.get("kernel_size"))
                return self.avgpool(n, ks, self.const(b.get("stride")) or ks, self.const(b.get("padding", 0)),
                                    bool(self.const(b.get("ceil_mode", False))),
                                    bool(self.const(b.get("count_include_pad", True))),
                                    self.const(b.get("divisor_override")))
            if n.target is F.adaptive_avg_pool2d:
                return self.adaptive_pool(n, cval)
            if n.target in (F.max_pool2d, torch.max_pool2d, F.adaptive_max_pool2d):
                self.fail(n, "NIR has no max-pooling node")
            if n.target in (torch.mul, operator.mul, operator.imul):
                self.fail(n, "a product of two signals (e.g. a squeeze-excitation gate) cannot be expressed in NIR")
            self.fail(n, "NIR has no counterpart for this operation")
        if n.op == "call_method":
            if n.target in _REARRANGE_METHODS:
                return self.rearrange(n)
            if n.target in ("add", "add_", "__add__", "__iadd__"):
                return self.add_values(n)
            if n.target == "mean":
                return self.mean(n, cval)
            if n.target in ("mul", "mul_", "__mul__"):
                self.fail(n, "a product of two signals (e.g. a squeeze-excitation gate) cannot be expressed in NIR")
            self.fail(n, "NIR has no counterpart for this operation")
        self.fail(n, f"unsupported graph node kind {n.op!r}")

    def const(self, a):
        if isinstance(a, fx.Node):
            s = self.sym.get(a)
            if not isinstance(s, _Const):
                raise SpikeliteError(f"cannot export {self.where(a)} to NIR: a tensor where a constant was expected")
            return s.value
        return a

    # -- neurons ------------------------------------------------------------------------------
    def neuron(self, n: fx.Node, act: SpikingActivation, path: str, terms, shape) -> _Val:
        neuron = act.neuron
        if not _is_plain_neuron(neuron):
            self.fail(n, f"its neuron is a {type(neuron).__name__}; NIR export knows spikelite's LIF and IF")
        if getattr(act, "charge_offset", 0.0):
            self.fail(n, f"it adds a constant charge per step (charge_offset={act.charge_offset:g}, from a QCFS "
                         "activation), which NIR's neurons have no input for")
        if neuron.v_reset is None:
            self.fail(n, "soft reset (v_reset=None: subtract the threshold after a spike) has no NIR counterpart; "
                         "NIR's LIF/IF reset the membrane to v_reset. Use a hard reset (e.g. v_reset=0.0)")
        tau = float(neuron.tau.detach())
        th = float(neuron.v_threshold.detach())
        vr = float(neuron.v_reset)
        kind = "if" if isinstance(neuron, IF) else "lif"
        params = dict(tau=tau, v_threshold=th, v_reset=vr, decay_input=bool(neuron.decay_input))
        name = self.add(path, _Op(kind, {k: np.full(shape, v, dtype=np.float64) if k != "decay_input" else v
                                         for k, v in params.items()}, tuple(terms), tuple(shape), path))
        self.lif_layers[name] = [path]
        return _Val.plain((name,), shape)

    # -- synaptic layers ----------------------------------------------------------------------
    def conv(self, n: fx.Node, m: nn.Conv2d) -> _Val:
        if m.padding_mode != "zeros":
            self.fail(n, f"padding_mode={m.padding_mode!r} (NIR convolutions pad with zeros)")
        v = self.val(n.args[0], n)
        w = m.weight.detach().double().numpy()
        b = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(w.shape[0])
        pad = m.padding
        if isinstance(pad, str):
            if pad == "valid":
                pad = (0, 0)
            else:  # "same"
                tot = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
                if any(t % 2 for t in tot):
                    self.fail(n, "padding='same' with an even kernel pads unevenly, which NIR cannot express")
                pad = tuple(t // 2 for t in tot)
        out_shape = tuple(self.env[n].shape[1:])
        geo = dict(stride=_pair(m.stride), padding=_pair(pad), dilation=_pair(m.dilation), groups=int(m.groups))
        parts: list[tuple[tuple[str, ...], np.ndarray, tuple]] = []
        cm = v.channel_map() if (m.groups == 1 and not v.is_plain()) else None
        if cm is not None:  # fold the gather/concat/shuffle into the weights: one conv per source
            for k, src in enumerate(v.sources):
                wk = np.zeros((w.shape[0], src.shape[0], *w.shape[2:]))
                used = False
                for c, (kk, ch) in enumerate(cm):
                    if kk == k:
                        wk[:, ch] += w[:, c]
                        used = True
                if used:
                    parts.append((src.terms, wk, src.shape))
        else:
            parts.append((self.terms(v, n.target), w, v.shape))
        names = []
        for i, (terms, wk, in_shape) in enumerate(parts):
            base = n.target if len(parts) == 1 else f"{n.target}.part{i}"
            names.append(self.add(base, _Op("conv", dict(weight=wk, bias=b if i == 0 else np.zeros_like(b), **geo),
                                            tuple(terms), out_shape, n.target, tuple(in_shape))))
        return _Val.plain(names, out_shape)

    def linear(self, n: fx.Node, m: nn.Linear) -> _Val:
        v = self.val(n.args[0], n)
        if len(v.shape) != 1:
            self.fail(n, f"a Linear layer on a {len(v.shape)}-d input (NIR's Affine takes vectors)")
        w = m.weight.detach().double().numpy()
        b = m.bias.detach().double().numpy() if m.bias is not None else None
        out_shape = (w.shape[0],)
        parts = []
        if v.is_plain():
            parts.append((v.sources[0].terms, w))
        else:
            k_of, flat = v.decode()
            srcs = self.flat_sources(v, n.target)
            for k, src in enumerate(v.sources):
                sel = np.nonzero(k_of == k)[0]
                if sel.size == 0:
                    continue
                wk = np.zeros((w.shape[0], src.numel))
                np.add.at(wk.T, flat[sel], w[:, sel].T)
                parts.append((srcs[k], wk))
        names = []
        for i, (terms, wk) in enumerate(parts):
            base = n.target if len(parts) == 1 else f"{n.target}.part{i}"
            if b is not None and i == 0:
                op = _Op("affine", dict(weight=wk, bias=b), tuple(terms), out_shape, n.target, (wk.shape[1],))
            else:
                op = _Op("linear", dict(weight=wk), tuple(terms), out_shape, n.target, (wk.shape[1],))
            names.append(self.add(base, op))
        return _Val.plain(names, out_shape)

    def batchnorm(self, n: fx.Node, m: nn.modules.batchnorm._BatchNorm) -> _Val:
        if isinstance(m, StepBatchNorm):
            self.fail(n, "a per-step (time-aware) BatchNorm has a different affine map at every step, which "
                         "NIR's time-invariant nodes cannot express")
        if m.running_mean is None or m.running_var is None:
            self.fail(n, "BatchNorm without running statistics normalises with batch statistics at inference")
        act = getattr(m, "act", None)
        drop = getattr(m, "drop", None)
        if drop is not None and not isinstance(drop, _PASSTHROUGH_MODULES):
            self.fail(n, f"its inner {type(drop).__name__}")
        if act is not None and not isinstance(act, (nn.Identity, SpikingActivation)):
            self.fail(n, f"its inner activation {type(act).__name__} is not a spiking layer")
        if type(m).forward is not nn.modules.batchnorm._BatchNorm.forward and not (
                hasattr(m, "act") and hasattr(m, "drop")):  # not timm's BatchNormAct2d: refuse rather than guess
            self.fail(n, f"{type(m).__name__} overrides BatchNorm's forward")
        v = self.val(n.args[0], n)
        var = m.running_var.detach().double().numpy()
        mean = m.running_mean.detach().double().numpy()
        s = 1.0 / np.sqrt(var + m.eps)
        if m.weight is not None:
            s = s * m.weight.detach().double().numpy()
        t = -mean * s
        if m.bias is not None:
            t = t + m.bias.detach().double().numpy()
        src = n.args[0]
        shape = v.shape
        folded = False
        if (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1 and v.is_plain()
                and isinstance(self.gm.get_submodule(src.target), (nn.Conv2d, nn.Linear))):
            terms = v.sources[0].terms
            if all(self.ops[t].source == src.target and self.ops[t].kind in ("conv", "affine", "linear")
                   for t in terms):
                for i, name in enumerate(terms):  # the first part carries the shift
                    op = self.ops[name]
                    w = op.params["weight"]
                    op.params["weight"] = w * s.reshape(-1, *([1] * (w.ndim - 1)))
                    if op.kind == "linear":
                        if i == 0:
                            op.kind = "affine"
                            op.params["bias"] = t.copy()
                    else:
                        op.params["bias"] = op.params["bias"] * s + (t if i == 0 else 0.0)
                folded = True
                out = _Val.plain(terms, shape)
        if not folded:
            terms = self.terms(v, n.target)
            if len(shape) == 3:
                c = shape[0]
                name = self.add(n.target, _Op("conv", dict(weight=s.reshape(c, 1, 1, 1), bias=t, stride=(1, 1),
                                                          padding=(0, 0), dilation=(1, 1), groups=c),
                                              terms, shape, n.target, shape))
            elif len(shape) == 1:
                name = self.add(n.target, _Op("affine", dict(weight=np.diag(s), bias=t), terms, shape, n.target,
                                              shape))
            else:
                self.fail(n, f"BatchNorm on a {len(shape)}-d input")
            out = _Val.plain((name,), shape)
        if isinstance(act, SpikingActivation):
            path = f"{n.target}.act"
            return self.neuron(n, act, path, out.sources[0].terms, shape)
        return out

    def add_values(self, n: fx.Node) -> _Val:
        args = list(n.args) + [v for k, v in n.kwargs.items() if k == "other"]
        if "alpha" in n.kwargs or len(args) != 2:
            self.fail(n, "only a plain sum of two tensors is supported")
        a, b = args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node) and isinstance(self.sym.get(a), _Val)
                and isinstance(self.sym.get(b), _Val)):
            self.fail(n, "adding a constant (NIR sums node outputs; fold constants into a bias)")
        va, vb = self.sym[a], self.sym[b]
        if va.shape != vb.shape:
            self.fail(n, f"a broadcasting sum of shapes {va.shape} and {vb.shape}")
        ta, tb = self.terms(va, f"{n.name}.lhs"), self.terms(vb, f"{n.name}.rhs")
        if set(ta) & set(tb):
            self.fail(n, "the same node's output is added twice")
        return _Val.plain(ta + tb, va.shape)

    # -- pooling ------------------------------------------------------------------------------
    def avgpool(self, n, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override) -> _Val:
        v = self.val(n.args[0], n)
        if len(v.shape) != 3:
            self.fail(n, "pooling over a non-image tensor")
        c, h, w = v.shape
        k, s, p = _pair(kernel), _pair(stride if stride not in (None, [], ()) else kernel), _pair(padding)
        out_hw = F.avg_pool2d(torch.zeros(1, 1, h, w), k, s, p, ceil_mode, count_include_pad, divisor_override).shape
        out_shape = (c, *out_hw[-2:])
        base = n.target if n.op == "call_module" else n.name
        terms = self.terms(v, base)
        # extra right/bottom reach of ceil-mode windows beyond the symmetric padding
        extra = [max(0, (o - 1) * st + kk - (L + 2 * pp)) for o, st, kk, L, pp in
                 zip(out_shape[1:], s, k, (h, w), p)]
        if not any(extra) and divisor_override is None and (count_include_pad or p == (0, 0)):
            name = self.add(base, _Op("avgpool", dict(kernel_size=k, stride=s, padding=p), terms, out_shape, base,
                                      v.shape))
            return _Val.plain((name,), out_shape)
        # Exact otherwise: a ones-kernel depthwise conv (the window sums, with zero taps that shift the
        # windows to where PyTorch puts them) followed by a per-position Scale (1/divisor).
        kk = (k[0] + extra[0], k[1] + extra[1])
        weight = np.zeros((c, 1, *kk))
        weight[:, :, extra[0]:, extra[1]:] = 1.0
        pad = (p[0] + extra[0], p[1] + extra[1])
        name = self.add(base, _Op("conv", dict(weight=weight, bias=np.zeros(c), stride=s, padding=pad, dilation=(1, 1),
                                               groups=c), terms, out_shape, base + " (window sums)", v.shape))
        # The window sums of an all-ones image (in-bound taps per window) and PyTorch's average of it
        # give the per-position factor 1/divisor, whatever ceil_mode/count_include_pad/divisor_override say.
        counts = []
        for o, st, kk_, L, pp in zip(out_shape[1:], s, k, (h, w), p):
            start = np.arange(o) * st - pp
            counts.append(np.clip(start + kk_, 0, L) - np.clip(start, 0, L))
        sums = np.outer(counts[0], counts[1]).astype(np.float64)
        avg = F.avg_pool2d(torch.ones(1, 1, h, w, dtype=torch.float64), k, s, p, ceil_mode, count_include_pad,
                           divisor_override)[0, 0].numpy()
        if avg.shape != sums.shape or (sums <= 0).any():
            self.fail(n, "internal: the window-sum conv does not reproduce the pooling geometry")
        scale = np.broadcast_to(avg / sums, out_shape).copy()
        sname = self.add(f"{base}.scale", _Op("scale", dict(scale=scale), (name,), out_shape, base + " (1/divisor)",
                                             out_shape))
        return _Val.plain((sname,), out_shape)

    def adaptive_pool(self, n, cval) -> _Val:
        v = self.val(n.args[0], n)
        if len(v.shape) != 3:
            self.fail(n, "pooling over a non-image tensor")
        _, h, w = v.shape
        oh, ow = cval.shape[-2:]
        if h % oh or w % ow:
            self.fail(n, f"adaptive pooling from {h}x{w} to {oh}x{ow} has uneven windows")
        return self.avgpool(n, (h // oh, w // ow), (h // oh, w // ow), 0, False, True, None)

    def mean(self, n, cval) -> _Val:
        v = self.val(n.args[0], n)
        b = dict(zip(["input", "dim", "keepdim"], n.args))
        b.update(n.kwargs)
        dims = self.const(b.get("dim"))
        keep = bool(self.const(b.get("keepdim", False)))
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        if len(v.shape) != 3 or sorted(d % 4 for d in dims) != [2, 3]:
            self.fail(n, "a mean over anything but the spatial dimensions of an image")
        _, h, w = v.shape
        pooled = self.avgpool(n, (h, w), (h, w), 0, False, True, None)
        if keep:
            return pooled
        src = pooled.sources[0]
        name = self.add(f"{n.name}.flatten", _Op("flatten", {}, src.terms, (src.numel,), n.name, src.shape))
        return _Val.plain((name,), (src.numel,))

    # -- rearrangements -----------------------------------------------------------------------
    def rearrange(self, n: fx.Node):
        if n.target is operator.getitem and isinstance(self.sym.get(n.args[0]), (list, tuple)):
            return self.sym[n.args[0]][self.const(n.args[1])]
        sources: list[_Src] = []
        index: dict[_Src, int] = {}
        vals: list[_Val] = []

        def collect(a):
            s = self.sym.get(a)
            if isinstance(s, _Val):
                vals.append(s)
                for src in s.sources:
                    if src not in index:
                        index[src] = len(sources)
                        sources.append(src)
            return a

        fx.node.map_arg((n.args, n.kwargs), collect)
        if not vals:
            self.fail(n, "no tensor input")
        offsets = np.cumsum([0] + [s.numel for s in sources])

        def codes(v: _Val) -> torch.Tensor:
            """The value as a [1, ...] tensor of global element codes (exact in float64)."""
            k, flat = v.decode()
            starts = np.array([offsets[index[src]] for src in v.sources])
            return torch.from_numpy((starts[k] + flat).astype(np.float64)).reshape(1, *v.shape)

        def to_index(a):
            s = self.sym.get(a)
            if isinstance(s, _Val):
                return codes(s)
            if isinstance(s, _Const):
                return s.value
            if isinstance(s, (list, tuple)):
                return type(s)(codes(x) for x in s)
            self.fail(n, "an input of unknown kind")

        args = fx.node.map_arg(n.args, to_index)
        kwargs = fx.node.map_arg(n.kwargs, to_index)
        try:
            if n.op == "call_function":
                out = n.target(*args, **kwargs)
            elif n.op == "call_method":
                out = getattr(args[0], n.target)(*args[1:], **kwargs)
            else:
                out = self.gm.get_submodule(n.target)(*args, **kwargs)
        except Exception as exc:  # the op does not accept what we fed it
            self.fail(n, f"could not trace the element arrangement ({type(exc).__name__}: {exc})")

        def back(t):
            if isinstance(t, torch.Tensor):
                if t.dim() < 2 or t.shape[0] != 1:
                    self.fail(n, "a rearrangement that mixes the batch dimension with the others")
                codes = t[0].numpy().astype(np.int64)
                return _Val(list(sources), codes)
            if isinstance(t, (tuple, list)):
                return [back(x) for x in t]
            self.fail(n, "a rearrangement that returns no tensor")

        return back(out)

    def try_merge_cat(self, n: fx.Node) -> _Val | None:
        """cat([LIF(BN(conv_i(x)))...], dim=1) with the same x -> one conv (zero-padded kernels) + one LIF."""
        tensors = n.args[0] if n.args else n.kwargs.get("tensors")
        dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
        if not isinstance(tensors, (list, tuple)) or len(tensors) < 2 or dim not in (1, -3):
            return None
        lifs, convs = [], []
        for a in tensors:
            if not isinstance(a, fx.Node) or len(a.users) != 1:
                return None
            v = self.sym.get(a)
            if not isinstance(v, _Val) or not v.is_plain() or len(v.sources[0].terms) != 1:
                return None
            lif = self.ops[v.sources[0].terms[0]]
            if lif.kind not in ("lif", "if") or len(lif.inputs) != 1 or len(v.shape) != 3:
                return None
            conv = self.ops[lif.inputs[0]]
            if conv.kind != "conv" or conv.params["groups"] != 1 or conv.params["dilation"] != (1, 1):
                return None
            # the conv and the BN before the neuron must feed nothing else
            node = a
            while True:
                if node.op == "call_module" and isinstance(self.gm.get_submodule(node.target), nn.Conv2d):
                    break
                ins = node.all_input_nodes
                if len(ins) != 1 or len(ins[0].users) != 1:
                    return None
                node = ins[0]
            lifs.append(v.sources[0].terms[0])
            convs.append(lif.inputs[0])
        c_ops = [self.ops[c] for c in convs]
        l_ops = [self.ops[x] for x in lifs]
        first = c_ops[0]
        if any(c.inputs != first.inputs or c.params["stride"] != first.params["stride"]
               or c.shape[1:] != first.shape[1:] for c in c_ops):
            return None
        if len({op.kind for op in l_ops}) != 1 or len({op.params["decay_input"] for op in l_ops}) != 1:
            return None
        kh = max(c.params["weight"].shape[2] for c in c_ops)
        kw = max(c.params["weight"].shape[3] for c in c_ops)
        ph = max(c.params["padding"][0] for c in c_ops)
        pw = max(c.params["padding"][1] for c in c_ops)
        offs = []
        for c in c_ops:
            _, _, h, w = c.params["weight"].shape
            oh, ow = ph - c.params["padding"][0], pw - c.params["padding"][1]
            if oh + h > kh or ow + w > kw:
                return None  # the kernels do not line up inside one window
            offs.append((oh, ow))
        c_total = sum(c.shape[0] for c in c_ops)
        weight = np.zeros((c_total, first.params["weight"].shape[1], kh, kw))
        bias = np.zeros(c_total)
        at = 0
        for c, (oh, ow) in zip(c_ops, offs):
            wk = c.params["weight"]
            weight[at:at + wk.shape[0], :, oh:oh + wk.shape[2], ow:ow + wk.shape[3]] = wk
            bias[at:at + wk.shape[0]] = c.params["bias"]
            at += wk.shape[0]
        shape = (c_total, *first.shape[1:])
        conv_name_base = _joint_name([c.source for c in c_ops])
        lif_paths = [p for x in lifs for p in self.lif_layers[x]]
        params = {k: np.concatenate([op.params[k] for op in l_ops]) for k in ("tau", "v_threshold", "v_reset")}
        params["decay_input"] = l_ops[0].params["decay_input"]
        kind = l_ops[0].kind
        for x in lifs:
            self.remove(x)
            del self.lif_layers[x]
        for c in convs:
            self.remove(c)
        cname = self.add(conv_name_base, _Op("conv", dict(weight=weight, bias=bias, stride=first.params["stride"],
                                                          padding=(ph, pw), dilation=(1, 1), groups=1),
                                             first.inputs, shape, "+".join(c.source for c in c_ops), first.in_shape))
        lname = self.add(_joint_name(lif_paths), _Op(kind, params, (cname,), shape, "+".join(lif_paths)))
        self.lif_layers[lname] = lif_paths
        return _Val.plain((lname,), shape)

    # -- NIR ----------------------------------------------------------------------------------
    def prune(self) -> None:
        keep, todo = set(), [self.output_name]
        while todo:
            x = todo.pop()
            if x in keep:
                continue
            keep.add(x)
            todo.extend(self.ops[x].inputs)
        for name in [k for k in self.ops if k not in keep]:
            self.remove(name)
            self.lif_layers.pop(name, None)

    def to_graph(self):
        nir = _require("nir", "NIR export")
        nodes, edges = {}, []
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        dt = self.dt
        for name, op in self.ops.items():
            meta = {"spikelite_source": op.source} if op.source else {}
            p = op.params
            if op.kind == "input":
                node = nir.Input(input_type={"input": np.array(op.shape)})
            elif op.kind == "output":
                node = nir.Output(output_type={"output": np.array(op.shape)})
            elif op.kind == "conv":
                # nir 1.0.x takes a Conv2d's input channels from weight.shape[1], ignoring groups: a
                # grouped conv gets no input_shape here and NIR infers its input type from its source.
                grouped = int(p["groups"]) > 1
                node = nir.Conv2d(input_shape=None if grouped else tuple(op.in_shape[1:]), weight=f32(p["weight"]), stride=p["stride"],
                                  padding=p["padding"], dilation=p["dilation"], groups=p["groups"],
                                  bias=f32(p["bias"]), metadata=meta)
            elif op.kind == "affine":
                node = nir.Affine(weight=f32(p["weight"]), bias=f32(p["bias"]), metadata=meta)
            elif op.kind == "linear":
                node = nir.Linear(weight=f32(p["weight"]), metadata=meta)
            elif op.kind == "avgpool":
                node = nir.AvgPool2d(kernel_size=np.array(p["kernel_size"]), stride=np.array(p["stride"]),
                                     padding=np.array(p["padding"]), metadata=meta)
            elif op.kind == "flatten":
                node = nir.Flatten(input_type={"input": np.array(op.in_shape)}, start_dim=0, end_dim=-1, metadata=meta)
            elif op.kind == "scale":
                node = nir.Scale(scale=f32(p["scale"]), metadata=meta)
            elif op.kind == "lif":
                tau = p["tau"]
                meta = {**meta, "spikelite_layers": ",".join(self.lif_layers[name])}
                node = nir.LIF(tau=tau * dt, r=np.ones_like(tau) if p["decay_input"] else tau.copy(),
                               v_leak=f32(p["v_reset"]), v_threshold=f32(p["v_threshold"]), v_reset=f32(p["v_reset"]),
                               metadata=meta)
            elif op.kind == "if":
                meta = {**meta, "spikelite_layers": ",".join(self.lif_layers[name])}
                node = nir.IF(r=np.full(op.shape, 1.0 / dt), v_threshold=f32(p["v_threshold"]),
                              v_reset=f32(p["v_reset"]), metadata=meta)
            else:  # pragma: no cover - every kind above is produced by the builder
                raise AssertionError(op.kind)
            nodes[name] = node
            edges.extend((src, name) for src in op.inputs)
        spec = getattr(self.net, "spikelite_spec", None) or {}
        metadata = {
            "producer": f"spikelite {__version__}",
            "model": str(spec.get("name", type(self.net.body).__name__)),
            "T": self.T,
            "encoding": self.net.encoding,
            "dt": dt,
            "spike_rule": SPIKE_RULE,
            "initial_v": "v_reset",
            "output": "per-step outputs; the model's prediction is their mean over T steps",
        }
        try:
            graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=True)
        except (ValueError, AssertionError) as exc:  # a bug here, not bad input: say so plainly
            raise SpikeliteError(f"internal error: the NIR graph failed NIR's type check ({exc})") from exc
        return graph


def _input_shape(model: nn.Module, input_shape) -> tuple[int, ...]:
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if not shape or any(d < 1 for d in shape):
            raise SpikeliteError(f"input_shape must be positive sizes without the batch, e.g. (3, 32, 32); "
                                 f"got {input_shape}")
        return shape
    spec = getattr(model, "spikelite_spec", None)
    if isinstance(spec, dict) and "image_size" in spec:
        size = int(spec["image_size"])
        return (int(spec.get("in_chans", 3)), size, size)
    raise SpikeliteError(f"{type(model).__name__} has no spikelite_spec to take the input size from; "
                         "pass input_shape=(C, H, W)")


def to_nir(model: SpikingNet, input_shape=None, dt: float = DEFAULT_DT):
    """The NIR graph (``nir.NIRGraph``) of a spiking network.

    Args:
        model: a :class:`~spikelite.snn.SpikingNet` (not modified; a copy is walked in eval mode).
        input_shape: ``(C, H, W)`` without the batch; default from ``model.spikelite_spec``.
        dt: the Euler step the LIF time constants are written for (``tau = τ_steps · dt``); the
            default 1e-4 s is what snnTorch's and SpikingJelly's NIR readers assume.

    Returns a graph whose ``Output`` is the per-step classifier output; ``metadata`` holds T, dt,
    the encoding and the spike rule. Raises :class:`SpikeliteError` naming the first module NIR
    cannot express.
    """
    if not isinstance(model, SpikingNet):
        raise SpikeliteError(f"NIR describes spiking networks; got a {type(model).__name__} (a CNN?): spikify it "
                             "first, or export it with format 'onnx' or 'torchscript'")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise SpikeliteError(f"dt must be a positive number, got {dt!r}")
    shape = _input_shape(model, input_shape)
    _require("nir", "NIR export")
    work = copy.deepcopy(model).cpu().eval()
    work.T = 1
    for m in work.modules():
        if isinstance(m, LIF):
            m.backend = "torch"  # the reference formula: no compilation for the shape run
    builder = _NIRBuilder(work, shape, float(dt), model.T)
    try:
        builder.build()
    except SpikeliteError:
        raise
    except RuntimeError as exc:
        raise SpikeliteError(f"cannot run {type(model.body).__name__} on an input of shape {shape}: {exc}") from None
    builder.prune()
    return builder.to_graph()


# ----------------------------------------------------------------------------------------------
# NIR -> torch (the reader used by the checks and tests)
# ----------------------------------------------------------------------------------------------


def _meta_value(v):
    if isinstance(v, bytes):
        return v.decode("utf8")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v


class _NIRNeuron(nn.Module):
    """One NIR LIF/IF node as a stateful single-step module (``forward(x, state) -> (spikes, state)``).

    Forward Euler with the graph's ``dt``, evaluated in the same order as spikelite's neurons so a
    graph written by :func:`to_nir` reproduces the SNN exactly.
    """

    def __init__(self, node, dt: float, strict: bool):
        super().__init__()
        import nir

        self.kind = "if" if isinstance(node, nir.IF) else "lif"
        f = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64)).float().unsqueeze(0)  # noqa: E731
        self.register_buffer("v_threshold", f(node.v_threshold))
        self.register_buffer("v_reset", f(node.v_reset))
        self.strict = strict
        if self.kind == "if":
            scale = dt * np.asarray(node.r, dtype=np.float64)
            self.unit = bool(np.allclose(scale, 1.0, rtol=1e-9, atol=0))
            self.register_buffer("scale", f(scale))
        else:
            tau_steps = np.asarray(node.tau, dtype=np.float64) / dt
            r = np.asarray(node.r, dtype=np.float64)
            self.mode = ("decay" if np.array_equal(r, np.ones_like(r)) else
                         "nodecay" if np.allclose(r, tau_steps, rtol=1e-9, atol=0) else "general")
            self.register_buffer("tau", f(tau_steps))
            self.register_buffer("r", f(r))
            self.register_buffer("v_leak", f(node.v_leak))

    def forward(self, x: torch.Tensor, state=None):
        v = state["v"] if isinstance(state, dict) and state.get("v") is not None else self.v_reset.expand_as(x)
        if self.kind == "if":
            h = v + x if self.unit else v + self.scale * x
        elif self.mode == "decay":
            h = v + (x - (v - self.v_leak)) / self.tau
        elif self.mode == "nodecay":
            h = v - (v - self.v_leak) / self.tau + x
        else:
            h = v + (self.r * x - (v - self.v_leak)) / self.tau
        fired = h > self.v_threshold if self.strict else h >= self.v_threshold
        s = fired.to(h.dtype)
        v = torch.where(fired, self.v_reset.expand_as(h), h)
        return s, {"v": v, "s": s}


class _Scale(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.register_buffer("scale", torch.from_numpy(np.asarray(scale, dtype=np.float32)).unsqueeze(0))

    def forward(self, x):
        return x * self.scale


class _SumPool(nn.Module):
    def __init__(self, node):
        super().__init__()
        self.k, self.s, self.p = _pair(node.kernel_size), _pair(node.stride), _pair(node.padding)

    def forward(self, x):
        return F.avg_pool2d(x, self.k, self.s, self.p, count_include_pad=True, divisor_override=1)


def _map_conv2d(node) -> nn.Conv2d:
    w = np.asarray(node.weight, dtype=np.float32)
    groups = int(np.asarray(node.groups).item())
    conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=_pair(node.stride),
                     padding=node.padding if isinstance(node.padding, str) else _pair(node.padding),
                     dilation=_pair(node.dilation), groups=groups, bias=True)
    conv.weight.data = torch.from_numpy(w.copy())
    conv.bias.data = torch.from_numpy(np.asarray(node.bias, dtype=np.float32).copy())
    return conv


def _map_affine(node) -> nn.Linear:
    w = np.asarray(node.weight, dtype=np.float32)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=True)
    lin.weight.data = torch.from_numpy(w.copy())
    lin.bias.data = torch.from_numpy(np.asarray(node.bias, dtype=np.float32).copy())
    return lin


def _map_linear(node) -> nn.Linear:
    w = np.asarray(node.weight, dtype=np.float32)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data = torch.from_numpy(w.copy())
    return lin


def _map_flatten(node) -> nn.Flatten:
    # NIR's shapes leave out the batch (nir.Flatten's type inference works on them); torch's include it.
    shift = lambda d: d + 1 if d >= 0 else d  # noqa: E731
    return nn.Flatten(shift(int(node.start_dim)), shift(int(node.end_dim)))


def _map_avgpool(node) -> nn.AvgPool2d:
    return nn.AvgPool2d(_pair(node.kernel_size), _pair(node.stride), _pair(node.padding))


class NIRNet(nn.Module):
    """A NIR graph as a PyTorch module, run step by step (built by :func:`nir_to_torch`).

    ``forward_steps(x)`` feeds ``x`` (``[N, ...]``: the same input every step, direct encoding; or
    ``[T, N, ...]``: one input per step) for ``T`` steps from rest and returns ``[T, N, out]``;
    with ``record=True`` it also returns each neuron node's spikes ``{node: [T, N, ...]}``.
    ``forward(x)`` is the mean over the steps, like :class:`~spikelite.snn.SpikingNet`.
    """

    def __init__(self, graph_module: nn.Module, neurons: dict[str, str], input_shape: tuple[int, ...], T: int,
                 metadata: dict, layers: dict[str, list[str]]):
        super().__init__()
        self.graph_module = graph_module
        self.neurons = neurons  # NIR node name -> sanitized module name
        self.input_shape = input_shape
        self.T = T
        self.metadata = metadata
        self.layers = layers  # NIR neuron node -> spikelite spiking-layer paths (from the metadata)

    def forward_steps(self, x: torch.Tensor, T: int | None = None, record: bool = False):
        steps = int(T or self.T)
        per_step = x.dim() == len(self.input_shape) + 2
        if per_step:
            steps = x.shape[0]
        if tuple(x.shape[-len(self.input_shape):]) != self.input_shape:
            raise SpikeliteError(f"input shape {tuple(x.shape)} does not end with the graph's input shape "
                                 f"{self.input_shape}")
        state = {name: None for name in self.graph_module._modules}
        outs, rec = [], {k: [] for k in self.neurons}
        for t in range(steps):
            out, state = self.graph_module(x[t] if per_step else x, state)
            outs.append(out)
            if record:
                for k, mod in self.neurons.items():
                    rec[k].append(state[mod]["s"])
        y = torch.stack(outs)
        if record:
            return y, {k: torch.stack(v) for k, v in rec.items()}
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_steps(x).mean(0)


def _read_nir(path: Path):
    """``nir.read``; for graphs with grouped convolutions, without NIR's type check (nir 1.0.x infers a
    Conv2d's input channels from ``weight.shape[1]``, which is ``C_in / groups`` for a grouped conv)."""
    nir = _require("nir", "reading NIR")
    try:
        return nir.read(path)
    except Exception as exc:
        first = exc
    try:
        graph = nir.read(path, type_check=False)
    except Exception:
        graph = None
    if graph is None or not any(isinstance(n, nir.Conv2d) and int(np.asarray(n.groups)) > 1
                                for n in graph.nodes.values()):
        raise SpikeliteError(f"cannot read NIR file {path}: {type(first).__name__}: {first}") from None
    return graph


def nir_to_torch(graph, dt: float | None = None, T: int | None = None, strict_threshold: bool | None = None) -> NIRNet:
    """Read a NIR graph (a ``nir.NIRGraph`` or a file path) into a runnable :class:`NIRNet`.

    Args:
        dt: the Euler step; default the graph's ``metadata["dt"]`` (written by :func:`to_nir`), else 1e-4.
        T: default time steps; default ``metadata["T"]``, else 1.
        strict_threshold: fire at ``v > v_threshold`` (NIR's text) instead of ``>=``; default: ``>=``
            when the metadata's spike rule says so (graphs from :func:`to_nir`), else ``>``.
    """
    nir = _require("nir", "reading NIR")
    nirtorch = _require("nirtorch", "reading NIR")
    if isinstance(graph, (str, os.PathLike)):
        p = Path(graph)
        if not p.is_file():
            raise SpikeliteError(f"NIR file {p} does not exist")
        graph = _read_nir(p)
    if not isinstance(graph, nir.NIRGraph):
        raise SpikeliteError(f"expected a nir.NIRGraph or a path, got {type(graph).__name__}")
    meta = {k: _meta_value(v) for k, v in (graph.metadata or {}).items()}
    dt = float(dt if dt is not None else meta.get("dt", DEFAULT_DT))
    strict = (meta.get("spike_rule") != SPIKE_RULE) if strict_threshold is None else bool(strict_threshold)
    node_map = {
        nir.Conv2d: _map_conv2d,
        nir.Affine: _map_affine,
        nir.Linear: _map_linear,
        nir.Flatten: _map_flatten,
        nir.AvgPool2d: _map_avgpool,
        nir.SumPool2d: _SumPool,
        nir.Scale: lambda n: _Scale(n.scale),
        nir.LIF: lambda n: _NIRNeuron(n, dt, strict),
        nir.IF: lambda n: _NIRNeuron(n, dt, strict),
    }
    unknown = sorted({type(n).__name__ for n in graph.nodes.values()
                      if type(n) not in node_map and not isinstance(n, (nir.Input, nir.Output))})
    if unknown:
        raise SpikeliteError(f"this reader does not know NIR node type(s) {unknown}")
    inputs = [n for n in graph.nodes.values() if isinstance(n, nir.Input)]
    if len(inputs) != 1:
        raise SpikeliteError(f"expected one Input node, found {len(inputs)}")
    input_shape = tuple(int(d) for d in np.asarray(inputs[0].input_type["input"]).ravel())
    try:
        gm = nirtorch.nir_to_torch(graph, node_map)
    except Exception as exc:
        raise SpikeliteError(f"nirtorch could not build the graph: {type(exc).__name__}: {exc}") from None
    neurons = {name: name.replace(".", "_") for name, n in graph.nodes.items() if isinstance(n, (nir.LIF, nir.IF))}
    layers = {}
    for name in neurons:
        md = graph.nodes[name].metadata or {}
        v = _meta_value(md.get("spikelite_layers", ""))
        layers[name] = [p for p in str(v).split(",") if p]
    steps = int(T if T is not None else meta.get("T", 1))
    return NIRNet(gm, neurons, input_shape, steps, meta, layers).eval()


# ----------------------------------------------------------------------------------------------
# Writing files, checking them
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ExportResult:
    """What :func:`export` wrote and how the written file compared with the PyTorch model."""

    path: str
    format: str
    kind: str  # "cnn" | "snn"
    input_shape: tuple[int, ...]
    bytes: int
    T: int | None = None
    dt: float | None = None
    nodes: dict[str, int] | None = None  # NIR node types and counts
    checked: bool = False
    check_batch: int = 0
    max_abs_diff: float | None = None
    tolerance: float | None = None
    spike_mismatch: float | None = None  # NIR: fraction of neuron outputs that differ from the SNN's
    spikes_compared: int | None = None  # NIR: neuron outputs compared (layers x neurons x T x batch)
    firing_rate: float | None = None  # NIR: the SNN's mean firing rate on the check inputs
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    def summary(self) -> str:
        lines = [f"wrote {self.path} ({self.format}, {self.kind}, {self.bytes:,} bytes; input "
                 f"{'x'.join(map(str, self.input_shape))}" + (f", T={self.T}" if self.T else "") +
                 (f", dt={self.dt:g}" if self.dt else "") + ")"]
        if self.nodes:
            lines.append("NIR nodes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.nodes.items())))
        if self.checked:
            line = (f"check: read back and ran on {self.check_batch} random inputs: max |output - PyTorch| = "
                    f"{self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g})")
            if self.spike_mismatch is not None:
                line += (f"; spikes differing: {self.spike_mismatch:.3%} of {self.spikes_compared:,} "
                         f"(firing rate {self.firing_rate:.1%})")
            lines.append(line)
        else:
            lines.append("check: skipped")
        lines.extend(self.notes)
        return "\n".join(lines)


def _resolve_format(path: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = _SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise SpikeliteError(f"cannot tell the export format from {path.name!r}; pass format= one of "
                                 f"{', '.join(FORMATS)} (or use a .nir, .onnx or .pt file name)")
        return fmt
    f = str(fmt).lower()
    if f not in FORMATS:
        raise SpikeliteError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    return f


def _check_output_path(path: Path) -> None:
    if path.is_dir():
        raise SpikeliteError(f"output {path} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpikeliteError(f"cannot write {path}: cannot create its directory {path.parent} "
                             f"({exc.strerror or exc})") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise SpikeliteError(f"cannot write {path}: directory {path.parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise SpikeliteError(f"cannot write {path}: the existing file is read-only")


@contextlib.contextmanager
def _temp_beside(path: Path):
    """A temporary path in ``path``'s directory; removed unless the caller moved it into place."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise SpikeliteError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _check_input(shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def _tolerance(ref: torch.Tensor, rel: float) -> float:
    return rel * (1.0 + float(ref.abs().max()))


def _spiking_outputs(net: SpikingNet, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    rec: dict[str, torch.Tensor] = {}
    hooks = []
    for path, act in net.spiking_layers():
        def hook(m, a, out, path=path):
            rec[path] = out.detach().reshape(net.T, -1, *out.shape[1:])
        hooks.append(act.register_forward_hook(hook))
    try:
        with torch.no_grad():
            y = net(x)
    finally:
        for h in hooks:
            h.remove()
    return y, rec


def _export_nir(model, tmp: Path, shape, dt, check, check_batch, seed, result: ExportResult) -> None:
    nir = _require("nir", "NIR export")
    graph = to_nir(model, shape, dt)
    try:
        nir.write(tmp, graph)
    except OSError as exc:
        raise SpikeliteError(f"cannot write {result.path}: {exc}") from None
    counts: dict[str, int] = {}
    for node in graph.nodes.values():
        counts[type(node).__name__] = counts.get(type(node).__name__, 0) + 1
    result.nodes = counts
    result.dt = float(dt)
    if not check:
        return
    back = nir_to_torch(tmp)
    ref_net = _reference_copy(model)
    x = _check_input(shape, check_batch, seed)
    mismatch = None
    if model.encoding == "rate":  # the graph's input is the spike trains: draw them as SpikingNet.encode does
        g = torch.Generator().manual_seed(seed)
        p = torch.rand(check_batch, *shape, generator=g)
        steps = torch.bernoulli(p.unsqueeze(0).expand(ref_net.T, *p.shape), generator=g)
        with torch.no_grad():
            ref = ref_net.body(steps.flatten(0, 1)).view(ref_net.T, check_batch, -1).mean(0)
            y = back.forward_steps(steps, record=False).mean(0)
    else:
        ref, spikes = _spiking_outputs(ref_net, x)
        with torch.no_grad():
            ys, nir_spikes = back.forward_steps(x, T=ref_net.T, record=True)
        y = ys.mean(0)
        diff = total = fired = 0
        for node, paths in back.layers.items():
            if all(p in spikes for p in paths):
                ours = torch.cat([spikes[p] for p in paths], dim=2) if len(paths) > 1 else spikes[paths[0]]
                diff += int((ours != nir_spikes[node]).sum())
                total += ours.numel()
                fired += int(ours.sum())
        if total:
            mismatch = diff / total
            result.spikes_compared, result.firing_rate = total, fired / total
    _compare(result, ref, y, rel=1e-3, batch=check_batch)
    result.spike_mismatch = mismatch


def _compare(result: ExportResult, ref: torch.Tensor, got: torch.Tensor, rel: float, batch: int) -> None:
    got = torch.as_tensor(got, dtype=ref.dtype).reshape(ref.shape)
    diff = float((got - ref).abs().max())
    tol = _tolerance(ref, rel)
    result.checked, result.check_batch, result.max_abs_diff, result.tolerance = True, batch, diff, tol
    if not diff <= tol:
        raise SpikeliteError(f"the exported {result.format} model's outputs differ from PyTorch's by up to "
                             f"{diff:.3g} (tolerance {tol:.3g}) on {batch} random inputs; nothing was written")


def _trace_input(shape, batch: int) -> torch.Tensor:
    return _check_input(shape, batch, 12345)


def _export_onnx(model, tmp: Path, shape, opset, check, check_batch, seed, result: ExportResult) -> None:
    _require("onnx", "ONNX export")
    net = _inference_copy(model)
    x = _trace_input(shape, 2)
    kwargs = dict(input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"},
                                                                                  "logits": {0: "batch"}})
    if opset is not None:
        kwargs["opset_version"] = int(opset)
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if dynamo:
                    kw = {k: v for k, v in kwargs.items() if k != "dynamic_axes"}
                    kw["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1)}}
                    torch.onnx.export(net, (x,), str(tmp), dynamo=True, **kw)
                else:
                    torch.onnx.export(net, (x,), str(tmp), dynamo=False, **kwargs)
            break
        except SpikeliteError:
            raise
        except Exception as exc:
            errors.append(f"{'dynamo' if dynamo else 'TorchScript-based'} exporter: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
    else:
        raise SpikeliteError("torch.onnx.export failed: " + "; ".join(errors))
    if not check:
        return
    ort = _require("onnxruntime", "checking the ONNX file (pass check=False / --no-check to skip)")
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    xc = _check_input(shape, check_batch, seed)
    with torch.no_grad():
        ref = _reference_copy(model)(xc)
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: xc.numpy()})[0])
    _compare(result, ref, got, rel=1e-4 if result.kind == "cnn" else 1e-3, batch=check_batch)


def _export_torchscript(model, tmp: Path, shape, check, check_batch, seed, result: ExportResult) -> None:
    net = _inference_copy(model)
    x = _trace_input(shape, 2)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, (x,), check_trace=False)
            torch.jit.save(traced, str(tmp))
    except SpikeliteError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SpikeliteError(f"torch.jit.trace failed: {type(exc).__name__}: {first}") from None
    if not check:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(tmp))
    xc = _check_input(shape, check_batch, seed)
    with torch.no_grad():
        ref = _reference_copy(model)(xc)
        got = loaded(xc)
    _compare(result, ref, got, rel=1e-5, batch=check_batch)


def export(model: nn.Module, path: str | os.PathLike, format: str | None = None, *, input_shape=None,
           dt: float = DEFAULT_DT, opset: int | None = None, check: bool = True, check_batch: int = 3,
           seed: int = 0) -> ExportResult:
    """Write ``model`` (a CNN or a :class:`~spikelite.snn.SpikingNet`) to ``path``.

    Args:
        format: ``"nir"`` (SNNs only), ``"onnx"`` or ``"torchscript"``; default from the suffix
            (``.nir``/``.h5``, ``.onnx``, ``.pt``/``.ts``).
        input_shape: ``(C, H, W)``; default from ``model.spikelite_spec``.
        dt: NIR only: the Euler step the time constants are written for.
        opset: ONNX only: the opset version (default: torch's).
        check: read the written file back, run it on ``check_batch`` seeded random inputs and
            compare with the PyTorch model (SNN: with its T); the file is moved into place only if
            the outputs agree.

    The file is written next to ``path`` under a temporary name and ``os.replace``-d into place,
    so a failure leaves no partial file and an existing file untouched.
    """
    if not isinstance(model, nn.Module):
        raise SpikeliteError(f"export expects an nn.Module, got {type(model).__name__}")
    out = Path(path)
    fmt = _resolve_format(out, format)
    if isinstance(check_batch, bool) or not isinstance(check_batch, int) or check_batch < 1:
        raise SpikeliteError(f"check_batch must be a positive integer, got {check_batch!r}")
    snn = isinstance(model, SpikingNet)
    if fmt == "nir" and not snn:
        raise SpikeliteError(f"NIR describes spiking networks; {type(model).__name__} is a CNN: spikify it first, "
                             "or export it with format 'onnx' or 'torchscript'")
    if snn and fmt != "nir" and model.encoding == "rate":
        raise SpikeliteError(f"a rate-encoded SNN samples random input spikes inside forward(), which {fmt} cannot "
                             "reproduce; export it to NIR (the graph takes the spike trains as input) or use "
                             "direct encoding")
    shape = _input_shape(model, input_shape)
    _check_output_path(out)
    result = ExportResult(path=str(out), format=fmt, kind="snn" if snn else "cnn", input_shape=shape, bytes=0,
                          T=int(model.T) if snn else None)
    with _temp_beside(out) as tmp:
        if fmt == "nir":
            _export_nir(model, tmp, shape, dt, check, check_batch, seed, result)
        elif fmt == "onnx":
            _export_onnx(model, tmp, shape, opset, check, check_batch, seed, result)
        else:
            _export_torchscript(model, tmp, shape, check, check_batch, seed, result)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        result.bytes = tmp.stat().st_size
        try:
            os.replace(tmp, out)
        except OSError as exc:
            raise SpikeliteError(f"cannot write {out}: {exc.strerror or exc}") from None
    return result


# ----------------------------------------------------------------------------------------------
# Checkpoints and the CLI
# ----------------------------------------------------------------------------------------------


def export_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike, format: str | None = None, *,
                      T: int | None = None, image_size: int | None = None, **kwargs) -> ExportResult:
    """:func:`export` for a spikelite checkpoint file (``spikelite.train.load_model``)."""
    out = Path(path)
    fmt = _resolve_format(out, format)  # fail on a bad format before loading anything
    _check_output_path(out)
    if not Path(checkpoint).is_file():
        raise SpikeliteError(f"checkpoint {str(checkpoint)!r} does not exist")
    from .checkpoint import load_model

    model, meta = load_model(checkpoint)
    if T is not None:
        if not isinstance(model, SpikingNet):
            raise SpikeliteError("T applies to SNN checkpoints only")
        model.T = T
    if image_size is not None:
        if int(image_size) < 1:
            raise SpikeliteError(f"image_size must be >= 1, got {image_size}")
        spec = meta.get("model_spec") or {}
        kwargs.setdefault("input_shape", (int(spec.get("in_chans", 3)), int(image_size), int(image_size)))
    return export(model, out, fmt, **kwargs)
