"""CNN → SNN conversion: :func:`spikify`.

``spikify(model, T=4)`` takes any PyTorch CNN — a torchvision or timm model as it comes, or a user's
own module — and returns a :class:`SpikingNet` in which every activation is a LIF neuron layer.

How it works:

1. The model is deep-copied (the caller's model is never touched) and traced with ``torch.fx``
   twice, in train and in eval mode, so code that branches on ``self.training`` stays correct.
   Functional activations (``F.relu(x)``, ``x.relu()``, ``torch.relu``, ``F.silu`` …) are graph
   nodes and are converted like activation modules; nothing is silently left analog.
2. Every activation call site becomes a :class:`SpikingActivation` module, stored at the
   activation module's own path (so ``features.3.squeeze_activation`` keeps its name); functional
   calls get a new module ``<owner>.act_fn<k>``. Sigmoid / Hardsigmoid gates (squeeze-excitation)
   stay analog on purpose. Activations we cannot turn into spikes (Tanh, ELU, Mish, …) raise one
   error that names them.
3. Time is folded into the batch. Stateless layers run once over ``T·N`` samples; only neurons see
   time (they view ``[T·N, …]`` as ``[T, N, …]``). With direct encoding the input is the same at
   every step, so every node that does not depend on a neuron output (the stem conv and its
   BatchNorm) runs once on ``N`` samples and is broadcast over T where it meets the temporal part.
4. The result maps ``[N, C, H, W]`` to ``[N, classes]``: the mean over time of the per-step
   classifier output. :meth:`SpikingNet.forward_steps` returns the per-step outputs ``[T, N, classes]``
   for losses that need them (TET).

Converting a trained CNN keeps its weights. Optional threshold balancing (``balance=99.9`` with a
``calibration`` batch) sets each neuron layer's threshold to that percentile of the CNN's
(rectified) pre-activation values at that site.
"""

from __future__ import annotations

from __future__ import annotations

import copy
import operator
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import SpikeliteError
from .inference import InferenceModel, _cnn_copy, _EvalOnly, _freeze, _to_channels_last, fold_batchnorm
from .layers import (ACTIVATION_FUNCTIONS, ACTIVATION_METHODS, TIME_BN_MODES, UNCONVERTIBLE_FUNCTIONS,
                     UNCONVERTIBLE_METHODS, SpikingActivation, StepBatchNorm, TimeBroadcast, _charge_offset, _check_T,
                     _is_activation_module, _is_bn_act, _is_unconvertible_module, _pack_saved, _PLAIN_BN, _trace,
                     _unpack_saved, make_neuron, mark_spikes)
from .neuron import LIF, QCFS, ConversionIF
from .window import chunk_aware, check_time_chunk, time_window, unmarked_hooks, windows

__all__ = [
    "spikify",
    "SpikingNet",
    "per_step_batchnorm",
    "respikify",
    "balance_thresholds",
    "recalibrate_bn",
    "inference_model",
    "InferenceNet",
    "activation_percentile",
    "AUTO_CHUNK_VALUES",
]

_NET = object()  # forward_steps(time_chunk=...) not given: the network's own setting

#: ``time_chunk="auto"``: a call on N samples of V input values each runs in windows of time steps when
#: ``T x N x V`` exceeds this (2,048 steps x images at 3x32x32: T = 4 at batch 500 runs in one pass), with
#: ``AUTO_CHUNK_VALUES // (N x V)`` steps per window (at least one): activation memory grows with the input's
#: size, and the zoo's SqueezeNet 1.1 at
#: 32x32 holds about 2 MB per step x image at its peak (docs/performance.md, "Inference at large T").
AUTO_CHUNK_VALUES = 6 * 2 ** 20


_NON_TENSOR_METHODS = {"size", "dim", "numel", "nelement", "element_size", "item", "tolist", "__len__"}
_NON_TENSOR_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad"}


def _nodes_in(arg) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(arg, lambda n: found.append(n))
    return found


def _owner_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    path = last[0] if isinstance(last, tuple) else str(last)
    return path or ""


def _unique_name(root: nn.Module, base: str) -> str:
    name, k = base, 1
    while True:
        try:
            root.get_submodule(name)
        except AttributeError:
            return name
        name = f"{base}_{k}"
        k += 1


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    *parents, leaf = path.split(".")
    owner = root
    for p in parents:
        if not hasattr(owner, p):
            owner.add_module(p, nn.Module())
        owner = getattr(owner, p)
    setattr(owner, leaf, module)


def _describe_site(node: fx.Node, module: nn.Module | None) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(module).__name__})"
    owner = _owner_path(node) or "<root>"
    tgt = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{tgt}() in {owner}"


def _activation_sites(gm: fx.GraphModule):
    """Return (convertible nodes, unconvertible node descriptions)."""
    acts, bad = [], []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if _is_activation_module(m):
                acts.append(node)
            elif _is_unconvertible_module(m):
                bad.append(_describe_site(node, m))
        elif node.op == "call_function":
            if node.target in ACTIVATION_FUNCTIONS:
                acts.append(node)
            elif node.target in UNCONVERTIBLE_FUNCTIONS:
                bad.append(_describe_site(node, None))
        elif node.op == "call_method":
            if node.target in ACTIVATION_METHODS:
                acts.append(node)
            elif node.target in UNCONVERTIBLE_METHODS:
                bad.append(_describe_site(node, None))
    return acts, bad


def _leaf_inner_activations(gm: fx.GraphModule) -> dict[fx.Node, list[str]]:
    """Leaf modules called by the graph (e.g. BatchNormAct2d) that hold activation submodules."""
    inner: dict[fx.Node, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = gm.get_submodule(node.target)
        if _is_activation_module(m):
            continue
        paths = [f"{node.target}.{n}" for n, sub in m.named_modules() if n and _is_activation_module(sub)]
        bad = [f"{node.target}.{n} ({type(sub).__name__})" for n, sub in m.named_modules()
               if n and _is_unconvertible_module(sub)]
        if bad:
            raise SpikeliteError(f"cannot convert activation(s) with no spiking counterpart: {', '.join(bad)}")
        if paths:
            inner[node] = paths
    return inner


class _Plan:
    """The conversion decisions for one traced graph, shared by the train and eval graphs."""

    def __init__(self):
        self.site_names: dict[tuple, str] = {}  # site key -> module path of its SpikingActivation
        self.modules: dict[str, SpikingActivation] = {}
        self.fn_counter: dict[str, int] = {}
        self.temporal_modules: set[str] = set()  # modules called on [T·N, …] tensors
        self.spike_inputs = False  # put a neuron layer before every conv of the temporal part that reads non-spikes
        self.input_spike_names: dict[str, str] = {}  # conv module path -> path of its input neuron layer


def _site_key(node: fx.Node, gm: fx.GraphModule, occurrence: dict) -> tuple:
    if node.op == "call_module":
        base = ("module", node.target)
    else:
        tgt = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        base = ("fn", _owner_path(node), tgt)
    k = occurrence.get(base, 0)
    occurrence[base] = k + 1
    return base + (k,)


def _build_spiking_graph(gm: fx.GraphModule, T: int, factory, encoding: str, plan: _Plan) -> tuple[bool, dict]:
    """Rewrite ``gm`` in place. Returns (output_is_temporal, {node name of original act site: module path})."""
    graph = gm.graph
    acts, bad = _activation_sites(gm)
    if bad:
        raise SpikeliteError(
            "cannot convert activation(s) with no spiking counterpart: " + ", ".join(bad)
            + ". Replace them with ReLU/SiLU-like activations, or convert them yourself before spikify()."
        )
    act_set = set(acts)
    inner = _leaf_inner_activations(gm)
    temporal: dict[fx.Node, bool] = {}
    non_tensor: set[fx.Node] = set()
    occurrence: dict = {}
    site_paths: dict[str, str] = {}
    n_broadcast = 0

    def broadcast(n: fx.Node, before: fx.Node) -> fx.Node:
        nonlocal n_broadcast
        name = _unique_name(gm, f"time_broadcast{n_broadcast}")
        n_broadcast += 1
        gm.add_module(name, TimeBroadcast(T))
        with graph.inserting_before(before):
            b = graph.call_module(name, (n,))
        temporal[b] = True
        return b

    for node in list(graph.nodes):
        if node.op == "placeholder":
            temporal[node] = encoding == "rate"
            continue
        if node.op == "get_attr":
            temporal[node] = False
            continue
        inputs = [n for n in _nodes_in((node.args, node.kwargs)) if n in temporal]
        tensor_inputs = [n for n in inputs if n not in non_tensor]
        # Non-tensor bookkeeping (x.size(), x.shape[0], arithmetic on them).
        if (node.op == "call_method" and node.target in _NON_TENSOR_METHODS) or (
            node.op == "call_function" and node.target is getattr and len(node.args) > 1
            and node.args[1] in _NON_TENSOR_ATTRS
        ) or (
            node.op == "call_function" and inputs and not tensor_inputs
            and getattr(node.target, "__module__", None) in ("_operator", "operator", "builtins")
        ) or (node.op == "call_function" and node.target is len):
            non_tensor.add(node)
            temporal[node] = False
            continue
        if node.op == "output":
            continue
        if node in act_set:
            key = _site_key(node, gm, occurrence)
            src = node.args[0]
            is_static = not temporal.get(src, False)
            path = plan.site_names.get(key)
            if path is None:
                act = None
                if node.op == "call_module":
                    path = node.target if key[-1] == 0 else _unique_name(gm, f"{node.target}__{key[-1]}")
                    act = gm.get_submodule(node.target)
                    source = type(act).__name__
                else:
                    owner = key[1]
                    k = plan.fn_counter.get(owner, 0)
                    plan.fn_counter[owner] = k + 1
                    path = f"{owner}.act_fn{k}" if owner else f"act_fn{k}"
                    tgt = key[2]
                    source = f"F.{tgt}" if node.op == "call_function" else f"Tensor.{tgt}"
                plan.site_names[key] = path
                neuron = factory()
                plan.modules[path] = SpikingActivation(neuron, T, broadcast=is_static, source=source,
                                                       charge_offset=_charge_offset(act, neuron))
            module = plan.modules[path]
            if module.broadcast != is_static:  # train and eval graphs disagree: broadcast explicitly
                if is_static:
                    src = broadcast(src, node)
                module.broadcast = False
            _set_submodule(gm, path, module)
            with graph.inserting_before(node):
                new = graph.call_module(path, (src,))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            temporal[new] = True
            site_paths[node.name] = path
            continue
        if node in inner:
            leaf = gm.get_submodule(node.target)
            for path in inner[node]:
                rel = path[len(node.target) + 1:]
                sub = leaf.get_submodule(rel)
                if not isinstance(sub, SpikingActivation):
                    key = ("inner", path, 0)
                    if key not in plan.site_names:
                        plan.site_names[key] = path
                        neuron = factory()
                        plan.modules[path] = SpikingActivation(neuron, T, broadcast=False, source=type(sub).__name__,
                                                               charge_offset=_charge_offset(sub, neuron))
                    _set_submodule(leaf, rel, plan.modules[plan.site_names[key]])
                site_paths[f"{node.name}:{rel}"] = path
            src = node.args[0]
            if isinstance(src, fx.Node) and not temporal.get(src, False):
                node.args = (broadcast(src, node),) + tuple(node.args[1:])
            temporal[node] = True
            plan.temporal_modules.add(node.target)
            continue
        # An ordinary node: temporal when any input is; mixed tensor inputs get the static ones broadcast.
        is_t = any(temporal[n] for n in tensor_inputs)
        if is_t:
            static = [n for n in tensor_inputs if not temporal[n]]
            for s in dict.fromkeys(static):
                b = broadcast(s, node)
                node.args = fx.node.map_arg(node.args, lambda n, s=s, b=b: b if n is s else n)
                node.kwargs = fx.node.map_arg(node.kwargs, lambda n, s=s, b=b: b if n is s else n)
        temporal[node] = is_t
        if is_t and node.op == "call_module":
            plan.temporal_modules.add(node.target)

    out_node = next(n for n in graph.nodes if n.op == "output")
    outs = _nodes_in(out_node.args)
    if len(outs) != 1 or not isinstance(out_node.args[0], fx.Node):
        raise SpikeliteError("spikify supports models that return one tensor (the logits)")
    if not plan.modules:
        raise SpikeliteError(
            f"{type(gm).__name__}: found no activation to convert (ReLU, ReLU6, LeakyReLU, SiLU, Hardswish, GELU "
            "modules or F.relu-style calls)"
        )
    if plan.spike_inputs:
        _spike_conv_inputs(gm, T, factory, plan, temporal)
    _mark_binary_inputs(gm)
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return temporal[outs[0]], site_paths


_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _spike_conv_inputs(gm: fx.GraphModule, T: int, factory, plan: _Plan, temporal: dict) -> None:
    """Insert a neuron layer before every convolution of the temporal part whose input is not spikes
    (``spikify(..., spike_inputs=True)``): residual streams, linear bottlenecks, average-pooled maps."""
    binary = _binary_nodes(gm, through_dropout=True)  # so the train and eval graphs agree
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not temporal.get(node, False) or not node.args:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src in binary or not isinstance(gm.get_submodule(node.target), _CONV_TYPES):
            continue
        path = plan.input_spike_names.get(node.target)
        if path is None:
            parent, _, leaf = node.target.rpartition(".")
            path = _unique_name(gm, f"{parent}.{leaf}_input_spike" if parent else f"{leaf}_input_spike")
            plan.input_spike_names[node.target] = path
            plan.modules[path] = SpikingActivation(factory(), T, broadcast=False, source="input")
        _set_submodule(gm, path, plan.modules[path])
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(path, (src,))
        temporal[new] = True
        node.args = (new,) + tuple(node.args[1:])


# --------------------------------------------------------------------------------------------
# Compact spike storage: spike tensors saved for backward are kept as 1-byte booleans
# --------------------------------------------------------------------------------------------

_BINARY_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                   nn.Identity, nn.Flatten, nn.Unflatten, nn.ChannelShuffle, nn.ZeroPad2d, TimeBroadcast)
_BINARY_FUNCTIONS = {torch.cat, torch.concat, torch.flatten, torch.reshape, torch.transpose, torch.permute,
                     torch.chunk, torch.split, operator.getitem, F.max_pool1d, F.max_pool2d, F.max_pool3d,
                     torch.channel_shuffle, torch.squeeze, torch.unsqueeze, torch.stack}
_BINARY_METHODS = {"view", "reshape", "flatten", "transpose", "permute", "contiguous", "chunk", "split",
                   "squeeze", "unsqueeze", "expand", "repeat"}
# modules whose backward keeps their input (max-pooling keeps it beside the argmax indices)
_SAVES_INPUT = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _binary_nodes(gm: fx.GraphModule, through_dropout: bool = False) -> set[fx.Node]:
    """The graph's nodes whose value is, statically, a spike tensor (0/1 only). ``through_dropout``:
    also through dropout (0 or 1/(1-p) in training, the identity in eval: spikes still, scaled)."""
    binary: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            # a neuron layer, or a BatchNorm whose last step is one (timm's BatchNormAct2d)
            act = m if isinstance(m, SpikingActivation) else getattr(m, "act", None)
            if isinstance(act, SpikingActivation) and (isinstance(m, SpikingActivation)
                                                       or isinstance(m, nn.modules.batchnorm._BatchNorm)):
                if getattr(act.neuron, "binary_spikes", True):
                    binary.add(node)
                continue
            ok = isinstance(m, _BINARY_MODULES) or (through_dropout and isinstance(m, nn.modules.dropout._DropoutNd))
        elif through_dropout and node.op == "call_function" and node.target is F.dropout:
            ok = True
        elif node.op == "call_function":
            ok = node.target in _BINARY_FUNCTIONS
        elif node.op == "call_method":
            ok = node.target in _BINARY_METHODS
        else:
            ok = False
        if not ok:
            continue
        first = node.args[0] if node.args else None
        tensors = _nodes_in(first) if isinstance(first, (list, tuple)) else ([first] if isinstance(first, fx.Node) else [])
        if tensors and all(t in binary for t in tensors):
            binary.add(node)
    return binary


def _mark_binary_inputs(gm: fx.GraphModule) -> None:
    """Tag, statically, the binary tensors that a conv/linear layer saves for its backward."""
    binary = _binary_nodes(gm)
    for node in list(binary):
        users = [u for u in node.users if u.op == "call_module" and isinstance(gm.get_submodule(u.target), _SAVES_INPUT)]
        if not users:
            continue
        with gm.graph.inserting_after(node):
            tag = gm.graph.call_function(mark_spikes, (node,))
        for u in users:
            u.args = fx.node.map_arg(u.args, lambda n: tag if n is node else n)


# --------------------------------------------------------------------------------------------
# The spiking network
# --------------------------------------------------------------------------------------------


_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_MAX_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                       F.adaptive_max_pool3d}


def _first_layer(model: nn.Module):
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m.in_channels, m.weight.dim()
        if isinstance(m, nn.Linear):
            return m.in_features, 2
    return None, None


def _check_finite_input(x: torch.Tensor) -> None:
    """Refuse NaN and ±inf in a network's input. A neuron compares its membrane with the threshold, and a
    comparison with NaN is false: a NaN image would make silent layers and a confident class instead of the
    NaN a CNN returns. One ``isfinite().all()`` over the input (a device sync on a GPU); skipped while
    ``torch.compile``, ``torch.export``, ``torch.jit.trace`` or the ONNX exporter traces the network, where
    the input holds no values."""
    if not (x.is_floating_point() or x.is_complex()) or x.device.type == "meta":
        return
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        nan = int(torch.isnan(x).sum())
        raise SpikeliteError(
            f"input holds {bad} non-finite value(s) ({nan} NaN, {bad - nan} ±inf) of {x.numel()}: a spiking network "
            "would answer such an input with a confident class; clean the input (e.g. torch.nan_to_num) or find "
            "where the NaN/inf comes from")


class SpikingNet(nn.Module):
    """A time-folded spiking network made by :func:`spikify`.

    ``net(x)`` maps ``[N, C, H, W]`` to ``[N, classes]`` (mean over time of the per-step outputs);
    :meth:`forward_steps` returns ``[T, N, classes]``. ``net.T`` can be changed at any time (train
    short, evaluate longer). ``net.body`` holds the CNN's layers under their original names.
    """

    def __init__(self, body: fx.GraphModule, eval_graph: fx.Graph | None, T: int, encoding: str,
                 output_temporal: bool, output_temporal_eval: bool, in_channels: int | None, input_dim: int | None,
                 neuron_config: dict | None):
        super().__init__()
        self.body = body
        self._eval_graph = eval_graph
        self._eval_body: list[fx.GraphModule] = []  # not registered: shares body's modules
        self._output_temporal = (bool(output_temporal), bool(output_temporal_eval))
        self.encoding = encoding
        self.in_channels = in_channels
        self.input_dim = input_dim
        self.neuron_config = neuron_config
        # Spike tensors that convolutions save for backward are stored as booleans (1 byte, not 4).
        self.compact_spikes = True
        self._checkpoint_segments = 0
        self._temporal_bns: tuple[str, ...] = ()  # BatchNorm paths in the spiking part (set by spikify)
        self._T = int(T)
        self._time_chunk = "auto"
        self._rebuild_eval_body()

    # -- structure -------------------------------------------------------------------------
    def _rebuild_eval_body(self) -> None:
        self._eval_body = [] if self._eval_graph is None else [fx.GraphModule(self.body, self._eval_graph)]
        self._ckpt_body: list[fx.GraphModule] = []  # built on first use: shares body's modules

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._rebuild_eval_body()
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._rebuild_eval_body()
        return result

    def __deepcopy__(self, memo):
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k not in ("_eval_body", "_ckpt_body"):
                new.__dict__[k] = copy.deepcopy(v, memo)
        new.__dict__["_eval_body"] = []
        new._rebuild_eval_body()
        return new

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_eval_body"] = []
        state["_ckpt_body"] = []
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._rebuild_eval_body()

    def spiking_layers(self) -> list[tuple[str, SpikingActivation]]:
        """The neuron layers in graph order, as (module path in ``body``, module)."""
        seen, out = set(), []
        for node in self.body.graph.nodes:
            if node.op == "call_module":
                m = self.body.get_submodule(node.target)
                if isinstance(m, SpikingActivation) and id(m) not in seen:
                    seen.add(id(m))
                    out.append((node.target, m))
                else:
                    for n, sub in m.named_modules():
                        if n and isinstance(sub, SpikingActivation) and id(sub) not in seen:
                            seen.add(id(sub))
                            out.append((f"{node.target}.{n}", sub))
        return out

    @property
    def checkpoint_segments(self) -> int:
        """Activation checkpointing for training: 0 (off) or k ≥ 1 segments (see :mod:`spikelite.snn.recompute`)."""
        return getattr(self, "_checkpoint_segments", 0)

    @checkpoint_segments.setter
    def checkpoint_segments(self, value: int) -> None:
        from .recompute import check_segments

        self._checkpoint_segments = check_segments(value)
        self._ckpt_body = []

    @property
    def recompute_neurons(self) -> bool:
        """Training keeps only each BatchNorm → neuron pair's input and recomputes the pair in backward
        (see :func:`spikelite.snn.recompute.recomputed_body`). Ignored while ``checkpoint_segments`` is on."""
        return getattr(self, "_recompute_neurons", False)

    @recompute_neurons.setter
    def recompute_neurons(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise SpikeliteError(f"recompute_neurons must be True or False, got {value!r}")
        self._recompute_neurons = value
        self._ckpt_body = []

    def _training_body(self) -> fx.GraphModule:
        """``body``, or its checkpointed variant when ``checkpoint_segments`` or ``recompute_neurons`` is on
        (built once, cached)."""
        k = self.checkpoint_segments
        if not (k or self.recompute_neurons) or not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self.body
        if not getattr(self, "_ckpt_body", None):
            from .recompute import checkpointed_body, recomputed_body

            self._ckpt_body = [checkpointed_body(self.body, k) if k else recomputed_body(self.body)]
        return self._ckpt_body[0]

    def train(self, mode: bool = True) -> "SpikingNet":
        """As ``nn.Module.train``; a network of ConversionIF neurons (made by :func:`convert`) keeps its
        BatchNorm layers in eval mode: their statistics are the CNN's, which the conversion's equivalence
        rests on, and batch statistics of spikes (a channel that never fired has zero variance) would make
        its gradients explode. Their affine parameters still train."""
        super().train(mode)
        if mode and (self.neuron_config or {}).get("kind") == "conversion_if":
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # -- conversion options, read off the modules (so every copy reports them) ---------------
    def _step_bns(self) -> list["StepBatchNorm"]:
        return [m for m in self.body.modules() if isinstance(m, StepBatchNorm)]

    @property
    def time_bn(self) -> str:
        """``"per-step"`` when the network has :class:`StepBatchNorm` layers, else ``"shared"``."""
        return "per-step" if self._step_bns() else "shared"

    @property
    def time_bn_steps(self) -> int | None:
        """How many steps the per-step BatchNorm layers hold (None without them)."""
        bns = self._step_bns()
        return bns[0].steps if bns else None

    @property
    def spike_inputs(self) -> bool:
        """True when neuron layers were put before convs that would read non-spikes (``spike_inputs=True``)."""
        return any(m.source == "input" for _, m in self.spiking_layers())

    @property
    def T(self) -> int:
        return self._T

    @T.setter
    def T(self, value: int) -> None:
        value = _check_T(value)
        self._T = value
        for m in self.body.modules():
            if isinstance(m, (SpikingActivation, TimeBroadcast, StepBatchNorm)):
                m.T = value

    @property
    def time_chunk(self):
        """How inference runs time (see :meth:`forward_steps`): ``"auto"`` (the default) runs the network in
        windows of time steps when ``T x batch`` is large (:data:`AUTO_CHUNK_VALUES`), ``K`` in windows of at
        most K steps, ``None`` always all T steps in one pass."""
        return getattr(self, "_time_chunk", "auto")

    @time_chunk.setter
    def time_chunk(self, value) -> None:
        self._time_chunk = check_time_chunk(value)

    def inference(self, channels_last: bool = False) -> "SpikingNet":
        """An eval-only, autograd-free copy with BatchNorm folded (see :func:`inference_model`)."""
        return inference_model(self, channels_last=channels_last)

    def config(self) -> dict:
        """What :func:`spikify` needs to rebuild this network (weights live in the state_dict)."""
        cfg = {"T": self.T, "encoding": self.encoding, "neuron": self.neuron_config}
        if self.time_bn != "shared":
            cfg.update(time_bn=self.time_bn, time_bn_steps=self.time_bn_steps)
        if self.spike_inputs:
            cfg["spike_inputs"] = True
        return cfg

    # -- running ---------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise SpikeliteError(f"SpikingNet expects a tensor input, got {type(x).__name__}")
        if self.input_dim is not None and x.dim() != self.input_dim:
            raise SpikeliteError(
                f"input has rank {x.dim()} (shape {tuple(x.shape)}); this network expects rank {self.input_dim} "
                f"[N, C, ...] — one sample per row, time is added inside"
            )
        if self.in_channels is not None and self.input_dim and self.input_dim > 2 and x.shape[1] != self.in_channels:
            raise SpikeliteError(f"input has {x.shape[1]} channels; this network expects {self.in_channels}")
        _check_finite_input(x)
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Input as the graph sees it: unchanged for direct encoding, ``[T·N, …]`` Bernoulli spikes for rate."""
        if self.encoding == "rate":
            p = x.clamp(0.0, 1.0)
            return torch.bernoulli(p.unsqueeze(0).expand(self.T, *p.shape)).flatten(0, 1)
        return x

    def forward_steps(self, x: torch.Tensor, *, time_chunk=_NET) -> torch.Tensor:
        """Per-step outputs ``[T, N, …]``.

        ``time_chunk`` (default: ``self.time_chunk``, ``"auto"``): run the temporal part of the network in
        windows of at most that many steps, each neuron's state handed from one window to the next, so that
        memory grows with ``time_chunk x N`` instead of ``T x N``; the layers before the first neuron (direct
        encoding) still run once. The spikes and outputs are those of the one-pass forward (a convolution
        over fewer rows may round differently in the last bit on some backends), and nothing is kept after
        the call. Inference only: eval mode, no autograd (``torch.no_grad``, an :class:`InferenceNet`).
        ``"auto"`` chunks only then, only when ``T x N x`` (input values per sample) exceeds
        :data:`AUTO_CHUNK_VALUES` (with windows that stay under it), and only when every forward hook on the
        network is marked :func:`~spikelite.snn.window.chunk_aware`; an explicit K raises
        :class:`SpikeliteError` where it cannot be honoured. ``None``: one pass.
        """
        x = self._check_input(x)
        n = x.shape[0]
        chunk = self._chunk_for(x, self.time_chunk if time_chunk is _NET else check_time_chunk(time_chunk))
        if chunk is not None:
            return self._forward_chunked(x, chunk)
        use_eval = not self.training and self._eval_body
        body = self._eval_body[0] if use_eval else self.body
        if self.training:
            body = self._training_body()
        if self.compact_spikes and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            with torch.autograd.graph.saved_tensors_hooks(_pack_saved, _unpack_saved):
                out = body(self.encode(x))
        else:
            out = body(self.encode(x))
        temporal = self._output_temporal[1 if use_eval else 0]
        if temporal:
            return out.view(self.T, n, *out.shape[1:])
        return out.unsqueeze(0).expand(self.T, *out.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_steps(x).mean(0)

    # -- chunked inference (windows of time steps) -------------------------------------------
    def _why_not_chunked(self) -> str | None:
        """Why this call cannot run in windows of time steps, or None."""
        if self.training:
            return "it runs inference only (BatchNorm in training mode would see one window's statistics); call .eval()"
        if torch.is_grad_enabled():
            return "it runs inference only (no gradient crosses windows); run under torch.no_grad()"
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() \
                or _fx_tracing():
            return "the network is being traced or compiled (one pass over all T steps is what gets recorded)"
        odd = sorted({type(m.neuron).__name__ for _, m in self.spiking_layers()
                      if not isinstance(m.neuron, (LIF, ConversionIF))})
        if odd:
            return (f"neuron type(s) {', '.join(odd)} cannot hand their state from one window to the next "
                    "(spikelite's LIF, IF and ConversionIF can)")
        return None

    def _chunk_for(self, x: torch.Tensor, chunk) -> int | None:
        """The window length for a call on the batch ``x`` under the ``time_chunk`` setting ``chunk``, or None
        for one pass."""
        T = self.T
        if chunk is None or T == 1 or not self._output_temporal[0 if self.training else 1]:
            return None
        if chunk == "auto":
            per_step = max(x.numel(), 1)  # input values of one step of the batch
            if T * per_step <= AUTO_CHUNK_VALUES or self._why_not_chunked() is not None or unmarked_hooks(self):
                return None
            return max(1, AUTO_CHUNK_VALUES // per_step)
        why = self._why_not_chunked()
        if why is not None:
            raise SpikeliteError(f"time_chunk={chunk}: cannot run in windows of time steps: {why}")
        return chunk if chunk < T else None

    def _forward_chunked(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """:meth:`forward_steps` in windows of at most ``chunk`` steps: the static part of the graph (what does
        not depend on a neuron: the stem under direct encoding) once, then the rest once per window."""
        gm = self._eval_body[0] if self._eval_body else self.body
        temporal = _temporal_nodes(gm, self.encoding)
        interp = fx.Interpreter(gm)
        interp.extra_traceback = False  # errors (SpikeliteError among them) come out as they were raised
        n, T = x.shape[0], self.T
        rate = self.encoding == "rate"
        drawn = None
        if rate and x.device.type != "cpu":  # one draw of all T steps: the one-pass forward's random numbers
            drawn = self.encode(x).view(T, n, *x.shape[1:])
        # the static nodes, once; only the values that temporal nodes read are kept
        interp.env = static = {}
        interp.args_iter = iter([x])
        for node in gm.graph.nodes:
            if node not in temporal and node.op != "output":
                static[node] = interp.run_node(node)
        needed = {a for node in temporal for a in _nodes_in((node.args, node.kwargs)) if a not in temporal}
        for node in static:
            if node not in needed:
                static[node] = None
        interp.env = {}
        outs = []
        try:
            for win in windows(T, chunk):
                if not rate:
                    inp = x
                elif drawn is not None:
                    inp = drawn[win.start:win.start + win.steps].flatten(0, 1)
                else:
                    inp = torch.bernoulli(x.clamp(0.0, 1.0).unsqueeze(0).expand(win.steps, *x.shape)).flatten(0, 1)
                with win:
                    out = interp.run(inp, initial_env=dict(static))
                outs.append(out.view(win.steps, n, *out.shape[1:]))
        finally:
            static.clear()
            interp.env = {}
        return torch.cat(outs)


def _fx_tracing() -> bool:
    probe = getattr(fx._symbolic_trace, "is_fx_symbolic_tracing", None) or fx._symbolic_trace.is_fx_tracing
    return bool(probe())


def _temporal_nodes(gm: fx.GraphModule, encoding: str) -> set[fx.Node]:
    """The nodes of a converted graph whose values hold time steps: the neuron layers, the time broadcasts
    (and modules holding either), the input under rate encoding, and everything computed from them."""
    temporal: set[fx.Node] = set()
    timed = (SpikingActivation, TimeBroadcast, StepBatchNorm)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if encoding == "rate":
                temporal.add(node)
            continue
        if node.op == "call_module" and any(isinstance(m, timed) for m in gm.get_submodule(node.target).modules()):
            temporal.add(node)
        elif any(a in temporal for a in _nodes_in((node.args, node.kwargs))):
            temporal.add(node)
    return temporal


class InferenceNet(_EvalOnly, SpikingNet):
    """Eval-only copy of a :class:`SpikingNet` (see :func:`inference_model`); ``T`` can still be changed."""

    channels_last: bool = False
    folded_bn: int = 0

    def forward_steps(self, x: torch.Tensor, *, time_chunk=_NET) -> torch.Tensor:
        with torch.inference_mode():
            if self.channels_last and isinstance(x, torch.Tensor):
                x = _to_channels_last(x)
            return super().forward_steps(x, time_chunk=time_chunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.forward_steps(x).mean(0)


def _spiking_copy(net: SpikingNet) -> InferenceNet:
    """An :class:`InferenceNet` built from ``net``'s eval graph on a deep copy of its modules."""
    work = copy.deepcopy(net)
    graph = work._eval_graph if work._eval_graph is not None else work.body.graph
    body = fx.GraphModule(work.body, copy.deepcopy(graph), class_name=type(work.body).__name__)
    body.delete_all_unused_submodules()
    out_t = work._output_temporal[1]
    new = InferenceNet(body, None, work.T, work.encoding, out_t, out_t, work.in_channels, work.input_dim,
                       work.neuron_config)
    new.compact_spikes = False
    new.time_chunk = net.time_chunk
    if hasattr(work, "spikelite_spec"):
        new.spikelite_spec = work.spikelite_spec
    return new


def inference_model(model: nn.Module, channels_last: bool = False, time_chunk=_NET) -> nn.Module:
    """An eval-only, autograd-free copy of ``model`` with BatchNorm folded where that is exact.

    Args:
        model: a :class:`SpikingNet` or a plain CNN (anything ``torch.fx`` can trace). Not modified.
        channels_last: store 4-D conv weights and inputs in NHWC order (a speed option; same values).
        time_chunk: for a SpikingNet, the copy's :attr:`SpikingNet.time_chunk` (default: the network's own,
            ``"auto"`` unless set): ``K`` runs it in windows of at most K time steps, ``None`` in one pass.

    Returns:
        an :class:`InferenceNet` (for a SpikingNet; ``T`` can still be set) or an
        :class:`InferenceModel`, in eval mode; ``.folded_bn`` is the number of BatchNorms folded.
    """
    if not isinstance(model, nn.Module):
        raise SpikeliteError(f"inference_model expects an nn.Module, got {type(model).__name__}")
    if isinstance(model, (InferenceNet, InferenceModel)):
        raise SpikeliteError("model is already an inference copy")
    if not isinstance(channels_last, bool):
        raise SpikeliteError(f"channels_last must be True or False, got {channels_last!r}")
    if time_chunk is not _NET:
        time_chunk = check_time_chunk(time_chunk)
        if not isinstance(model, SpikingNet):
            raise SpikeliteError("time_chunk applies to a SpikingNet; a CNN has no time steps")
    new = _spiking_copy(model) if isinstance(model, SpikingNet) else _cnn_copy(model)
    if time_chunk is not _NET:
        new.time_chunk = time_chunk
    new.folded_bn = fold_batchnorm(new.body)
    if isinstance(new, InferenceNet):
        new._rebuild_eval_body()
    _freeze(new)
    nn.Module.train(new, False)
    if channels_last:
        new.to(memory_format=torch.channels_last)
        new.channels_last = True
    return new


def per_step_batchnorm(net: "SpikingNet", steps: int | None = None) -> int:
    """Give every BatchNorm of ``net``'s spiking part (the layers that see ``T·N`` samples) per-step
    statistics and affine parameters (:class:`StepBatchNorm`), in place; ``steps`` defaults to ``net.T``.
    The stem's BatchNorm, which runs once on ``N`` samples under direct encoding, is left shared.
    Returns the number of layers replaced; raises when there is none or one is not a plain BatchNorm."""
    if not isinstance(net, SpikingNet):
        raise SpikeliteError(f"per_step_batchnorm expects a SpikingNet, got {type(net).__name__}")
    steps = net.T if steps is None else _check_T(steps)
    if net.time_bn == "per-step":
        raise SpikeliteError("this network's BatchNorm layers are already per-step")
    paths = list(getattr(net, "_temporal_bns", ()))
    bad = [f"{p} ({type(m).__name__})" for p in paths
           if not (type(m := net.body.get_submodule(p)) in _PLAIN_BN or _is_bn_act(m))]
    if bad:
        raise SpikeliteError("time_bn='per-step' replaces BatchNorm1d/2d/3d and timm's BatchNormAct2d layers; "
                             f"{len(bad)} are not: " + ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else ""))
    if not paths:
        raise SpikeliteError("time_bn='per-step': the network has no BatchNorm in its spiking part")
    for p in paths:
        _set_submodule(net.body, p, StepBatchNorm.from_batchnorm(net.body.get_submodule(p), steps, net.T))
    net._rebuild_eval_body()
    return len(paths)


# --------------------------------------------------------------------------------------------
# Threshold balancing
# --------------------------------------------------------------------------------------------


class _Recorder(fx.Interpreter):
    def __init__(self, gm, watch: set[str]):
        super().__init__(gm)
        self.watch = watch
        self.values: dict[str, list[torch.Tensor]] = {}

    def run_node(self, n):
        if n.name in self.watch:
            args, _ = self.fetch_args_kwargs_from_env(n)
            self.values.setdefault(n.name, []).append(args[0].detach())
        return super().run_node(n)


def activation_percentile(values: Iterable[torch.Tensor], q: float) -> float:
    """The ``q``-th percentile of the rectified ``values`` (a 4M-element seeded sample of larger ones); the
    maximum when that is 0, and 1 when everything is 0: a threshold that is always positive."""
    v = torch.cat([t.float().flatten() for t in values]).clamp_min(0.0)
    limit = 4_000_000
    if v.numel() > limit:
        g = torch.Generator().manual_seed(0)
        v = v[torch.randint(0, v.numel(), (limit,), generator=g)]
    thr = float(torch.quantile(v, q / 100.0))
    if thr <= 0:
        thr = float(v.max()) if float(v.max()) > 0 else 1.0
    return thr


class _StopForward(Exception):
    pass


def _first_call(net: nn.Module, module: nn.Module, x: torch.Tensor, output: bool) -> torch.Tensor | None:
    """``module``'s input (or ``output``) at its first call when ``net`` runs on ``x``; the rest of the forward
    is skipped. None when the module is not called. In a chunked run (:meth:`SpikingNet.forward_steps`) the
    module's first call in every window, concatenated (time-major, as one pass gives it), and the forward is
    stopped after the last window; the static input of a broadcast neuron layer (the same in every window) is
    taken once."""
    got: list[torch.Tensor] = []
    windows_seen: set[int] = set()

    @chunk_aware
    def grab(m, args, out=None):
        value = (out if output else args[0]).detach()
        win = time_window()
        if win is None:
            got.append(value)
            raise _StopForward
        if win.index not in windows_seen:
            windows_seen.add(win.index)
            if output or not getattr(m, "broadcast", False) or not got:
                got.append(value)
        if win.last:
            raise _StopForward

    h = module.register_forward_hook(grab) if output else module.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            net(x)
    except _StopForward:
        pass
    finally:
        h.remove()
    if not got:
        return None
    return got[0] if len(got) == 1 else torch.cat(got)


def balance_thresholds(net: "SpikingNet", calibration: torch.Tensor, percentile: float = 99.9) -> list[float]:
    """Spike-domain threshold balancing, layer by layer in graph order.

    For each neuron layer, with the layers before it already balanced, run the SNN on the
    calibration batch, take the charge each step adds to the membrane (``x/τ`` with decay_input,
    else ``x``) and set the threshold to its ``percentile``. Measured in the SNN itself, so the
    scale of spike inputs (amplitude 1, not the CNN's activation value), concatenations and
    residual paths are all accounted for. Returns the thresholds set.
    """
    layers = net.spiking_layers()
    was = net.training
    net.eval()
    chosen = []
    try:
        for _, act in layers:
            charge = _first_call(net, act, calibration, output=False)
            if charge is None:
                continue
            neuron = act.neuron
            if getattr(neuron, "decay_input", False):
                charge = charge / neuron.tau.detach()
            thr = activation_percentile([charge], percentile)
            if hasattr(neuron, "set_threshold"):
                neuron.set_threshold(thr)
            chosen.append(thr)
    finally:
        net.train(was)
    return chosen


def recalibrate_bn(net: nn.Module, calibration) -> int:
    """Re-estimate every BatchNorm's running statistics on the spiking network's own activity.

    A converted CNN's BatchNorm statistics were fitted to ReLU activations; the SNN's convolutions
    see spikes instead, so those statistics are wrong (and the converted net collapses to one
    class). One train-mode pass with cumulative averaging (``momentum=None``) over the calibration
    batch(es) replaces them with the statistics of the spike-driven activations, layer by layer
    consistent because each BatchNorm normalises with its own batch statistics in that pass.
    ``calibration`` is a tensor batch or an iterable of tensors / ``(x, y)`` batches. Learned
    affine parameters are kept. Returns the number of BatchNorm layers updated.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration)
    if not batches:
        raise SpikeliteError("recalibrate_bn: the calibration data is empty")
    momenta = [m.momentum for m in bns]
    was = net.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    try:
        with torch.no_grad():
            for b in batches:
                net(b[0] if isinstance(b, (tuple, list)) else b)
    finally:
        for m, mo in zip(bns, momenta):
            m.momentum = mo
        net.train(was)
    return len(bns)


def _fixed_thresholds(gm: fx.GraphModule, sites: list[fx.Node], inner: dict[str, nn.Module]) -> dict[str, float]:
    """Activation sites whose CNN activation has a learned clipping threshold (QCFS's λ): {site: λ}."""
    out = {}
    for node in sites:
        m = gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(m, QCFS):  # λ, or 1 for the fixed-scale form
            out[node.name] = m.threshold or 1.0
    for path, m in inner.items():
        if isinstance(m, QCFS):
            out[path] = m.threshold or 1.0
    return out


def _calibrate(model_eval_gm: fx.GraphModule, sites: list[fx.Node], inner_hooks: dict[str, nn.Module],
               x: torch.Tensor, q: float) -> dict[str, float]:
    recorder = _Recorder(model_eval_gm, {n.name for n in sites})
    captured: dict[str, list[torch.Tensor]] = {}
    handles = [
        mod.register_forward_pre_hook(lambda m, a, path=path: captured.setdefault(path, []).append(a[0].detach()))
        for path, mod in inner_hooks.items()
    ]
    try:
        with torch.no_grad():
            recorder.run(x)
    finally:
        for h in handles:
            h.remove()
    out = {name: activation_percentile(vals, q) for name, vals in recorder.values.items()}
    out.update({path: activation_percentile(vals, q) for path, vals in captured.items()})
    return out


# --------------------------------------------------------------------------------------------
# spikify
# --------------------------------------------------------------------------------------------


def spikify(
    model: nn.Module,
    T: int = 4,
    neuron=None,
    encoding: str = "direct",
    balance: float | None = None,
    calibration: torch.Tensor | None = None,
    balance_mode: str = "snn",
    time_bn: str = "shared",
    time_bn_steps: int | None = None,
    spike_inputs: bool = False,
) -> SpikingNet:
    """Convert a CNN into a spiking network.

    Args:
        model: any ``nn.Module`` whose forward maps one input tensor to logits. It is copied, never
            modified.
        T: time steps (>= 1).
        neuron: neuron spec: None (LIF defaults: τ=2, V_th=1, hard reset to 0, sigmoid surrogate), a
            dict of :class:`~spikelite.snn.LIF` arguments (``{"kind": "if", ...}`` for IF), or a
            zero-argument callable returning a neuron module.
        encoding: ``"direct"`` (the analog image at every step; the layers before the first neuron
            run once) or ``"rate"`` (Bernoulli spikes with probability = pixel value in [0, 1]).
        balance: if given (e.g. ``99.9``), set each neuron layer's threshold to this percentile of
            the CNN's rectified pre-activations on ``calibration``.
        calibration: a batch ``[N, C, H, W]`` for threshold balancing.
        balance_mode: ``"snn"`` (default): balance in the spike domain, layer by layer
            (:func:`balance_thresholds`); ``"cnn"``: the percentile of the CNN's own rectified
            pre-activations at each site (the classic recipe; it ignores that a spike has
            amplitude 1 rather than the activation's value, so deep layers go silent).
        time_bn: ``"shared"`` (default): each BatchNorm normalises all T steps with one set of
            statistics; ``"per-step"``: the BatchNorm layers of the spiking part get per-step
            statistics and affine parameters (:class:`StepBatchNorm`, initialised from the CNN's).
        time_bn_steps: how many steps the per-step layers hold (default: ``T``); a checkpoint records it.
        spike_inputs: also put a neuron layer (``<conv>_input_spike``) before every convolution of the
            temporal part whose input is not spikes — a residual stream, a linear bottleneck's output,
            an average-pooled map — so every conv but the stem reads spikes (ACs, not MACs). This
            changes the network (the paper's recipe converts activations only); fine-tune after it.
    """
    if not isinstance(model, nn.Module):
        raise SpikeliteError(f"spikify expects an nn.Module, got {type(model).__name__}")
    if isinstance(model, SpikingNet):
        raise SpikeliteError("model is already a SpikingNet")
    T = _check_T(T)
    if encoding not in ("direct", "rate"):
        raise SpikeliteError(f"encoding must be 'direct' or 'rate', got {encoding!r}")
    if balance is not None:
        if not (0 < float(balance) <= 100):
            raise SpikeliteError(f"balance must be a percentile in (0, 100], got {balance}")
        if calibration is None and balance_mode != "cnn":
            raise SpikeliteError("balance needs a calibration batch (calibration=tensor [N, C, H, W])")
        if balance_mode not in ("snn", "cnn"):
            raise SpikeliteError(f"balance_mode must be 'snn' or 'cnn', got {balance_mode!r}")
    if time_bn not in TIME_BN_MODES:
        raise SpikeliteError(f"time_bn must be one of {', '.join(TIME_BN_MODES)}, got {time_bn!r}")
    if time_bn_steps is not None and time_bn != "per-step":
        raise SpikeliteError("time_bn_steps is only meaningful with time_bn='per-step'")
    if not isinstance(spike_inputs, bool):
        raise SpikeliteError(f"spike_inputs must be True or False, got {spike_inputs!r}")
    factory = make_neuron(neuron)
    try:
        probe = factory()
    except SpikeliteError:
        raise
    except Exception as exc:
        raise SpikeliteError(f"neuron factory failed: {exc}") from exc
    neuron_config = probe.config() if hasattr(probe, "config") else None

    work = copy.deepcopy(model)
    training = model.training
    in_channels, input_dim = _first_layer(work)

    g_train = _trace(work, True)
    g_eval = _trace(work, False)
    same = g_train.python_code("self").src == g_eval.python_code("self").src

    thresholds: dict[str, float] = {}
    if balance is not None and balance_mode == "cnn":
        cal_gm = fx.GraphModule(work, g_eval)
        sites, _ = _activation_sites(cal_gm)
        inner = _leaf_inner_activations(cal_gm)
        inner_mods = {p: cal_gm.get_submodule(p) for paths in inner.values() for p in paths}
        fixed = _fixed_thresholds(cal_gm, sites, inner_mods)
        if calibration is None and len(fixed) < len(sites) + len(inner_mods):
            raise SpikeliteError("balance needs a calibration batch (calibration=tensor [N, C, H, W]): "
                                 f"{len(sites) + len(inner_mods) - len(fixed)} activation(s) have no learned threshold")
        thresholds = {}
        if calibration is not None:  # in eval mode: a BatchNorm in train mode would update its statistics
            modes = {m: m.training for m in work.modules()}
            cal_gm.eval()
            try:
                thresholds = _calibrate(cal_gm, sites, inner_mods, calibration, float(balance))
            finally:
                for m, mode in modes.items():
                    m.training = mode
        for key, value in fixed.items():  # a learned clipping threshold (QCFS's λ) is the threshold
            thresholds[key] = value
        for node in sites:  # a bounded activation clips there: ReLU6 at 6
            m = cal_gm.get_submodule(node.target) if node.op == "call_module" else None
            if (isinstance(m, nn.ReLU6) or node.target is F.relu6) and node.name in thresholds:
                thresholds[node.name] = min(thresholds[node.name], 6.0)

    plan = _Plan()
    plan.spike_inputs = spike_inputs
    body = fx.GraphModule(work, g_train, class_name=type(model).__name__)
    out_t, site_paths = _build_spiking_graph(body, T, factory, encoding, plan)
    eval_graph, out_t_eval = None, out_t
    if not same:
        eval_gm = fx.GraphModule(work, g_eval, class_name=type(model).__name__)
        out_t_eval, site_eval = _build_spiking_graph(eval_gm, T, factory, encoding, plan)
        # Every module the eval graph calls must be reachable from body (the eval graph runs on it).
        for node in eval_gm.graph.nodes:
            if node.op == "call_module":
                try:
                    body.get_submodule(node.target)
                except AttributeError:
                    _set_submodule(body, node.target, eval_gm.get_submodule(node.target))
        site_paths = {**site_eval, **site_paths}
        eval_graph = eval_gm.graph
    if thresholds:
        for key, value in thresholds.items():
            path = site_paths.get(key, key)  # activation node name, or the path of a leaf's inner activation
            mod = plan.modules.get(path)
            if mod is not None and hasattr(mod.neuron, "set_threshold"):
                mod.neuron.set_threshold(value)
    net = SpikingNet(body, eval_graph, T, encoding, out_t, out_t_eval, in_channels, input_dim, neuron_config)
    net._temporal_bns = tuple(p for p in sorted(plan.temporal_modules)
                              if isinstance(body.get_submodule(p), nn.modules.batchnorm._BatchNorm))
    net._temporal_maxpools = tuple(p for p in sorted(plan.temporal_modules)
                                   if isinstance(body.get_submodule(p), _MAX_POOLS))
    if hasattr(model, "spikelite_spec"):  # zoo models: keep how to rebuild the CNN
        net.spikelite_spec = copy.deepcopy(model.spikelite_spec)
    if time_bn == "per-step":
        per_step_batchnorm(net, time_bn_steps)
    if balance is not None and balance_mode == "snn":
        net._check_input(calibration)
        balance_thresholds(net, calibration, float(balance))
    net.train(training)
    return net


def respikify(model: nn.Module, config: dict) -> SpikingNet:
    """``spikify(model, **config)`` for a :meth:`SpikingNet.config` dict (as checkpoints record it)."""
    if not isinstance(config, dict) or "T" not in config:
        raise SpikeliteError(f"an SNN config needs at least T, got {config!r}")
    return spikify(model, T=int(config["T"]), neuron=dict(config.get("neuron") or {}),
                   encoding=config.get("encoding", "direct"), time_bn=config.get("time_bn", "shared"),
                   time_bn_steps=config.get("time_bn_steps"), spike_inputs=bool(config.get("spike_inputs", False)))
