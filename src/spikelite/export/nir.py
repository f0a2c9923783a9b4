"""SNN -> NIR: :func:`to_nir`, the symbolic values it walks a network's eval graph with, and the
graph builder.

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
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import __version__
from ..errors import SpikeliteError
from ..snn import IF, LIF, SpikingActivation, SpikingNet, StepBatchNorm, TimeBroadcast, mark_spikes
from .common import _is_plain_neuron, _require

DEFAULT_DT = 1e-4  # the step most NIR readers assume (snnTorch, SpikingJelly)
SPIKE_RULE = "v >= v_threshold"


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
