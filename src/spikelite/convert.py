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

import copy
import functools
import inspect
import operator
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import SpikeliteError
from .neuron import IF, LIF, QCFS, ConversionIF

__all__ = [
    "spikify",
    "convert",
    "layer_errors",
    "correct_bias",
    "SpikingNet",
    "SpikingActivation",
    "TimeBroadcast",
    "StepBatchNorm",
    "per_step_batchnorm",
    "respikify",
    "TIME_BN_MODES",
    "make_neuron",
    "balance_thresholds",
    "recalibrate_bn",
    "inference_model",
    "ACTIVATION_MODULES",
    "ACTIVATION_FUNCTIONS",
    "activation_percentile",
]

# --------------------------------------------------------------------------------------------
# What counts as an activation
# --------------------------------------------------------------------------------------------

ACTIVATION_MODULES: tuple[type, ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU, QCFS)
ACTIVATION_FUNCTIONS: set = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.silu, F.hardswish, F.gelu,
}
ACTIVATION_METHODS = {"relu", "relu_"}
# Analog gates that are meant to stay analog (squeeze-excitation, attention gates).
ANALOG_GATES: tuple[type, ...] = (nn.Sigmoid, nn.Hardsigmoid, nn.Softmax, nn.Identity)
# Activations that have no spiking counterpart here: converting them silently would change the model.
UNCONVERTIBLE_MODULES: tuple[type, ...] = (
    nn.Tanh, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.PReLU, nn.RReLU, nn.Softplus, nn.Hardtanh, nn.Tanhshrink,
    nn.Softsign, nn.GLU, nn.LogSigmoid,
)
UNCONVERTIBLE_FUNCTIONS: set = {torch.tanh, F.tanh, F.elu, F.selu, F.celu, F.mish, F.prelu, F.softplus, F.hardtanh}
UNCONVERTIBLE_METHODS = {"tanh", "tanh_"}


def _timm_activation_types() -> tuple[type, ...]:
    """timm's own activation classes (used by its model builders) that behave like the torch ones."""
    try:
        from timm.layers import activations as act
    except Exception:  # pragma: no cover - timm is a dependency, but stay importable without it
        return ()
    names = ("Swish", "HardSwish", "GELU", "GELUTanh", "QuickGELU")
    found = [getattr(act, n) for n in names if hasattr(act, n)]
    try:
        from timm.layers import activations_me as act_me

        found += [getattr(act_me, n) for n in ("SwishMe", "HardSwishMe") if hasattr(act_me, n)]
    except Exception:  # pragma: no cover
        pass
    return tuple(t for t in found if isinstance(t, type))


def _charge_offset(act: nn.Module, neuron: nn.Module | None = None) -> float:
    """The constant charge (in thresholds, spread over T) the neuron replacing ``act`` gets: QCFS's shift
    (none for a neuron that starts from its own initial potential, :class:`ConversionIF`)."""
    if isinstance(neuron, ConversionIF):
        return 0.0
    return 0.5 if isinstance(act, QCFS) else 0.0


def _is_activation_module(m: nn.Module) -> bool:
    return isinstance(m, ACTIVATION_MODULES + _timm_activation_types()) and not isinstance(m, SpikingActivation)


def _is_unconvertible_module(m: nn.Module) -> bool:
    return isinstance(m, UNCONVERTIBLE_MODULES)


# --------------------------------------------------------------------------------------------
# Neuron factory
# --------------------------------------------------------------------------------------------


NEURON_KINDS = {"lif": LIF, "if": IF, "conversion_if": ConversionIF}


def make_neuron(spec=None) -> Callable[[], nn.Module]:
    """Turn a neuron spec into a factory that builds one fresh neuron layer per call.

    ``spec`` may be None (LIF defaults), a dict of neuron arguments with an optional ``kind``
    (``"lif"``, ``"if"``, or ``"conversion_if"``: :class:`~spikelite.neuron.ConversionIF`), a neuron
    class, or a zero-argument callable.
    """
    if spec is None:
        return LIF
    if isinstance(spec, dict):
        kw = dict(spec)
        kind = str(kw.pop("kind", "lif")).lower()
        cls = NEURON_KINDS.get(kind)
        if cls is None:
            raise SpikeliteError(f"unknown neuron kind {kind!r}; valid: {', '.join(map(repr, NEURON_KINDS))}")
        valid = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(kw) - valid)
        if unknown:
            raise SpikeliteError(f"unknown neuron option(s) {unknown} for {kind}; valid: {sorted(valid)}")
        sur = kw.get("surrogate")
        if isinstance(sur, dict):  # {"name":..., "alpha":...} as stored in checkpoints
            kw["surrogate"] = sur.get("name", "sigmoid")
            kw.setdefault("surrogate_alpha", sur.get("alpha"))
        return functools.partial(cls, **kw)
    if callable(spec):
        return spec
    raise SpikeliteError(f"neuron must be None, a dict or a callable, got {type(spec).__name__}")


# --------------------------------------------------------------------------------------------
# Modules that live in the converted graph
# --------------------------------------------------------------------------------------------


class SpikingActivation(nn.Module):
    """A neuron layer in a time-folded network: ``[T·N, …]`` (or ``[N, …]`` to broadcast) → ``[T·N, …]``.

    Attributes:
        neuron: the multi-step neuron (``[T, N, …] → [T, N, …]``).
        T: time steps (set by :class:`SpikingNet`).
        broadcast: the input is static (``[N, …]``, same at every step) and is broadcast over T.
        source: what this replaced (e.g. ``"ReLU"`` or ``"F.relu"``), for reports and export.
    """

    def __init__(self, neuron: nn.Module, T: int, broadcast: bool = False, source: str = "",
                 charge_offset: float = 0.0):
        super().__init__()
        self.neuron = neuron
        self.T = int(T)
        self.broadcast = bool(broadcast)
        self.source = source
        # a constant charge of charge_offset x V_th, spread evenly over the T steps (QCFS's shift)
        self.charge_offset = float(charge_offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.T
        if self.broadcast:
            x_seq = x.unsqueeze(0).expand(T, *x.shape)
        else:
            if x.shape[0] % T:
                raise SpikeliteError(
                    f"SpikingActivation: batch of {x.shape[0]} is not a multiple of T={T}; "
                    "was this layer called outside its SpikingNet?"
                )
            x_seq = x.view(T, x.shape[0] // T, *x.shape[1:])
        if self.charge_offset:
            th = getattr(self.neuron, "v_threshold", 1.0)
            th = th.to(x_seq.dtype) if torch.is_tensor(th) else float(th)
            x_seq = x_seq + (self.charge_offset / T) * th
        return self.neuron(x_seq).flatten(0, 1)

    def extra_repr(self) -> str:
        return (f"T={self.T}, broadcast={self.broadcast}, source={self.source!r}"
                + (f", charge_offset={self.charge_offset:g}" if self.charge_offset else ""))


class TimeBroadcast(nn.Module):
    """Repeats a static ``[N, …]`` tensor over T steps: ``[T·N, …]`` (time-major)."""

    def __init__(self, T: int):
        super().__init__()
        self.T = int(T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0).expand(self.T, *x.shape).flatten(0, 1)

    def extra_repr(self) -> str:
        return f"T={self.T}"


_PLAIN_BN = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}


def _is_bn_act(m: nn.Module) -> bool:
    """timm's BatchNormAct2d (BatchNorm2d, then ``drop``, then ``act``), without importing timm."""
    return (type(m).__name__ == "BatchNormAct2d" and isinstance(m, nn.BatchNorm2d)
            and isinstance(getattr(m, "drop", None), nn.Module) and isinstance(getattr(m, "act", None), nn.Module))


TIME_BN_MODES = ("shared", "per-step")


class StepBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with its own statistics and affine parameters at every time step (time-aware BN).

    A plain BatchNorm in a time-folded network normalises all ``T·N`` samples with one set of
    statistics. The membrane starts at rest, so the first steps of a spiking layer fire differently
    from the later ones; this layer views ``[T·N, C, …]`` as ``[T, N, C, …]`` and normalises step
    ``t`` with its own batch statistics (training) or running statistics (eval) and its own
    ``weight[t]``, ``bias[t]`` (BNTT, Kim & Panda 2021). ``running_mean``, ``running_var``, ``weight``
    and ``bias`` are ``[steps, C]``. Made from timm's ``BatchNormAct2d`` it keeps that module's ``drop``
    and ``act`` (the neuron) and applies them after, under the same names. Steps beyond ``steps`` (evaluating longer than the
    network was built for) use the last step's parameters. Made by ``spikify(..., time_bn="per-step")``
    or :func:`per_step_batchnorm`; it is a ``_BatchNorm``, so :func:`recalibrate_bn` re-estimates it.
    """

    def __init__(self, num_features: int, steps: int, T: int | None = None, input_dims: tuple[int, ...] = (4,),
                 eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.steps = _check_T(steps)
        self.T = self.steps if T is None else _check_T(T)
        self.input_dims = tuple(input_dims)
        if affine:
            self.weight = nn.Parameter(torch.ones(self.steps, num_features))
            self.bias = nn.Parameter(torch.zeros(self.steps, num_features))
        if track_running_stats:
            self.running_mean = torch.zeros(self.steps, num_features)
            self.running_var = torch.ones(self.steps, num_features)

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm, steps: int, T: int | None = None) -> "StepBatchNorm":
        """Every step starts as a copy of ``bn`` (its affine parameters and running statistics)."""
        dims = _PLAIN_BN.get(type(bn)) or ((4,) if _is_bn_act(bn) else None)
        if dims is None:
            raise SpikeliteError(f"per-step BatchNorm replaces BatchNorm1d/2d/3d layers (and timm's BatchNormAct2d), "
                                 f"not {type(bn).__name__}")
        new = cls(bn.num_features, steps, T, dims, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if _is_bn_act(bn):  # timm's BatchNorm + dropout + activation in one module: keep the tail (same paths)
            new.drop, new.act = bn.drop, bn.act
        ref = bn.weight if bn.weight is not None else bn.running_mean
        if ref is not None:
            new.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if bn.affine:
                new.weight.copy_(bn.weight.detach().expand(new.steps, -1))
                new.bias.copy_(bn.bias.detach().expand(new.steps, -1))
            if bn.track_running_stats:
                new.running_mean.copy_(bn.running_mean.expand(new.steps, -1))
                new.running_var.copy_(bn.running_var.expand(new.steps, -1))
                new.num_batches_tracked.copy_(bn.num_batches_tracked)
        new.train(bn.training)
        return new

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in self.input_dims:
            raise SpikeliteError(f"StepBatchNorm expected a {' or '.join(map(str, self.input_dims))}-D input, "
                                 f"got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        T = self.T
        if x.shape[0] % T:
            raise SpikeliteError(f"StepBatchNorm: batch of {x.shape[0]} is not a multiple of T={T}; "
                                 "was this layer called outside its SpikingNet?")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or self.running_mean is None
        steps = x.view(T, x.shape[0] // T, *x.shape[1:])
        outs = []
        for t in range(T):
            k = min(t, self.steps - 1)
            outs.append(F.batch_norm(
                steps[t],
                None if self.running_mean is None else self.running_mean[k],
                None if self.running_var is None else self.running_var[k],
                None if self.weight is None else self.weight[k],
                None if self.bias is None else self.bias[k],
                use_batch, factor, self.eps))
        y = torch.cat(outs, 0)
        if "act" in self._modules:  # made from a BatchNormAct2d
            y = self.act(self.drop(y))
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, steps={self.steps}, T={self.T}, eps={self.eps}, momentum={self.momentum}"


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
# Tracing
# --------------------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """fx tracer that keeps activations and BatchNorm-like modules (timm's BatchNormAct2d) as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if _is_activation_module(m) or _is_unconvertible_module(m) or isinstance(m, ANALOG_GATES):
            return True
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return True
        if isinstance(m, (SpikingActivation, TimeBroadcast, LIF)):
            return True
        return super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, training: bool) -> fx.Graph:
    was = model.training
    model.train(training)
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # fx raises many types: TraceError, TypeError, RuntimeError …
        raise SpikeliteError(
            f"cannot convert {type(model).__name__}: torch.fx could not trace it ({type(exc).__name__}: {exc}). "
            "Data-dependent Python control flow in forward() must be moved into a leaf module."
        ) from exc
    finally:
        model.train(was)


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


def mark_spikes(x: torch.Tensor) -> torch.Tensor:
    """Identity that tags a tensor known to hold only 0/1 values (graph node inserted by spikify)."""
    if isinstance(x, torch.Tensor):
        x._spikelite_binary = True
    return x


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


def _pack_saved(t: torch.Tensor):
    if getattr(t, "_spikelite_binary", False) and t.is_floating_point():
        packed = getattr(t, "_spikelite_packed", None)
        if packed is None:
            packed = (t.to(torch.bool), t.dtype)
            t._spikelite_packed = packed
        return packed
    return t


def _unpack_saved(p):
    if isinstance(p, tuple):
        # bool -> float read as uint8 (the same 0/1 bytes): PyTorch's uint8 conversion takes about half
        # the time of its bool one (benchmarks/neuron_overhead.py, columns unpk bool / unpk u8)
        return p[0].view(torch.uint8).to(p[1])
    return p


# --------------------------------------------------------------------------------------------
# The spiking network
# --------------------------------------------------------------------------------------------


def _first_layer(model: nn.Module):
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m.in_channels, m.weight.dim()
        if isinstance(m, nn.Linear):
            return m.in_features, 2
    return None, None


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
        """Activation checkpointing for training: 0 (off) or k ≥ 1 segments (see :mod:`spikelite.checkpoint`)."""
        return getattr(self, "_checkpoint_segments", 0)

    @checkpoint_segments.setter
    def checkpoint_segments(self, value: int) -> None:
        from .checkpoint import check_segments

        self._checkpoint_segments = check_segments(value)
        self._ckpt_body = []

    @property
    def recompute_neurons(self) -> bool:
        """Training keeps only each BatchNorm → neuron pair's input and recomputes the pair in backward
        (see :func:`spikelite.checkpoint.recomputed_body`). Ignored while ``checkpoint_segments`` is on."""
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
            from .checkpoint import checkpointed_body, recomputed_body

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
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Input as the graph sees it: unchanged for direct encoding, ``[T·N, …]`` Bernoulli spikes for rate."""
        if self.encoding == "rate":
            p = x.clamp(0.0, 1.0)
            return torch.bernoulli(p.unsqueeze(0).expand(self.T, *p.shape)).flatten(0, 1)
        return x

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step outputs ``[T, N, …]``."""
        x = self._check_input(x)
        n = x.shape[0]
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


def inference_model(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """An eval-only copy of a SpikingNet or CNN for inference: see :mod:`spikelite.inference`."""
    from .inference import inference_model as build

    return build(model, channels_last=channels_last)


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, int):
        try:
            if float(T) != int(T):
                raise ValueError
            T = int(T)
        except (TypeError, ValueError):
            raise SpikeliteError(f"T must be a positive integer, got {T!r}") from None
    if T < 1:
        raise SpikeliteError(f"T must be >= 1, got {T}")
    return T


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
    is skipped. None when the module is not called."""
    got: list[torch.Tensor] = []

    def grab(m, args, out=None):
        got.append((out if output else args[0]).detach())
        raise _StopForward

    h = module.register_forward_hook(grab) if output else module.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            net(x)
    except _StopForward:
        pass
    finally:
        h.remove()
    return got[0] if got else None


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
            dict of :class:`~spikelite.neuron.LIF` arguments (``{"kind": "if", ...}`` for IF), or a
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


_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_MAX_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                       F.adaptive_max_pool3d}


def convert(model: nn.Module, T: int = 4, calibration: torch.Tensor | None = None, *, percentile: float = 99.9,
            signed: bool = True, v_init: float = 0.5, encoding: str = "direct",
            neuron: dict | None = None, burst: int = 1) -> SpikingNet:
    """Convert a trained CNN into a rate-coded SNN that converges to it as T grows (no training).

    Every activation becomes a :class:`~spikelite.neuron.ConversionIF` layer: soft reset, membrane
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
    with L levels converts exactly at T = L. ``neuron``: further
    :class:`~spikelite.neuron.ConversionIF` options for fine-tuning (``surrogate``, ``detach_reset``,
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
    neuron = {**extra, "kind": "conversion_if", "v_init": v_init, "signed": signed, "burst": extra.get("burst", burst)}
    net = spikify(model, T=T, neuron=neuron, encoding=encoding, balance=percentile, calibration=calibration,
                  balance_mode="cnn")
    pools = list(net._temporal_maxpools)
    pools += [f"{n.target.__name__}() in {_owner_path(n) or '<root>'}" for n in net.body.graph.nodes
              if n.op == "call_function" and n.target in _MAX_POOL_FUNCTIONS]
    if pools:
        raise SpikeliteError(
            f"cannot convert max-pooling of spike trains exactly ({', '.join(pools[:3])}): the maximum of spike "
            "trains is not the spike train of the maximum. Use average pooling (zoo models: pool=avg)")
    return net


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
            got = _first_call(snn, act, images, output=True)
            if got is None:
                continue
            out = got.view(act.T, -1, *got.shape[1:]).mean(0)
            if out.shape != target.shape:
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
    snn_out: dict[str, torch.Tensor] = {}
    layers = snn.spiking_layers()
    handles = [act.register_forward_hook(
        lambda mod, a, out, path=path: snn_out.__setitem__(path, out.view(mod.T, -1, *out.shape[1:]).mean(0)))
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


def respikify(model: nn.Module, config: dict) -> SpikingNet:
    """``spikify(model, **config)`` for a :meth:`SpikingNet.config` dict (as checkpoints record it)."""
    if not isinstance(config, dict) or "T" not in config:
        raise SpikeliteError(f"an SNN config needs at least T, got {config!r}")
    return spikify(model, T=int(config["T"]), neuron=dict(config.get("neuron") or {}),
                   encoding=config.get("encoding", "direct"), time_bn=config.get("time_bn", "shared"),
                   time_bn_steps=config.get("time_bn_steps"), spike_inputs=bool(config.get("spike_inputs", False)))
