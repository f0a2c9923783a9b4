"""The modules a converted network is built from, and what counts as an activation.

:class:`SpikingActivation` (a neuron layer in a time-folded graph), :class:`TimeBroadcast`,
:class:`StepBatchNorm` (per-step BatchNorm statistics), the neuron factory :func:`make_neuron`, the
tracer that keeps activations and neuron layers as leaves, and :func:`mark_spikes` with the compact
(1-byte) storage of spike tensors saved for backward. Everything above this module in
:mod:`spikelite.snn` (``net``, ``recompute``, ``inference``, ``conversion``) builds on these.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import SpikeliteError
from .neuron import IF, LIF, QCFS, ConversionIF
from .window import time_window


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
    (``"lif"``, ``"if"``, or ``"conversion_if"``: :class:`~spikelite.snn.ConversionIF`), a neuron
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
        win = time_window()  # in a chunked run: this window's steps, of win.total
        T, total = (self.T, self.T) if win is None else (win.steps, win.total)
        if self.broadcast:
            x_seq = x.unsqueeze(0).expand(T, *x.shape)
        else:
            if x.shape[0] % T:
                raise SpikeliteError(
                    f"SpikingActivation: batch of {x.shape[0]} is not a multiple of T={T}; "
                    "was this layer called outside its SpikingNet?"
                )
            x_seq = x.view(T, x.shape[0] // T, *x.shape[1:])
        if self.charge_offset:  # spread over all the steps of the call, not over one window
            th = getattr(self.neuron, "v_threshold", 1.0)
            th = th.to(x_seq.dtype) if torch.is_tensor(th) else float(th)
            x_seq = x_seq + (self.charge_offset / total) * th
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
        win = time_window()
        return x.unsqueeze(0).expand(self.T if win is None else win.steps, *x.shape).flatten(0, 1)

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
        win = time_window()  # in a chunked run the window's steps, from step win.start
        T, start = (self.T, 0) if win is None else (win.steps, win.start)
        if win is not None and self.training:
            raise SpikeliteError("StepBatchNorm: a chunked run (time_chunk) is for inference; batch statistics "
                                 "would be those of one window")
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
            k = min(start + t, self.steps - 1)
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


# --------------------------------------------------------------------------------------------
# Compact spike storage: spike tensors saved for backward are kept as 1-byte booleans
# --------------------------------------------------------------------------------------------


def mark_spikes(x: torch.Tensor) -> torch.Tensor:
    """Identity that tags a tensor known to hold only 0/1 values (graph node inserted by spikify)."""
    if isinstance(x, torch.Tensor):
        x._spikelite_binary = True
    return x


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
