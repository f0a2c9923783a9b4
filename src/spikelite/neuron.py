"""Leaky Integrate-and-Fire neurons, multi-step and stateless across calls.

One call takes a whole sequence ``x_seq`` of shape ``[T, N, ...]`` and returns spikes of the same
shape. Every call starts from rest (``V = V_reset``, or 0 for soft reset): no state survives a
forward, so there is nothing to reset between batches.

Dynamics for step t (SpikingJelly's conventions, so that both give identical spikes)::

    charge   H_t = V_{t-1} + (X_t - (V_{t-1} - V_reset)) / tau        (decay_input=True)
             H_t = V_{t-1} - (V_{t-1} - V_reset) / tau + X_t          (decay_input=False)
    fire     S_t = Θ(H_t - V_th)                                      (Θ(0) = 1)
    reset    V_t = S_t·V_reset + (1 - S_t)·H_t                        (hard, v_reset is a number)
             V_t = H_t - S_t·V_th                                     (soft, v_reset=None)

For soft reset the charge uses 0 in place of V_reset. ``detach_reset`` detaches S_t inside the reset.

Two implementations compute the same thing:

* ``backend="fused"`` (default when the surrogate has a ``grad`` method): one autograd function over
  the whole sequence. Forward runs without building a graph and saves only the charged potentials H;
  backward runs the recursion in reverse by hand. Learnable τ and threshold are supported.
* ``backend="torch"``: the step-by-step formula under autograd: the reference, and the path for
  surrogates given as plain callables.
"""

from __future__ import annotations

import math
import os
import types
import warnings

import torch
import torch.utils.checkpoint
from torch import nn

from .errors import SpikeliteError
from .surrogate import Surrogate, get_surrogate

__all__ = ["LIF", "IF", "QCFS", "lif_multistep", "lif_multistep_reference"]


def _charge(x, v, tau, decay_input: bool, reset_value: float):
    if decay_input:
        return v + (x - (v - reset_value)) / tau
    return v - (v - reset_value) / tau + x


def lif_multistep_reference(
    x_seq: torch.Tensor,
    tau,
    v_threshold,
    v_reset: float | None,
    decay_input: bool,
    detach_reset: bool,
    surrogate,
    return_v: bool = False,
):
    """Step-by-step LIF under autograd. Returns spikes ``[T, ...]`` (and membranes if ``return_v``)."""
    reset_value = 0.0 if v_reset is None else v_reset
    v = torch.full_like(x_seq[0], reset_value)
    spikes, vs = [], []
    for x in x_seq:
        h = _charge(x, v, tau, decay_input, reset_value)
        s = surrogate(h - v_threshold)
        sr = s.detach() if detach_reset else s
        if v_reset is None:
            v = h - sr * v_threshold
        else:
            v = sr * v_reset + (1.0 - sr) * h
        spikes.append(s)
        if return_v:
            vs.append(v)
    out = torch.stack(spikes)
    return (out, torch.stack(vs)) if return_v else out


class _FusedLIF(torch.autograd.Function):
    """LIF over a whole sequence; saves only H (and X when τ is learned)."""

    @staticmethod
    def forward(ctx, x_seq, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate):
        reset_value = 0.0 if v_reset is None else v_reset
        T = x_seq.shape[0]
        h_seq = torch.empty(x_seq.shape, dtype=x_seq.dtype, device=x_seq.device)
        spikes = torch.empty_like(h_seq)
        v = None
        for t in range(T):
            x = x_seq[t]
            if v is None:  # V_{-1} = reset value: the charge simplifies exactly
                h = _charge(x, torch.full_like(x, reset_value), tau, decay_input, reset_value)
            else:
                h = _charge(x, v, tau, decay_input, reset_value)
            h_seq[t] = h
            fired = h >= v_threshold
            spikes[t] = fired
            if v_reset is None:
                v = h - fired.to(h.dtype) * v_threshold
            else:
                v = torch.where(fired, torch.as_tensor(reset_value, dtype=h.dtype, device=h.device), h)
        need_x = ctx.needs_input_grad[1]
        ctx.save_for_backward(h_seq, x_seq if need_x else None, tau, v_threshold)
        ctx.cfg = (v_reset, decay_input, detach_reset, surrogate)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        h_seq, x_seq, tau, v_th = ctx.saved_tensors
        v_reset, decay_input, detach_reset, surrogate = ctx.cfg
        reset_value = 0.0 if v_reset is None else v_reset
        need_x, need_tau, need_th = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        T = h_seq.shape[0]
        grad_x = torch.empty_like(h_seq) if need_x else None
        g_tau = torch.zeros((), dtype=h_seq.dtype, device=h_seq.device) if need_tau else None
        g_th = torch.zeros((), dtype=h_seq.dtype, device=h_seq.device) if need_th else None
        inv_tau = 1.0 / tau
        keep = 1.0 - inv_tau
        g_v = None  # dL/dV_t flowing back from step t+1
        for t in range(T - 1, -1, -1):
            h = h_seq[t]
            sg = surrogate.grad(h - v_th)
            g_s = grad_spikes[t]
            if g_v is None:
                g_h = g_s * sg
                g_th_s = g_s  # gradient reaching S_t (for the threshold)
            else:
                s = (h >= v_th).to(h.dtype)
                if v_reset is None:
                    dv_dh = 1.0 if detach_reset else 1.0 - v_th * sg
                    g_h = g_s * sg + g_v * dv_dh
                    g_th_s = g_s if detach_reset else g_s - g_v * v_th
                    if need_th:
                        g_th = g_th - (g_v * s).sum()
                else:
                    if detach_reset:
                        g_h = g_s * sg + g_v * (1.0 - s)
                        g_th_s = g_s
                    else:
                        g_h = g_s * sg + g_v * ((1.0 - s) + (reset_value - h) * sg)
                        g_th_s = g_s + g_v * (reset_value - h)
            if need_th:
                g_th = g_th - (g_th_s * sg).sum()
            if need_x:
                grad_x[t] = g_h / tau if decay_input else g_h
            if need_tau:
                # dH/dtau = -(X - (V_prev - reset)) / tau^2  or  (V_prev - reset) / tau^2
                if t == 0:
                    v_prev_rel = torch.zeros_like(h)
                else:
                    hp = h_seq[t - 1]
                    fp = hp >= v_th
                    if v_reset is None:
                        v_prev_rel = hp - fp.to(hp.dtype) * v_th
                    else:
                        v_prev_rel = torch.where(fp, torch.zeros_like(hp), hp - reset_value)
                if decay_input:
                    g_tau = g_tau - (g_h * (x_seq[t] - v_prev_rel)).sum() * inv_tau * inv_tau
                else:
                    g_tau = g_tau + (g_h * v_prev_rel).sum() * inv_tau * inv_tau
            g_v = g_h * keep
        return grad_x, g_tau, g_th, None, None, None, None


def lif_multistep(x_seq, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate):
    """Fused LIF over ``x_seq`` ``[T, ...]``; ``tau`` and ``v_threshold`` are 0-d tensors."""
    return _FusedLIF.apply(x_seq, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate)


# --------------------------------------------------------------------------------------------
# Compiled kernels: the whole sequence in one fused elementwise kernel (forward, and backward
# through time), generated by torch.compile (C++/OpenMP on CPU, Triton on CUDA); T is specialised. Same dynamics as _FusedLIF; used for fixed
# tau and threshold. If compilation is unavailable (no C++ compiler, unsupported platform) the
# eager fused path is used instead, with one warning.
# --------------------------------------------------------------------------------------------


def _fwd_seq(x_seq, tau, th, r, T: int, decay_input: bool, soft: bool):
    """Whole-sequence forward: returns (H, spikes), each [T, ...]. V starts at r (0 for soft reset)."""
    v = r
    hs, ss = [], []
    for t in range(T):
        x = x_seq[t]
        if decay_input:
            h = v + (x - (v - r)) / tau
        else:
            h = v - (v - r) / tau + x
        fired = h >= th
        spike = fired.to(h.dtype)
        hs.append(h)
        ss.append(spike)
        v = h - spike * th if soft else torch.where(fired, r, h)
    return torch.stack(hs), torch.stack(ss)


def _bwd_seq(h_seq, g_seq, tau, th, r, alpha, T: int, decay_input: bool, soft: bool, detach: bool, grad_fn):
    """Whole-sequence backward through time: returns dL/dX [T, ...]."""
    gxs = [None] * T
    g_v = None
    for t in range(T - 1, -1, -1):
        h = h_seq[t]
        sg = grad_fn(h - th, alpha)
        g_h = g_seq[t] * sg
        if g_v is not None:
            if soft:
                g_h = g_h + (g_v if detach else g_v * (1.0 - th * sg))
            else:
                not_fired = (h < th).to(h.dtype)
                g_h = g_h + g_v * (not_fired if detach else not_fired + (r - h) * sg)
        gxs[t] = g_h / tau if decay_input else g_h
        g_v = g_h * (1.0 - 1.0 / tau)
    return torch.stack(gxs)


def _specialised(fn, tag: str):
    """A copy of ``fn`` with its own code object, so torch.compile keeps a separate cache for it."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


class _CompiledKernels:
    """Lazily compiled step kernels, one per neuron variant; ``broken`` once compilation failed."""

    def __init__(self):
        self.cache: dict[tuple, object] = {}
        self.broken = os.environ.get("SPIKELITE_COMPILE", "1") == "0"

    def get(self, kind: str, key: tuple):
        fn = self.cache.get((kind, key))
        if fn is None:
            base = _fwd_seq if kind == "fwd" else _bwd_seq
            tag = "_".join(getattr(k, "__qualname__", str(k)).replace(".", "_") for k in key)
            fn = torch.compile(_specialised(base, tag), dynamic=True)
            self.cache[(kind, key)] = fn
        return fn

    def fail(self, exc: Exception) -> None:
        self.broken = True
        warnings.warn(f"spikelite: compiled LIF kernels unavailable ({type(exc).__name__}: {exc}); "
                      "using the eager fused path", RuntimeWarning, stacklevel=3)


_KERNELS = _CompiledKernels()


def _memory_order(x: torch.Tensor) -> list[int] | None:
    """The permutation of ``x``'s dims 1.. that lists them outermost-first in memory (time stays
    dim 0), or None when ``x`` is contiguous already."""
    if x.is_contiguous():
        return None
    return [0] + sorted(range(1, x.dim()), key=lambda d: (-x.stride(d), -x.shape[d]))


def _flat(x: torch.Tensor, perm: list[int] | None) -> torch.Tensor:
    """``x`` as a contiguous ``[T, numel / T]`` tensor, read in ``perm``'s order (a view when the
    layout allows it, e.g. channels_last, a copy otherwise)."""
    if perm is not None:
        x = x.permute(perm)
    # detach(): torch.compile guards on a view's base tensor (its sizes and strides), so a view would
    # still recompile per base layout; inside an autograd.Function nothing needs the graph link
    return x.reshape(int(x.shape[0]), -1).contiguous().detach()


def _unflat(y: torch.Tensor, shape: torch.Size, perm: list[int] | None) -> torch.Tensor:
    """Undo :func:`_flat`: ``shape`` with the strides of the layout ``perm`` was taken from."""
    if perm is None:
        return y.view(shape)
    inverse = sorted(range(len(perm)), key=perm.__getitem__)
    return y.view([shape[d] for d in perm]).permute(inverse)


class _CompiledLIF(torch.autograd.Function):
    # The kernels see one layout only: a contiguous [T, M] tensor. A neuron layer is elementwise, so
    # the input is read in its own memory order (channels_last and other dense permutations are
    # views, not copies) and the outputs get the input's layout back. Without this every new rank
    # or stride pattern (4-D/5-D, NCHW/NHWC, a transposed view) was a separate compilation, and past
    # torch.compile's recompile limit the kernels fell back to eager per-step code.
    @staticmethod
    def forward(ctx, x_seq, tau, v_threshold, v_reset, decay_input, soft, detach_reset, grad_fn, alpha):
        T = int(x_seq.shape[0])
        fwd = _KERNELS.get("fwd", (decay_input, soft, T))  # one cache per T: T is specialised anyway
        r = torch.full((), 0.0 if soft else v_reset, dtype=x_seq.dtype, device=x_seq.device)
        perm = _memory_order(x_seq)
        h_seq, spikes = fwd(_flat(x_seq, perm), tau, v_threshold, r, T, decay_input, soft)
        ctx.save_for_backward(h_seq, tau, v_threshold, r)
        ctx.cfg = (decay_input, soft, detach_reset, grad_fn, alpha)
        ctx.layout = (x_seq.shape, perm)
        return _unflat(spikes, x_seq.shape, perm)

    @staticmethod
    def backward(ctx, grad_spikes):
        h_seq, tau, th, r = ctx.saved_tensors
        decay_input, soft, detach, grad_fn, alpha = ctx.cfg
        shape, perm = ctx.layout
        T = int(h_seq.shape[0])
        bwd = _KERNELS.get("bwd", (decay_input, soft, detach, grad_fn, T))
        grad_x = bwd(h_seq, _flat(grad_spikes, perm), tau, th, r, alpha, T, decay_input, soft, detach, grad_fn)
        return _unflat(grad_x, shape, perm), None, None, None, None, None, None, None, None


def _compiled_ok(surrogate, tau, v_threshold) -> bool:
    if _KERNELS.broken or not isinstance(surrogate, Surrogate):
        return False
    cls = type(surrogate)
    if cls.grad is not Surrogate.grad or cls.grad_fn is Surrogate.grad_fn:
        return False  # a user surrogate that only overrides grad(): eager fused path
    return not (tau.requires_grad or v_threshold.requires_grad)


# Raised by torch.utils.checkpoint (non-reentrant, early stop) from inside save_for_backward to end a
# recomputation: control flow, not a compilation failure.
_CHECKPOINT_STOP: tuple[type, ...] = tuple(
    t for t in (getattr(torch.utils.checkpoint, "_StopRecomputationError", None),) if isinstance(t, type))


def lif_multistep_compiled(x_seq, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate):
    """LIF over ``x_seq`` with compiled per-step kernels (fixed tau and threshold)."""
    soft = v_reset is None
    try:
        return _CompiledLIF.apply(x_seq, tau.detach(), v_threshold.detach(), v_reset, decay_input, soft,
                                  detach_reset, type(surrogate).grad_fn, surrogate.alpha)
    except Exception as exc:  # compilation failed: no compiler, unsupported platform …
        if not _KERNELS.cache or isinstance(exc, (SpikeliteError, _CHECKPOINT_STOP)):
            raise
        _KERNELS.fail(exc)
        return lif_multistep(x_seq, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate)


class LIF(nn.Module):
    """Multi-step Leaky Integrate-and-Fire neuron layer.

    Args:
        tau: membrane time constant (> 1).
        v_threshold: firing threshold (> 0).
        v_reset: reset potential for hard reset, or ``None`` for soft reset (subtract the threshold).
        decay_input: whether the input is divided by ``tau`` as well.
        detach_reset: detach the spike inside the reset from the graph.
        surrogate: a name (``sigmoid``, ``atan``, ``fast_sigmoid``, ``triangle``, ``rectangle``),
            a :class:`~spikelite.surrogate.Surrogate`, or a callable spike function.
        surrogate_alpha: sharpness of a named surrogate (its own default when None).
        learn_tau: learn τ per layer, parametrised PLIF-style as ``1/τ = sigmoid(w)``.
        learn_threshold: learn the threshold per layer.
        backend: ``"auto"`` (compiled kernels for fixed τ/threshold, else fused), ``"compiled"``,
            ``"fused"`` (eager, one autograd node for the sequence) or ``"torch"`` (reference).

    Shapes: input ``[T, N, ...]`` → spikes ``[T, N, ...]`` (same dtype).
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        decay_input: bool = True,
        detach_reset: bool = False,
        surrogate="sigmoid",
        surrogate_alpha: float | None = None,
        learn_tau: bool = False,
        learn_threshold: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        tau = float(tau)
        if not (tau > 1.0) or math.isinf(tau) and learn_tau:
            raise SpikeliteError(f"LIF: tau must be a finite number > 1, got {tau}")
        if not (float(v_threshold) > 0):
            raise SpikeliteError(f"LIF: v_threshold must be > 0, got {v_threshold}")
        if v_reset is not None:
            v_reset = float(v_reset)
            if v_reset >= float(v_threshold):
                raise SpikeliteError(f"LIF: v_reset ({v_reset}) must be below v_threshold ({v_threshold})")
        if backend not in ("auto", "compiled", "fused", "torch"):
            raise SpikeliteError(f"LIF: backend must be 'auto', 'compiled', 'fused' or 'torch', got {backend!r}")
        self.v_reset = v_reset
        self.decay_input = bool(decay_input)
        self.detach_reset = bool(detach_reset)
        self.surrogate = get_surrogate(surrogate, surrogate_alpha)
        self.learn_tau = bool(learn_tau)
        self.learn_threshold = bool(learn_threshold)
        if backend == "fused" and not isinstance(self.surrogate, Surrogate):
            raise SpikeliteError("LIF: backend='fused' needs a Surrogate with a grad() method")
        self.backend = backend
        if self.learn_tau:
            # 1/tau = sigmoid(w)  =>  w = -log(tau - 1)
            self.tau_param = nn.Parameter(torch.tensor(-math.log(tau - 1.0)))
        else:
            self.register_buffer("tau_value", torch.tensor(tau))
        threshold = torch.tensor(float(v_threshold))
        if self.learn_threshold:
            self.v_threshold = nn.Parameter(threshold)
        else:
            self.register_buffer("v_threshold", threshold)

    @property
    def tau(self) -> torch.Tensor:
        if self.learn_tau:
            return 1.0 / torch.sigmoid(self.tau_param)
        return self.tau_value

    def set_threshold(self, value: float) -> None:
        """Set the firing threshold in place (used by threshold balancing)."""
        if not value > 0 or not math.isfinite(value):
            raise SpikeliteError(f"LIF: threshold must be a positive finite number, got {value}")
        with torch.no_grad():
            self.v_threshold.fill_(float(value))

    def uses_fused(self) -> bool:
        return self.backend in ("fused", "compiled") or (self.backend == "auto" and isinstance(self.surrogate, Surrogate))

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() < 2:
            raise SpikeliteError(f"LIF expects a sequence [T, N, ...], got shape {tuple(x_seq.shape)}")
        tau = self.tau.to(x_seq.dtype)
        v_th = self.v_threshold.to(x_seq.dtype)
        if self.backend in ("auto", "compiled") and _compiled_ok(self.surrogate, tau, v_th) \
                and not torch.compiler.is_compiling():
            return lif_multistep_compiled(x_seq, tau, v_th, self.v_reset, self.decay_input, self.detach_reset,
                                          self.surrogate)
        if self.uses_fused():
            return lif_multistep(x_seq, tau, v_th, self.v_reset, self.decay_input, self.detach_reset, self.surrogate)
        return lif_multistep_reference(
            x_seq, tau, v_th, self.v_reset, self.decay_input, self.detach_reset, self.surrogate
        )

    def config(self) -> dict:
        """Constructor arguments that rebuild this neuron (learned values live in the state_dict)."""
        sur = self.surrogate.config() if isinstance(self.surrogate, Surrogate) else None
        return {
            "kind": "lif",
            "tau": float(self.tau.detach()),
            "v_threshold": float(self.v_threshold.detach()),
            "v_reset": self.v_reset,
            "decay_input": self.decay_input,
            "detach_reset": self.detach_reset,
            "surrogate": sur,
            "learn_tau": self.learn_tau,
            "learn_threshold": self.learn_threshold,
        }

    def extra_repr(self) -> str:
        reset = "soft" if self.v_reset is None else f"v_reset={self.v_reset:g}"
        return (
            f"tau={float(self.tau.detach()):.4g}, v_threshold={float(self.v_threshold.detach()):.4g}, {reset}, "
            f"decay_input={self.decay_input}, detach_reset={self.detach_reset}, surrogate={self.surrogate!r}"
            + (", learn_tau" if self.learn_tau else "")
            + (", learn_threshold" if self.learn_threshold else "")
        )


class IF(LIF):
    """Integrate-and-Fire: LIF without leak (``H_t = V_{t-1} + X_t``)."""

    def __init__(self, v_threshold: float = 1.0, v_reset: float | None = 0.0, detach_reset: bool = False,
                 surrogate="sigmoid", surrogate_alpha: float | None = None, learn_threshold: bool = False,
                 backend: str = "auto"):
        super().__init__(tau=math.inf, v_threshold=v_threshold, v_reset=v_reset, decay_input=False,
                         detach_reset=detach_reset, surrogate=surrogate, surrogate_alpha=surrogate_alpha,
                         learn_threshold=learn_threshold, backend=backend)

    def config(self) -> dict:
        cfg = super().config()
        cfg["kind"] = "if"
        for key in ("tau", "decay_input", "learn_tau"):
            cfg.pop(key)
        return cfg


class _QCFSFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, levels: int):
        ctx.save_for_backward(x)
        return torch.clamp(torch.floor(x * levels + 0.5), 0, levels) / levels

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((x >= 0) & (x <= 1)).to(grad.dtype), None


class QCFS(nn.Module):
    """The CNN-side twin of a soft-reset IF neuron run for ``levels`` steps: quantise, clip, floor, shift.

    ``y = clamp(floor(x·L + 1/2), 0, L) / L`` (forward), with the straight-through gradient of
    ``clamp(x, 0, 1)`` (backward) — the "quantization clip-floor-shift" activation of Bu et al.
    (ICLR 2022). A CNN trained with it in place of ReLU (``create_model(..., act_levels=L)``) converts
    to an SNN whose first layer is exact at ``T = L``: an IF neuron with threshold 1 and soft reset,
    fed a constant input ``x`` plus ``1/(2T)`` per step, fires ``clamp(floor(x·T + 1/2), 0, T)``
    times. :func:`spikelite.spikify` adds that half-threshold charge (``SpikingActivation.charge_offset``)
    when it replaces a QCFS. The clip at 1 loses nothing when a BatchNorm precedes the activation
    (it learns the scale), as in every zoo model.
    """

    def __init__(self, levels: int = 4):
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise SpikeliteError(f"QCFS: levels must be an integer >= 1, got {levels!r}")
        self.levels = int(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QCFSFunction.apply(x, self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"
